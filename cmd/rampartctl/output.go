package main

import (
	"encoding/json"
	"errors"
	"io"

	"github.com/spf13/cobra"
)

// outputFormat is the --output flag of the commands that print a result. Its
// value is checked when flags are parsed, so `-o yaml` fails before any work.
type outputFormat string

const (
	outputText outputFormat = "text"
	outputJSON outputFormat = "json"
)

func (o *outputFormat) String() string { return string(*o) }
func (o *outputFormat) Type() string   { return "format" }

func (o *outputFormat) Set(s string) error {
	switch f := outputFormat(s); f {
	case outputText, outputJSON:
		*o = f
		return nil
	}
	return errors.New("want text or json")
}

// addOutputFlag registers -o/--output on c, defaulting to text.
func addOutputFlag(c *cobra.Command, o *outputFormat) {
	*o = outputText
	c.Flags().VarP(o, "output", "o", "text or json")
}

// writeJSON prints v as indented JSON, the form every `-o json` uses.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
