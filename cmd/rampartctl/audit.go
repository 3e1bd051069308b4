package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/rampart-mesh/rampart/authz/decisionlog"
	"github.com/spf13/cobra"
)

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Review the tamper-evident decision log",
	}
	verify := &cobra.Command{
		Use:   "verify LOG",
		Short: "Verify a decision log's hash chain, across its rotated files",
		Long: `Verify the hash chain of a decision log: every record's hash, every prev_hash
link and seq continuity, across the rotated files LOG.N … LOG.1 and LOG (found
automatically; a number missing from LOG.1 … LOG.N is a break, as only
deletion makes a gap). Exit code 1 names the first file, line and kind of break
(modified, deleted, reordered, inserted, truncated, malformed). A torn last line
of a rotated file (a crash mid-write) whose next file continues the chain is
printed as a note.

The chain proves that no record was changed, removed or added in the middle.
To also detect removal of the newest records, compare the printed last seq and
hash with a copy kept elsewhere.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			files, missing, err := chainFiles(args[0])
			if err != nil {
				return err
			}
			if len(files) == 0 {
				return fmt.Errorf("%s: no such log", args[0])
			}
			rep, err := decisionlog.Verify(files...)
			if err != nil && !errors.Is(err, decisionlog.ErrChainBroken) {
				return err
			}
			out := cmd.OutOrStdout()
			if rep.Records == 0 {
				fmt.Fprintf(out, "files:   %d\nrecords: none yet (nothing was logged)\n", rep.Files)
			} else {
				fmt.Fprintf(out, "files:   %d\nrecords: %d verified (seq %d … %d)\n", rep.Files, rep.Records, rep.FirstSeq, rep.LastSeq)
			}
			if !rep.FromGenesis && rep.Records > 0 {
				fmt.Fprintln(out, "note:    the chain starts mid-way: older records were rotated away")
			}
			for _, t := range rep.Torn {
				fmt.Fprintf(out, "note:    %s:%d: torn record (a crash mid-write); the chain continues in the next file\n", t.File, t.Line)
			}
			if rep.Records > 0 {
				fmt.Fprintf(out, "last:    %s\n", rep.LastHash)
			}
			if len(missing) > 0 {
				err := fmt.Errorf("chain broken: rotated files %s are missing (deleted?): rotation leaves no gap in the numbering",
					strings.Join(missing, ", "))
				if rep.Break != nil {
					err = fmt.Errorf("%w; %w", err, rep.Break)
				}
				return err
			}
			if rep.Break != nil {
				return fmt.Errorf("chain broken: %w", rep.Break)
			}
			fmt.Fprintln(out, "chain:   intact")
			return nil
		},
	}
	cmd.AddCommand(verify)
	return cmd
}

// chainFiles lists a log's files oldest first: every LOG.N that exists, by
// N descending, then LOG. missing names each LOG.N below the largest N that
// does not exist: rotation never leaves such a gap.
func chainFiles(path string) (files, missing []string, err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("list the files of decision log %s: %w", path, err)
	}
	present := map[int]bool{}
	top := 0
	for _, e := range entries {
		suffix, ok := strings.CutPrefix(e.Name(), base+".")
		if !ok || e.IsDir() {
			continue
		}
		n, err := strconv.Atoi(suffix)
		if err != nil || n < 1 || strconv.Itoa(n) != suffix {
			continue // not a rotated file (LOG.bak, LOG.01)
		}
		present[n] = true
		top = max(top, n)
	}
	for n := top; n >= 1; n-- {
		p := path + "." + strconv.Itoa(n)
		if present[n] {
			files = append(files, p)
		} else {
			missing = append(missing, p)
		}
	}
	slices.Reverse(missing)
	if _, err := os.Stat(path); err == nil {
		files = append(files, path)
	}
	return files, missing, nil
}
