// Command bookinfo is Rampart's own small implementation of the Bookinfo sample
// topology (the four services of Istio's sample, same behaviour, our code): one
// binary, one subcommand per service, so the local mesh launcher can start each
// service as a process beside its sidecar.
//
//	bookinfo productpage [--listen ADDR] [--details-url URL] [--reviews-url URL]
//	bookinfo details     [--listen ADDR]
//	bookinfo reviews     [--listen ADDR] --version v1|v2|v3 [--ratings-url URL]
//	bookinfo ratings     [--listen ADDR]
//
// Every service prints "listening on HOST:PORT" as the first line on stdout once
// its socket is bound, logs one line per request on stderr and shuts down cleanly
// on SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// Exit codes: 0 after a clean shutdown or --help, 1 when the service fails at run
// time (the address is taken, say), 2 for a usage error (unknown command or flag,
// bad flag value).
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// envListen names the variable the mesh launcher sets to tell an app where to listen.
const envListen = "RAMPART_APP_ADDR"

const defaultListen = "127.0.0.1:9080"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// command is one service: its flags and what to build from them.
type command struct {
	name    string
	summary string
	// flags registers the command's flags on fs and returns the function that
	// builds the service's handler once they are parsed.
	flags func(fs *flag.FlagSet) func(log *slog.Logger) (http.Handler, error)
}

var commands = []command{
	{name: "productpage", summary: "the web front end: calls details and reviews, renders the page", flags: productPageFlags},
	{name: "details", summary: "book details (author, ISBN, …) as JSON", flags: detailsFlags},
	{name: "reviews", summary: "book reviews as JSON; v2 and v3 add star ratings from ratings", flags: reviewsFlags},
	{name: "ratings", summary: "star ratings as JSON", flags: ratingsFlags},
}

// run is main without the process: it returns the exit code instead of exiting,
// so tests can drive the command line in-process.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return exitOK
	}
	var cmd *command
	for i := range commands {
		if commands[i].name == args[0] {
			cmd = &commands[i]
		}
	}
	if cmd == nil {
		fmt.Fprintf(stderr, "bookinfo: unknown command %q; run 'bookinfo --help' for the list\n", args[0])
		return exitUsage
	}

	fs := flag.NewFlagSet("bookinfo "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(stderr) // where the flag package reports a bad flag
	fs.Usage = func() {} // the full help goes to stdout, and only on --help
	listen := fs.String("listen", listenDefault(getenv), "`address` to serve HTTP on; $"+envListen+" sets the default")
	build := cmd.flags(fs)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			commandUsage(stdout, cmd, fs)
			return exitOK
		}
		fmt.Fprintf(stderr, "run 'bookinfo %s --help' for usage\n", cmd.name)
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "bookinfo %s: unexpected argument %q; run 'bookinfo %s --help' for usage\n", cmd.name, fs.Arg(0), cmd.name)
		return exitUsage
	}

	log := slog.New(slog.NewTextHandler(stderr, nil)).With("service", cmd.name)
	h, err := build(log)
	if err != nil {
		fmt.Fprintf(stderr, "bookinfo %s: %v; run 'bookinfo %s --help' for usage\n", cmd.name, err, cmd.name)
		return exitUsage
	}
	if err := serve(ctx, *listen, h, stdout, log); err != nil {
		fmt.Fprintf(stderr, "bookinfo %s: %v\n", cmd.name, err)
		return exitFail
	}
	return exitOK
}

func listenDefault(getenv func(string) string) string {
	if a := getenv(envListen); a != "" {
		return a
	}
	return defaultListen
}

func productPageFlags(fs *flag.FlagSet) func(*slog.Logger) (http.Handler, error) {
	detailsURL := fs.String("details-url", defaultDetailsURL, "base `URL` of the details service")
	reviewsURL := fs.String("reviews-url", defaultReviewsURL, "base `URL` of the reviews service")
	timeout := fs.Duration("timeout", defaultProductPageTimeout, "time limit for each call to details or reviews")
	return func(log *slog.Logger) (http.Handler, error) {
		return newProductPage(productPageConfig{
			DetailsURL: *detailsURL,
			ReviewsURL: *reviewsURL,
			Timeout:    *timeout,
			Log:        log,
		})
	}
}

func detailsFlags(*flag.FlagSet) func(*slog.Logger) (http.Handler, error) {
	return func(*slog.Logger) (http.Handler, error) { return newDetails(), nil }
}

func ratingsFlags(*flag.FlagSet) func(*slog.Logger) (http.Handler, error) {
	return func(*slog.Logger) (http.Handler, error) { return newRatings(), nil }
}

func reviewsFlags(fs *flag.FlagSet) func(*slog.Logger) (http.Handler, error) {
	version := fs.String("version", "v1", "`v1|v2|v3`: which reviews to serve: v1 without stars, v2 with black stars, v3 with red stars")
	ratingsURL := fs.String("ratings-url", defaultRatingsURL, "base `URL` of the ratings service (v2 and v3)")
	timeout := fs.Duration("ratings-timeout", defaultRatingsTimeout, "time limit for each call to ratings")
	return func(log *slog.Logger) (http.Handler, error) {
		return newReviews(reviewsConfig{
			Version:        *version,
			RatingsURL:     *ratingsURL,
			RatingsTimeout: *timeout,
			Log:            log,
		})
	}
}

func usage(w io.Writer) {
	var b strings.Builder
	b.WriteString("bookinfo runs one service of the Bookinfo sample topology.\n\n")
	b.WriteString("Usage:\n  bookinfo <command> [flags]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-17s %s\n", c.name, c.summary)
	}
	b.WriteString("\nEnvironment:\n")
	fmt.Fprintf(&b, "  %-17s default for --listen (else %s)\n", envListen, defaultListen)
	fmt.Fprintf(&b, "  %-17s outgoing calls go through this proxy (the sidecar's outbound listener)\n", "HTTP_PROXY")
	fmt.Fprintf(&b, "  %-17s hosts to call directly, not through the proxy\n", "NO_PROXY")
	b.WriteString("\nEach service prints \"listening on HOST:PORT\" as its first line on stdout,\n")
	b.WriteString("logs one line per request on stderr and stops cleanly on SIGINT or SIGTERM.\n")
	b.WriteString("Run 'bookinfo <command> --help' for the command's flags.\n")
	io.WriteString(w, b.String())
}

func commandUsage(w io.Writer, cmd *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "bookinfo %s: %s.\n\nUsage:\n  bookinfo %s [flags]\n\nFlags:\n", cmd.name, cmd.summary, cmd.name)
	out := fs.Output()
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(out)
}

// Server limits. The write timeout leaves room for productpage's upstream calls.
const (
	readHeaderTimeout = 5 * time.Second
	writeTimeout      = 15 * time.Second
	idleTimeout       = 60 * time.Second
	shutdownTimeout   = 5 * time.Second
)
