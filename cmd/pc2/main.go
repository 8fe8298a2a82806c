// Command pc2 is the one binary of the PC2 network: supernode, relay, DHT
// participant and user node, plus the tools around them (identity, devnet,
// NAT lab).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// command is one node of the command tree. A command has either run or subs.
type command struct {
	name    string
	args    string // synopsis of positional arguments
	summary string
	help    string // longer text shown by --help
	flags   func(fs *flag.FlagSet)
	run     func(ctx context.Context, io *stdio, fs *flag.FlagSet, args []string) error
	subs    []*command
	hidden  bool
	// passThrough commands parse their own arguments, --help included.
	passThrough bool
}

// stdio is the process's standard streams, replaceable in tests.
type stdio struct {
	in       io.Reader
	out, err io.Writer
}

// usageError makes the process exit with status 2 after printing usage.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func root() *command {
	return &command{
		name:    "pc2",
		summary: "the PC2 network stack: supernode, relay, DHT and user node in one binary",
		subs: []*command{
			idCommand(),
			supernodeCommand(),
			nodeCommand(roleNode),
			devnetCommand(),
			natlabCommand(),
			natCommand(),
			peerCommand(),
			dhtCommand(),
			nameCommand(),
			versionCommand(),
		},
	}
}

// supernodeCommand runs a supernode; its subcommands inspect one.
func supernodeCommand() *command {
	c := nodeCommand(roleSupernode)
	c.subs = []*command{supernodeStatusCommand()}
	return c
}

func main() {
	ctx, stop := signalContext()
	defer stop()
	os.Exit(execute(ctx, &stdio{in: os.Stdin, out: os.Stdout, err: os.Stderr}, os.Args[1:]))
}

// signalContext ends on the first SIGINT or SIGTERM; a second one exits at
// once, for the operator who does not want to wait for the drain.
func signalContext() (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ch
		cancel()
		<-ch
		fmt.Fprintln(os.Stderr, "pc2: second signal, exiting without drain")
		os.Exit(130)
	}()
	return ctx, func() { signal.Stop(ch); cancel() }
}

// execute runs args against the command tree and returns the exit status.
func execute(ctx context.Context, std *stdio, args []string) int {
	cmd, path, rest := root(), "pc2", args
	for len(rest) > 0 && len(cmd.subs) > 0 {
		if rest[0] == "help" {
			rest = append(rest[1:], "--help")
			continue
		}
		sub := cmd.find(rest[0])
		if sub == nil {
			break
		}
		cmd, path, rest = sub, path+" "+sub.name, rest[1:]
	}
	if cmd.passThrough {
		if err := cmd.run(ctx, std, nil, rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			fmt.Fprintf(std.err, "%s: %v\n", path, err)
			return 1
		}
		return 0
	}
	fs := flag.NewFlagSet(path, flag.ContinueOnError)
	fs.SetOutput(std.err)
	fs.Usage = func() {} // usage is printed below, to stdout for --help
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	positional, err := parseInterspersed(fs, rest)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			cmd.usage(std.out, path, fs)
			return 0
		}
		fmt.Fprintln(std.err)
		cmd.usage(std.err, path, fs)
		return 2
	}
	if cmd.run == nil {
		if len(positional) > 0 {
			fmt.Fprintf(std.err, "%s: unknown command %q\n\n", path, positional[0])
		}
		cmd.usage(std.err, path, fs)
		return 2
	}
	err = cmd.run(ctx, std, fs, positional)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(std.err, "%s: %s\n\n", path, ue.msg)
		cmd.usage(std.err, path, fs)
		return 2
	default:
		fmt.Fprintf(std.err, "%s: %v\n", path, err)
		return 1
	}
}

// parseInterspersed parses flags wherever they stand, so that
// `pc2 name register alice.ela.city --target …` works as users write it;
// everything after "--" is positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		consumed := args[:len(args)-len(rest)]
		if len(rest) == 0 || (len(consumed) > 0 && consumed[len(consumed)-1] == "--") {
			return append(positional, rest...), nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

func (c *command) find(name string) *command {
	for _, s := range c.subs {
		if s.name == name {
			return s
		}
	}
	return nil
}

func (c *command) usage(w io.Writer, path string, fs *flag.FlagSet) {
	fmt.Fprintf(w, "%s: %s\n\n", path, c.summary)
	switch {
	case len(c.subs) > 0:
		fmt.Fprintf(w, "Usage:\n  %s <command> [flags]\n", path)
		if c.run != nil {
			fmt.Fprintf(w, "  %s [flags] %s\n", path, c.args)
		}
		fmt.Fprintf(w, "\nCommands:\n")
		for _, s := range c.subs {
			if !s.hidden {
				fmt.Fprintf(w, "  %-11s %s\n", s.name, s.summary)
			}
		}
		fmt.Fprintf(w, "\nRun '%s <command> --help' for details.\n", path)
	default:
		fmt.Fprintf(w, "Usage:\n  %s [flags] %s\n", path, c.args)
	}
	if c.help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.help))
	}
	hasFlags := false
	fs.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		fmt.Fprintln(w, "\nFlags:")
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
}

func noArgs(args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", args[0])}
	}
	return nil
}
