// Package natlabcmd is the command-line front end of the NAT lab (`pc2 natlab
// ...`). It exists apart from package natlab so that the lab library carries
// no CLI concerns and the pc2 binary wires the lab in with one call to Run.
package natlabcmd

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/elacity/pc2/tools/natlab"
)

// ExitError carries the exit status of a command run by `exec`.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("command exited with status %d", e.Code) }

// Command runs the CLI. Agent, when set, tells the lab how to start agent
// processes; when zero, Run derives it from the current executable and
// os.Args (see Run).
type Command struct {
	Agent natlab.Launcher
	// Stdin feeds `exec` (default os.Stdin).
	Stdin io.Reader
}

// Run runs the natlab CLI with args (the words after "natlab"). Agents are
// started by re-executing the current binary with the words that preceded
// args in os.Args followed by "agent ...": with `pc2 natlab up pair`, args is
// [up pair] and agents run as `pc2 natlab agent ...`.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return (&Command{}).Run(ctx, args, stdout, stderr)
}

// Run runs the CLI (see the package-level Run).
func (c *Command) Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		return nil
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "agent":
		return natlab.AgentMain(ctx, rest, stdout, stderr)
	case "up":
		return c.up(ctx, args, rest, stdout, stderr)
	case "down":
		return c.down(ctx, rest, stdout, stderr)
	case "exec":
		return c.exec(ctx, rest, stdout, stderr)
	case "classify":
		return c.classify(ctx, args, rest, stdout, stderr)
	case "punch":
		return c.punch(ctx, args, rest, stdout, stderr)
	case "matrix":
		return c.matrix(ctx, args, rest, stdout, stderr)
	case "list":
		return c.list(rest, stdout, stderr)
	case "install-deps":
		fs := newFlags("install-deps", "", "Install nftables, iproute2 and miniupnpd from Debian packages when missing (root).", stderr)
		if err := parse(fs, rest); err != nil {
			return helpOK(err)
		}
		return natlab.InstallDeps(ctx)
	}
	usage(stderr)
	return fmt.Errorf("natlab: unknown command %q", cmd)
}

func usage(w io.Writer) {
	fmt.Fprint(w, `natlab: network-namespace NAT laboratory (needs root)

Usage:
  natlab <command> [flags]

Commands:
  up <topology> [flags]        build a lab and keep it up until Ctrl-C or 'down'
  down [--lab NAME] [--all]    remove a lab (or all labs)
  exec [--lab NAME] <host> -- cmd...
                               run a command inside a lab host
  classify [topology] [flags]  observe mapping/filtering/hairpin of every private host
                               (of the running lab, or of a fresh lab of that topology)
  punch [--lab NAME] <hostA> <hostB>
                               UDP hole punch between two hosts of the running lab
  matrix [flags]               hole-punching benchmark: every ordered pair of NAT profiles,
                               UDP and TCP, N trials per cell, with and without loss;
                               table on stdout, CSV and PNG heat map
  list                         profiles, NAT options, topologies, running labs
  install-deps                 install nft, ip, tc, miniupnpd if missing

Run 'natlab <command> --help' for the flags of a command.
`)
}

func newFlags(name, args, doc string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: natlab %s %s\n\n%s\n", name, args, doc)
		var hasFlags bool
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprintf(fs.Output(), "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parse parses flags that may appear before or after positional arguments
// (stdlib flag stops at the first non-flag). Everything after the first "--"
// is positional verbatim (the command of exec). fs.Args() holds the result.
func parse(fs *flag.FlagSet, args []string) error {
	var tail []string
	if i := slices.Index(args, "--"); i >= 0 {
		args, tail = args[:i], args[i+1:]
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	return fs.Parse(append(append([]string{"--"}, pos...), tail...))
}

// helpOK turns a --help request into success (usage was already printed).
func helpOK(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}

func topologyFlags(fs *flag.FlagSet) *natlab.TopologyFlags {
	var f natlab.TopologyFlags
	fs.StringVar(&f.A, "a", "", "pair: NAT spec of router a (default prc)")
	fs.StringVar(&f.B, "b", "", "pair: NAT spec of router b (default prc)")
	fs.StringVar(&f.CGN, "cgn", "", "double: NAT spec of the CGNAT (default prc,hairpin)")
	fs.StringVar(&f.Home, "home", "", "double: NAT spec of the home routers (default fc)")
	fs.IntVar(&f.HostsPerLAN, "hosts", 2, "pair: private hosts per LAN")
	fs.StringVar(&f.Extra, "nat-options", "", "options added to every NAT, e.g. loss=nth:4,rate=10mbit,timeout=30s")
	return &f
}

// launcher returns how to start agents: the configured one, or the current
// executable with the words of os.Args that precede args, plus "agent".
func (c *Command) launcher(args []string) (natlab.Launcher, error) {
	if c.Agent.Path != "" {
		return c.Agent, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return natlab.Launcher{}, fmt.Errorf("natlab: locate own executable: %w", err)
	}
	osArgs := os.Args[1:]
	if len(args) > len(osArgs) || !slices.Equal(osArgs[len(osArgs)-len(args):], args) {
		return natlab.Launcher{}, errors.New("natlab: cannot derive the agent command from os.Args; set Command.Agent")
	}
	prefix := slices.Clone(osArgs[:len(osArgs)-len(args)])
	return natlab.Launcher{Path: exe, Args: append(prefix, "agent")}, nil
}

func (c *Command) up(ctx context.Context, all, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("up", "<topology> [flags]",
		"Build a lab from a built-in topology (see 'natlab list') and keep it up until\n"+
			"Ctrl-C, SIGTERM or 'natlab down'; then remove every namespace and process.\n"+
			"NAT spec: profile[,hairpin][,loss=nth:N|random:P%][,rate=10mbit][,timeout=30s][,upnp]", stderr)
	tf := topologyFlags(fs)
	name := fs.String("name", "", "lab name for exec/down from another shell (default: topology name)")
	detach := fs.Bool("detach", false, "return once the lab is up and leave it up (remove with 'down')")
	asJSON := fs.Bool("json", false, "print the lab's nodes as JSON")
	if err := parse(fs, args); err != nil {
		return helpOK(err)
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("natlab up: want exactly one topology")
	}
	topo, err := natlab.Builtin(fs.Arg(0), *tf)
	if err != nil {
		return err
	}
	launcher, err := c.launcher(all)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := natlab.InstallDeps(ctx); err != nil {
		return err
	}
	l, err := natlab.Up(ctx, topo, natlab.Config{Name: *name, Unique: true, Launcher: launcher, Detached: *detach, Log: stderr})
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(l.State); err != nil {
			_ = l.Close()
			return err
		}
	} else {
		printNodes(stdout, l)
	}
	if *detach {
		fmt.Fprintf(stdout, "lab %s is up (detached); remove it with: natlab down --lab %s\n", l.Name, l.Name)
		return nil
	}
	fmt.Fprintf(stdout, "lab %s is up; Ctrl-C or 'natlab down --lab %s' removes it\n", l.Name, l.Name)
	<-ctx.Done()
	fmt.Fprintf(stdout, "removing lab %s\n", l.Name)
	if err := l.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "lab %s removed\n", l.Name)
	return nil
}

func printNodes(w io.Writer, l *natlab.Lab) {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "NODE\tKIND\tADDRESSES\tVIA\tNAT\n")
	for _, n := range l.Nodes {
		var addrs []string
		for _, a := range n.Addrs {
			addrs = append(addrs, a.String())
		}
		nat := ""
		if n.Options != nil {
			nat = n.Options.String() + " lan " + n.LAN.String()
		}
		if n.Probe {
			nat = fmt.Sprintf("probe server :%d/:%d", natlab.ProbePort, natlab.ProbeAltPort)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.Name, n.Kind, strings.Join(addrs, ","), n.Parent, nat)
	}
	tw.Flush()
}

func (c *Command) down(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("down", "[--lab NAME] [--all]", "Remove a running lab: stop its owner, kill its processes, delete its namespaces.", stderr)
	lab := fs.String("lab", "", "lab name (default: the only running lab)")
	all := fs.Bool("all", false, "remove every lab and every stale namespace")
	if err := parse(fs, args); err != nil {
		return helpOK(err)
	}
	if os.Geteuid() != 0 {
		return natlab.ErrNotRoot
	}
	if *all {
		sts, err := natlab.ReadStates()
		if err != nil {
			return err
		}
		for _, st := range sts {
			if !st.Alive() {
				continue
			}
			l, err := natlab.Attach(st.Name, natlab.Launcher{})
			if err != nil {
				continue
			}
			if err := natlab.Down(ctx, l, 10*time.Second); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "lab %s removed\n", st.Name)
		}
		removed, err := natlab.CleanStale(ctx)
		if len(removed) > 0 {
			fmt.Fprintf(stdout, "stale namespaces removed: %s\n", strings.Join(removed, " "))
		}
		return err
	}
	l, err := natlab.Attach(*lab, natlab.Launcher{})
	if err != nil {
		return err
	}
	if err := natlab.Down(ctx, l, 10*time.Second); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "lab %s removed\n", l.Name)
	return nil
}

func (c *Command) exec(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("exec", "[--lab NAME] <host> -- command [args...]",
		"Run a command inside a lab host's network namespace, with this terminal's stdin.", stderr)
	lab := fs.String("lab", "", "lab name (default: the only running lab)")
	if err := parse(fs, args); err != nil {
		return helpOK(err)
	}
	pos := fs.Args()
	if len(pos) < 2 {
		fs.Usage()
		return errors.New("natlab exec: want a host and a command")
	}
	if os.Geteuid() != 0 {
		return natlab.ErrNotRoot
	}
	l, err := natlab.Attach(*lab, natlab.Launcher{})
	if err != nil {
		return err
	}
	host := pos[0]
	if _, ok := l.Node(host); !ok {
		return fmt.Errorf("natlab exec: lab %s has no host %q", l.Name, host)
	}
	stdin := c.Stdin
	if stdin == nil {
		stdin = os.Stdin
	}
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.NS(host)}, pos[1:]...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return &ExitError{Code: ee.ExitCode()}
		}
		return err
	}
	return nil
}

func (c *Command) classify(ctx context.Context, all, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("classify", "[topology] [flags]",
		"Run RFC 5780-style mapping, filtering and hairpin probes from every private host\n"+
			"against the probe server. With a topology, a fresh lab is built, classified and\n"+
			"removed; without one, the running lab is used.", stderr)
	tf := topologyFlags(fs)
	lab := fs.String("lab", "", "running lab to classify (default: the only running lab)")
	asJSON := fs.Bool("json", false, "print JSON results")
	var tm natlab.ProbeTiming
	fs.DurationVar(&tm.Wait, "wait", natlab.DefaultTiming.Wait, "wait per try for a reply that may be filtered")
	fs.IntVar(&tm.Tries, "tries", natlab.DefaultTiming.Tries, "tries before a reply counts as filtered")
	if err := parse(fs, args); err != nil {
		return helpOK(err)
	}
	launcher, err := c.launcher(all)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var l *natlab.Lab
	switch fs.NArg() {
	case 0:
		if os.Geteuid() != 0 {
			return natlab.ErrNotRoot
		}
		if l, err = natlab.Attach(*lab, launcher); err != nil {
			return err
		}
	case 1:
		topo, err := natlab.Builtin(fs.Arg(0), *tf)
		if err != nil {
			return err
		}
		if err := natlab.InstallDeps(ctx); err != nil {
			return err
		}
		name := fmt.Sprintf("classify-%d", os.Getpid())
		if l, err = natlab.Up(ctx, topo, natlab.Config{Name: name, Launcher: launcher, Log: stderr}); err != nil {
			return err
		}
		defer l.Close()
	default:
		fs.Usage()
		return errors.New("natlab classify: at most one topology")
	}
	hosts := l.Hosts(natlab.KindPrivate)
	t0 := time.Now()
	res, err := l.ClassifyHosts(ctx, hosts, tm)
	if err != nil {
		return err
	}
	if *asJSON {
		type row struct {
			Host     string                `json:"host"`
			Expected natlab.Behaviour      `json:"expected"`
			Observed natlab.ClassifyResult `json:"observed"`
		}
		var rows []row
		for i, h := range hosts {
			rows = append(rows, row{h, natlab.Expected(l.Nodes, h), res[i]})
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	tw := tabwriter.NewWriter(stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "HOST\tBEHIND\tMAPPED\tMAPPING\tFILTERING\tHAIRPIN\tDECLARED\n")
	mismatch := 0
	for i, h := range hosts {
		var chain []string
		for _, r := range natlab.NATChain(l.Nodes, h) {
			chain = append(chain, r.Name+"("+r.Options.String()+")")
		}
		want := natlab.Expected(l.Nodes, h)
		got := res[i].Behaviour()
		mark := "ok"
		if got != want {
			mark = "MISMATCH " + want.String()
			mismatch++
		}
		hp := "no"
		if got.Hairpin {
			hp = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h, strings.Join(chain, " < "), res[i].Mapped, got.Mapping, got.Filtering, hp, mark)
	}
	tw.Flush()
	fmt.Fprintf(stdout, "%d hosts classified in %v\n", len(hosts), time.Since(t0).Round(time.Millisecond))
	if mismatch > 0 {
		return fmt.Errorf("natlab classify: %d hosts behave differently from their declared NATs", mismatch)
	}
	return nil
}

func (c *Command) punch(ctx context.Context, all, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("punch", "[--lab NAME] <hostA> <hostB>",
		"Simultaneous-send UDP hole punching between two private hosts of the running lab,\n"+
			"with addresses learned from the probe server.", stderr)
	lab := fs.String("lab", "", "lab name (default: the only running lab)")
	timeout := fs.Duration("timeout", 2*time.Second, "give up after")
	if err := parse(fs, args); err != nil {
		return helpOK(err)
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return errors.New("natlab punch: want two hosts")
	}
	if os.Geteuid() != 0 {
		return natlab.ErrNotRoot
	}
	launcher, err := c.launcher(all)
	if err != nil {
		return err
	}
	l, err := natlab.Attach(*lab, launcher)
	if err != nil {
		return err
	}
	a, b, err := l.Punch(ctx, fs.Arg(0), fs.Arg(1), *timeout)
	if err != nil {
		return err
	}
	for _, r := range []struct {
		host string
		res  natlab.PunchResult
	}{{fs.Arg(0), a}, {fs.Arg(1), b}} {
		ack := "no ack"
		if r.res.OK {
			ack = fmt.Sprintf("acked by %v after %d ms", r.res.Remote, r.res.Millis)
		}
		fmt.Fprintf(stdout, "%s: mapped %v, peer %v, %s, got peer's punch: %v, %d punches sent\n",
			r.host, r.res.Mapped, r.res.Peer, ack, r.res.GotPunch, r.res.Sent)
	}
	if a.OK && b.OK {
		fmt.Fprintln(stdout, "punched")
		return nil
	}
	fmt.Fprintln(stdout, "not punched")
	return &ExitError{Code: 1}
}

func (c *Command) matrix(ctx context.Context, all, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("matrix", "[flags]",
		"Benchmark hole punching (package transport/punch) in fresh labs: for every ordered pair of\n"+
			"NAT profiles (fc, arc, prc, sym, dbl = prc behind a prc CGNAT), over UDP and TCP, run N\n"+
			"trials per cell at each loss level; record success, packets and probes, time to the\n"+
			"first direct packet in measured RTTs and the path (direct, birthday, relay). Loss is\n"+
			"applied on the initiator's NAT in both directions. Prints a table and writes\n"+
			"<out>-trials.csv, <out>-cells.csv and <out>.png.", stderr)
	trials := fs.Int("trials", 100, "trials per cell")
	profiles := fs.String("profiles", strings.Join(natlab.MatrixProfiles, ","), "NAT profiles")
	transports := fs.String("transports", "udp,tcp", "transports")
	losses := fs.String("loss", "none,random:5%", "loss levels, comma-separated: none, random:P%, nth:N (deterministic)")
	parallelN := fs.Int("parallel", 16, "concurrent trials (each host runs one at a time)")
	latency := fs.Duration("latency", 10*time.Millisecond, "emulated one-way latency added by each peer to what it sends")
	relay := fs.Bool("relay", true, "fall back to PC2's relay (relay/circuit) on the rendezvous host when no direct path is found")
	out := fs.String("out", "natlab-matrix", "output prefix for the CSV files and the PNG heat map ('' = none)")
	seed := fs.Uint64("seed", 1, "seed of the birthday probe order")
	if err := parse(fs, args); err != nil {
		return helpOK(err)
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return errors.New("natlab matrix: no positional arguments")
	}
	var lossList []natlab.Loss
	for _, s := range strings.Split(*losses, ",") {
		s = strings.TrimSpace(s)
		if s == "none" || s == "0" || s == "" {
			lossList = append(lossList, natlab.Loss{})
			continue
		}
		l, err := natlab.ParseLoss(s)
		if err != nil {
			return err
		}
		lossList = append(lossList, l)
	}
	if *trials <= 0 || *trials > 100_000 || *parallelN <= 0 || *parallelN > 64 {
		return errors.New("natlab matrix: --trials 1..100000, --parallel 1..64")
	}
	if os.Geteuid() != 0 {
		return natlab.ErrNotRoot
	}
	launcher, err := c.launcher(all)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := natlab.InstallDeps(ctx); err != nil {
		return err
	}
	rep, err := natlab.RunMatrix(ctx, natlab.MatrixConfig{
		Profiles: strings.Split(*profiles, ","), Transports: strings.Split(*transports, ","), Losses: lossList,
		Trials: *trials, Parallel: *parallelN, Latency: *latency, Relay: *relay, Seed: *seed,
		Launcher: launcher, Log: stderr,
	})
	if err != nil {
		return err
	}
	rep.WriteTable(stdout)
	if *out == "" {
		return nil
	}
	write := func(path string, f func(io.Writer) error) error {
		fh, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := f(fh); err != nil {
			fh.Close()
			return fmt.Errorf("%s: %w", path, err)
		}
		return fh.Close()
	}
	if err := write(*out+"-trials.csv", rep.WriteTrialsCSV); err != nil {
		return err
	}
	if err := write(*out+"-cells.csv", rep.WriteCellsCSV); err != nil {
		return err
	}
	if err := write(*out+".png", rep.WritePNG); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s-trials.csv, %s-cells.csv, %s.png\n", *out, *out, *out)
	return nil
}

func (c *Command) list(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("list", "", "List NAT profiles, NAT spec options, built-in topologies and running labs.", stderr)
	if err := parse(fs, args); err != nil {
		return helpOK(err)
	}
	tw := tabwriter.NewWriter(stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "PROFILE\tALIAS\tMAPPING\tFILTERING\tDESCRIPTION\n")
	for _, p := range natlab.Profiles() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.Name, p.Alias, p.Mapping, p.Filtering, p.Description)
	}
	tw.Flush()
	fmt.Fprint(stdout, `
NAT spec: <profile>[,option...]
  hairpin            hairpinning (the hairpinned packet carries the sender's external address)
  loss=nth:N         drop 1 of every N packets, each direction (deterministic, for CI)
  loss=random:P%     drop P% of packets at random, each direction
  rate=10mbit        tbf rate limit, each direction
  timeout=30s        UDP mapping timeout (conntrack timeouts and learned mappings)
  upnp               run miniupnpd (UPnP IGD + NAT-PMP/PCP) on the router's LAN

`)
	tw = tabwriter.NewWriter(stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "TOPOLOGY\tDESCRIPTION\n")
	for _, t := range natlab.BuiltinTopologies() {
		fmt.Fprintf(tw, "%s\t%s\n", t[0], t[1])
	}
	tw.Flush()
	sts, err := natlab.ReadStates()
	if err != nil || len(sts) == 0 {
		return nil
	}
	fmt.Fprintln(stdout)
	tw = tabwriter.NewWriter(stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "LAB\tTOPOLOGY\tRUN\tOWNER\tSTATUS\n")
	for _, st := range sts {
		status := "up"
		if st.Detached {
			status = "up (detached)"
		} else if !st.Alive() {
			status = "stale"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", st.Name, st.Topology, st.ID, st.OwnerPID, status)
	}
	tw.Flush()
	return nil
}
