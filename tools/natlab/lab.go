package natlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// NamePrefix starts the name of every namespace a lab creates.
const NamePrefix = "pc2lab-"

// StateDir holds one JSON file per lab (owner pid, nodes). It is one fixed
// place for the whole machine on purpose: stale-lab cleanup must see the
// owner of every lab, or it would remove a live one.
const StateDir = "/run/pc2-natlab"

// Probe server ports (primary and alternate).
const (
	ProbePort    = 3478
	ProbeAltPort = 3479
)

// ErrNotRoot is returned when the lab is used without root privileges.
var ErrNotRoot = errors.New("natlab: needs root (network namespaces, nftables)")

// Config tunes Up.
type Config struct {
	// Name identifies the lab for Attach (exec, down from another shell);
	// default: the topology name.
	Name string
	// Unique refuses to start when a live lab with the same name exists.
	Unique bool
	// Launcher starts agents (probe servers and clients).
	Launcher Launcher
	// Detached labs outlive their creator: they are not considered stale when
	// the creating process exits, and are removed only by Down.
	Detached bool
	// Log receives progress lines (nil: discarded).
	Log io.Writer
}

// State is what a lab persists so that other processes can find it.
type State struct {
	ID         string
	Name       string
	Prefix     string
	Topology   string
	OwnerPID   int
	OwnerStart uint64 // process start time, guards against pid reuse
	Detached   bool
	Created    time.Time
	Nodes      []Node
	// Procs records agent processes started by the lab (informational).
	Procs []ProcInfo `json:",omitempty"`
}

// ProcInfo describes a process started by the lab.
type ProcInfo struct {
	Host string
	Pid  int
	Argv []string
}

// Lab is a running NAT lab.
type Lab struct {
	State
	stateDir string
	launcher Launcher
	log      io.Writer

	mu     sync.Mutex
	procs  []*Proc
	closed bool
}

func newRunID() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Up builds topology t and starts its probe servers and port-mapping daemons.
// On error everything created so far is removed.
func Up(ctx context.Context, t Topology, cfg Config) (_ *Lab, err error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	nodes, err := t.Resolve()
	if err != nil {
		return nil, fmt.Errorf("topology %s: %w", t.Name, err)
	}
	needUPnP := slices.ContainsFunc(nodes, func(n Node) bool { return n.Options != nil && n.Options.PortMapping })
	if err := CheckDeps(needUPnP); err != nil {
		return nil, err
	}
	if cfg.Name == "" {
		cfg.Name = t.Name
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	if !nodeNameRE.MatchString(cfg.Name) {
		return nil, fmt.Errorf("lab name %q: want [a-z][a-z0-9-]{0,23}", cfg.Name)
	}
	if err := os.MkdirAll(StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("natlab state dir: %w", err)
	}
	if removed, err := CleanStale(ctx); err != nil {
		return nil, fmt.Errorf("clean stale labs: %w", err)
	} else if len(removed) > 0 {
		fmt.Fprintf(cfg.Log, "removed stale lab namespaces: %s\n", strings.Join(removed, " "))
	}
	if cfg.Unique {
		if st, err := findState(StateDir, cfg.Name); err == nil {
			return nil, fmt.Errorf("lab %q is already up (run %s, owner pid %d); use `down %s` or another --name",
				cfg.Name, st.ID, st.OwnerPID, cfg.Name)
		}
	}
	start, err := procStartTime(os.Getpid())
	if err != nil {
		return nil, err
	}
	id := newRunID()
	l := &Lab{
		State: State{
			ID: id, Name: cfg.Name, Prefix: NamePrefix + id + "-", Topology: t.Name,
			OwnerPID: os.Getpid(), OwnerStart: start, Detached: cfg.Detached,
			Created: time.Now().UTC(), Nodes: nodes,
		},
		stateDir: StateDir, launcher: cfg.Launcher, log: cfg.Log,
	}
	// The state file goes first: a namespace without it would look stale to a
	// concurrent lab's cleanup.
	if err := l.saveState(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = l.Close()
		}
	}()
	t0 := time.Now()
	if err := l.build(ctx); err != nil {
		return nil, err
	}
	if err := l.waitLinks(ctx, 10*time.Second); err != nil {
		return nil, err
	}
	fmt.Fprintf(cfg.Log, "lab %s (run %s): %d namespaces up in %v\n", l.Name, l.ID, len(nodes), time.Since(t0).Round(time.Millisecond))
	for _, n := range nodes {
		if n.Probe {
			if _, err := l.StartProbeServer(ctx, n.Name, StartOptions{Detach: cfg.Detached}); err != nil {
				return nil, err
			}
		}
	}
	// Port mappers after probe servers: miniupnpd asks the probe server (by
	// STUN) for its external address when it starts.
	for _, n := range nodes {
		if n.Options != nil && n.Options.PortMapping {
			if err := l.startPortMapper(ctx, n, cfg.Detached); err != nil {
				return nil, err
			}
		}
	}
	return l, l.saveState()
}

// NS returns the namespace name of a node.
func (l *Lab) NS(node string) string { return l.Prefix + node }

// Node returns a node by name.
func (l *Lab) Node(name string) (Node, bool) {
	for _, n := range l.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// Hosts returns the names of nodes of the given kind, in topology order.
func (l *Lab) Hosts(kind string) []string {
	var out []string
	for _, n := range l.Nodes {
		if n.Kind == kind {
			out = append(out, n.Name)
		}
	}
	return out
}

// ProbeServer returns the primary and alternate endpoints of the first probe
// server in the lab.
func (l *Lab) ProbeServer() (primary, alt netip.AddrPort, ok bool) {
	for _, n := range l.Nodes {
		if n.Probe {
			return netip.AddrPortFrom(n.Addrs[0], ProbePort), netip.AddrPortFrom(n.Addrs[1], ProbeAltPort), true
		}
	}
	return netip.AddrPort{}, netip.AddrPort{}, false
}

// probeEndpoints returns the four endpoints (two addresses × two ports) of
// the first probe server, or nil.
func (l *Lab) probeEndpoints() []netip.AddrPort {
	for _, n := range l.Nodes {
		if n.Probe {
			var out []netip.AddrPort
			for _, a := range n.Addrs[:2] {
				out = append(out, netip.AddrPortFrom(a, ProbePort), netip.AddrPortFrom(a, ProbeAltPort))
			}
			return out
		}
	}
	return nil
}

func (l *Lab) statePath() string { return filepath.Join(l.stateDir, l.ID+".json") }

// saveState writes the state file durably (write, fsync, rename, fsync dir).
func (l *Lab) saveState() error {
	l.mu.Lock()
	st := l.State
	st.Procs = nil
	for _, p := range l.procs {
		select {
		case <-p.done:
			continue
		default:
		}
		st.Procs = append(st.Procs, ProcInfo{Host: p.Host, Pid: p.Pid(), Argv: p.Argv})
	}
	l.mu.Unlock()
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return writeFileDurable(l.statePath(), b)
}

func writeFileDurable(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("natlab state: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("natlab state: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("natlab state: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("natlab state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("natlab state: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// build creates namespaces, links, addresses, routes, sysctls, rulesets, qdiscs.
func (l *Lab) build(ctx context.Context) error {
	var root bytes.Buffer
	for _, n := range l.Nodes {
		fmt.Fprintf(&root, "netns add %s\n", l.NS(n.Name))
	}
	// Veth pairs are created directly inside their namespaces (nothing ever
	// exists in the root namespace). Ports on a parent segment are v0, v1, ...
	perNS := map[string]*bytes.Buffer{}
	cmds := func(node string) *bytes.Buffer {
		if perNS[node] == nil {
			perNS[node] = &bytes.Buffer{}
			fmt.Fprintf(perNS[node], "link set lo up\n")
		}
		return perNS[node]
	}
	port := map[string]int{}
	links := 0
	for _, n := range l.Nodes {
		b := cmds(n.Name)
		switch n.Kind {
		case KindInternet:
			fmt.Fprintf(b, "link add br0 type bridge\nlink set br0 up\n")
			for _, a := range n.Addrs {
				fmt.Fprintf(b, "addr add %s/24 dev br0\n", a)
			}
			continue
		case KindRouter:
			fmt.Fprintf(b, "link add lan0 type bridge\nlink set lan0 up\n")
			fmt.Fprintf(b, "addr add %s/%d dev lan0\n", n.LAN.Addr().Next(), n.LAN.Bits())
		}
		ifname := "eth0"
		if n.Kind == KindRouter {
			ifname = "wan0"
		}
		bridge := "br0"
		if n.Parent != InternetNode {
			bridge = "lan0"
		}
		pif := fmt.Sprintf("v%d", port[n.Parent])
		port[n.Parent]++
		// Distinct interface indexes at both ends: the kernel treats a veth
		// whose index equals its peer's as a plain device and defers its
		// carrier-up by up to a second (linkwatch), which slowed every lab.
		idx := 100 + 2*links
		links++
		fmt.Fprintf(&root, "link add %s netns %s index %d type veth peer name %s netns %s index %d\n",
			ifname, l.NS(n.Name), idx, pif, l.NS(n.Parent), idx+1)
		pb := cmds(n.Parent)
		fmt.Fprintf(pb, "link set %s master %s\nlink set %s up\n", pif, bridge, pif)
		for _, a := range n.Addrs {
			pfx := n.Prefix
			if !pfx.Contains(a) { // a public host may hold addresses of both internet prefixes
				pfx = PublicPrefixNATs
				if PublicPrefixHosts.Contains(a) {
					pfx = PublicPrefixHosts
				}
			}
			fmt.Fprintf(b, "addr add %s/%d dev %s\n", a, pfx.Bits(), ifname)
		}
		fmt.Fprintf(b, "link set %s up\n", ifname)
		fmt.Fprintf(b, "route add default via %s\n", n.Gateway)
	}
	if _, err := runCmd(ctx, root.Bytes(), ipPath(), "-b", "-"); err != nil {
		return fmt.Errorf("create namespaces and links: %w", err)
	}
	// Parents before children so bridges exist when ports are enslaved: the
	// per-namespace batches are independent (ports are enslaved in the
	// parent's own batch), so they can run concurrently.
	return parallel(ctx, len(l.Nodes), 4, func(ctx context.Context, i int) error {
		n := l.Nodes[i]
		ns := l.NS(n.Name)
		if _, err := runCmd(ctx, perNS[n.Name].Bytes(), ipPath(), "-n", ns, "-b", "-"); err != nil {
			return fmt.Errorf("configure %s: %w", n.Name, err)
		}
		return l.configureNode(ctx, n)
	})
}

func (l *Lab) configureNode(ctx context.Context, n Node) error {
	ns := l.NS(n.Name)
	sysctls := []string{
		// No IPv6 chatter (router solicitations, DAD) on lab links: the lab is
		// IPv4, and stray packets would disturb deterministic loss counters.
		"net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
	}
	switch n.Kind {
	case KindInternet, KindRouter:
		sysctls = append(sysctls,
			"net.ipv4.ip_forward=1",
			// Bridged LAN traffic must not traverse conntrack (nat-dht.md §A3 pitfall 2).
			"net.bridge.bridge-nf-call-iptables=0",
			"net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0")
	}
	if n.Kind == KindRouter && n.Options.UDPTimeout > 0 {
		s := int(n.Options.UDPTimeout / time.Second)
		sysctls = append(sysctls,
			fmt.Sprintf("net.netfilter.nf_conntrack_udp_timeout=%d", s),
			fmt.Sprintf("net.netfilter.nf_conntrack_udp_timeout_stream=%d", s))
	}
	args := append([]string{"netns", "exec", ns, sysctlPath(), "-qw"}, sysctls...)
	if _, err := runCmd(ctx, nil, ipPath(), args...); err != nil {
		return fmt.Errorf("sysctl on %s: %w", n.Name, err)
	}
	if n.Kind != KindRouter {
		return nil
	}
	rules := n.Options.ruleset(n.Addrs[0], n.LAN, l.probeEndpoints())
	if _, err := runCmd(ctx, []byte(rules), ipPath(), "netns", "exec", ns, nftPath(), "-f", "-"); err != nil {
		return fmt.Errorf("nftables on %s: %w\nruleset:\n%s", n.Name, err, rules)
	}
	if r := n.Options.RateKbit; r > 0 {
		// burst: at least 16 KiB and 10 ms worth of the rate.
		burst := max(16<<10, r*1000/8/100)
		var tc bytes.Buffer
		for _, dev := range []string{"wan0", "lan0"} {
			fmt.Fprintf(&tc, "qdisc add dev %s root tbf rate %dkbit burst %d latency 50ms\n", dev, r, burst)
		}
		if _, err := runCmd(ctx, tc.Bytes(), tcPath(), "-n", ns, "-b", "-"); err != nil {
			return fmt.Errorf("tc on %s: %w", n.Name, err)
		}
	}
	return nil
}

// waitLinks waits until every veth has carrier and every bridge port
// forwards. The kernel may defer carrier changes by up to a second when many
// happen at once (linkwatch), and a port that is not yet forwarding silently
// drops the lab's first packets.
func (l *Lab) waitLinks(ctx context.Context, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	return parallel(ctx, len(l.Nodes), 4, func(ctx context.Context, i int) error {
		ns := l.NS(l.Nodes[i].Name)
		for {
			out, err := runCmd(ctx, nil, ipPath(), "-n", ns, "-d", "-o", "link", "show", "type", "veth")
			if err != nil {
				return fmt.Errorf("links of %s: %w", l.Nodes[i].Name, err)
			}
			notReady := ""
			for _, line := range strings.Split(string(out), "\n") {
				if line == "" {
					continue
				}
				if strings.Contains(line, "NO-CARRIER") ||
					strings.Contains(line, "bridge_slave state ") && !strings.Contains(line, "bridge_slave state forwarding") {
					notReady = line
					break
				}
			}
			if notReady == "" {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("link on %s not ready: %.200s", l.Nodes[i].Name, notReady)
			case <-time.After(25 * time.Millisecond): // poll the link state
			}
		}
	})
}

// parallel runs f(0..n-1) with at most width at once and returns the first error.
func parallel(ctx context.Context, n, width int, f func(context.Context, int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, width)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := f(ctx, i); err != nil {
				errs <- err
				cancel()
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// Start runs argv inside host's namespace and returns once the process is
// inside it. The process runs until it exits, is stopped, or the lab closes
// (ctx is not tied to its lifetime).
func (l *Lab) Start(ctx context.Context, host string, argv []string, opts StartOptions) (*Proc, error) {
	if _, ok := l.Node(host); !ok {
		return nil, fmt.Errorf("natlab: no host %q in lab %s", host, l.Name)
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, errors.New("natlab: lab is closed")
	}
	l.mu.Unlock()
	p, err := startInNamespace(l.NS(host), host, argv, opts)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p, nil
}

// Run runs argv inside host's namespace to completion and returns its stdout.
// A non-zero exit is an *ExitError carrying stderr.
func (l *Lab) Run(ctx context.Context, host string, argv ...string) (string, error) {
	p, err := l.Start(ctx, host, argv, StartOptions{})
	if err != nil {
		return "", err
	}
	_ = p.CloseStdin()
	if err := p.Wait(ctx); err != nil {
		return p.Stdout(), &ExitError{Host: host, Argv: argv, Err: err, Stderr: p.Stderr()}
	}
	return p.Stdout(), nil
}

// StartAgent starts an agent subcommand (see AgentMain) on host.
func (l *Lab) StartAgent(ctx context.Context, host string, args []string, opts StartOptions) (*Proc, error) {
	argv, err := l.launcher.argv(args)
	if err != nil {
		return nil, err
	}
	opts.Env = append(slices.Clone(l.launcher.Env), opts.Env...)
	return l.Start(ctx, host, argv, opts)
}

// RunAgent runs an agent subcommand to completion and returns its stdout.
func (l *Lab) RunAgent(ctx context.Context, host string, args ...string) (string, error) {
	p, err := l.StartAgent(ctx, host, args, StartOptions{})
	if err != nil {
		return "", err
	}
	_ = p.CloseStdin()
	if err := p.Wait(ctx); err != nil {
		return p.Stdout(), &ExitError{Host: host, Argv: args, Err: err, Stderr: p.Stderr()}
	}
	return p.Stdout(), nil
}

// StartProbeServer starts a probe server on a public host with ≥ 2 addresses
// and waits until it is listening.
func (l *Lab) StartProbeServer(ctx context.Context, host string, opts StartOptions) (*Proc, error) {
	n, ok := l.Node(host)
	if !ok || len(n.Addrs) < 2 {
		return nil, fmt.Errorf("natlab: probe server host %q needs two addresses", host)
	}
	p, err := l.StartAgent(ctx, host, []string{"probe-server",
		"-addrs", n.Addrs[0].String() + "," + n.Addrs[1].String(),
		"-ports", fmt.Sprintf("%d,%d", ProbePort, ProbeAltPort)}, opts)
	if err != nil {
		return nil, err
	}
	if err := waitReady(ctx, p, 10*time.Second); err != nil {
		return nil, fmt.Errorf("probe server on %s: %w", host, err)
	}
	return p, nil
}

// waitReady waits for an agent's "ready" line.
func waitReady(ctx context.Context, p *Proc, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		line, err := p.NextLine(ctx)
		if err != nil {
			p.Stop(time.Second)
			return fmt.Errorf("not ready: %w; stderr: %s", err, strings.TrimSpace(p.Stderr()))
		}
		if line == "ready" {
			return nil
		}
	}
}

// Close stops the lab's processes, removes its namespaces and its state file.
// It is safe to call more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	procs := slices.Clone(l.procs)
	l.mu.Unlock()
	for _, p := range procs {
		_ = p.cmd.Process.Kill()
	}
	err := Teardown(context.Background(), l.ID)
	for _, p := range procs {
		<-p.done
	}
	if rmErr := removeRunFiles(l.stateDir, l.ID); rmErr != nil && err == nil {
		err = rmErr
	}
	return err
}

// removeRunFiles deletes the state file and per-run directories of run id.
func removeRunFiles(dir, id string) error {
	extra, _ := filepath.Glob(filepath.Join(dir, id+"-*"))
	for _, p := range extra {
		_ = os.RemoveAll(p)
	}
	if err := os.Remove(filepath.Join(dir, id+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Namespaces lists the existing lab namespaces whose run id is id ("" = all runs).
func Namespaces(id string) ([]string, error) {
	ents, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		name := e.Name()
		rid, ok := runIDOf(name)
		if ok && (id == "" || rid == id) {
			out = append(out, name)
		}
	}
	return out, nil
}

func runIDOf(ns string) (string, bool) {
	rest, ok := strings.CutPrefix(ns, NamePrefix)
	if !ok {
		return "", false
	}
	id, _, ok := strings.Cut(rest, "-")
	return id, ok && id != ""
}

// Teardown kills every process inside the namespaces of run id and deletes
// the namespaces (their veths and bridges go with them).
func Teardown(ctx context.Context, id string) error {
	if id == "" {
		return errors.New("natlab: empty run id")
	}
	nss, err := Namespaces(id)
	if err != nil || len(nss) == 0 {
		return err
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := pidsInNamespaces(nss)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("natlab: processes %v survive SIGKILL in run %s", pids, id)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond) // poll until the kernel has reaped them
	}
	var b bytes.Buffer
	for _, ns := range nss {
		fmt.Fprintf(&b, "netns del %s\n", ns)
	}
	// -force: continue after a namespace that vanished concurrently.
	if _, err := runCmd(ctx, b.Bytes(), ipPath(), "-force", "-b", "-"); err != nil {
		if left, _ := Namespaces(id); len(left) > 0 {
			return fmt.Errorf("natlab: delete namespaces of run %s: %w", id, err)
		}
	}
	return nil
}

// pidsInNamespaces returns the live processes whose network namespace is one
// of nss (what `ip netns pids` does, for all namespaces in one /proc pass).
func pidsInNamespaces(nss []string) []int {
	want := map[[2]uint64]bool{}
	for _, ns := range nss {
		var st syscall.Stat_t
		if syscall.Stat("/run/netns/"+ns, &st) == nil {
			want[[2]uint64{st.Dev, st.Ino}] = true
		}
	}
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+e.Name()+"/ns/net", &st) != nil {
			continue
		}
		if want[[2]uint64{st.Dev, st.Ino}] {
			pids = append(pids, pid)
		}
	}
	return pids
}

// ProcessesOf returns the pids of processes inside the namespaces of run id.
func ProcessesOf(id string) []int {
	nss, _ := Namespaces(id)
	if len(nss) == 0 {
		return nil
	}
	return pidsInNamespaces(nss)
}

// procStartTime returns field 22 of /proc/<pid>/stat (start time in ticks).
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces: split after its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("natlab: bad /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("natlab: short /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// Alive reports whether the lab's owner is still running (or the lab is detached).
func (s State) Alive() bool {
	if s.Detached {
		return true
	}
	st, err := procStartTime(s.OwnerPID)
	return err == nil && st == s.OwnerStart
}

// ReadStates returns the state of every lab recorded on this machine.
func ReadStates() ([]State, error) { return readStates(StateDir) }

func readStates(dir string) ([]State, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []State
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		var st State
		if json.Unmarshal(b, &st) != nil || st.ID == "" {
			continue
		}
		out = append(out, st)
	}
	return out, nil
}

func findState(dir, name string) (State, error) {
	sts, err := readStates(dir)
	if err != nil {
		return State{}, err
	}
	for _, st := range sts {
		if st.Name == name && st.Alive() {
			return st, nil
		}
	}
	return State{}, fmt.Errorf("natlab: no lab named %q is up", name)
}

// CleanStale removes namespaces and state files of runs whose owner is gone
// (crashed or killed labs). Live and detached labs are left alone. It returns
// the removed namespaces.
func CleanStale(ctx context.Context) ([]string, error) {
	dir := StateDir
	// Namespaces are listed before state files are read: a lab writes its
	// state before creating namespaces, so a namespace seen here has its state
	// visible below unless its run really is stale.
	nss, err := Namespaces("")
	if err != nil {
		return nil, err
	}
	sts, err := readStates(dir)
	if err != nil {
		return nil, err
	}
	alive := map[string]bool{}
	for _, st := range sts {
		if st.Alive() {
			alive[st.ID] = true
		} else {
			_ = removeRunFiles(dir, st.ID)
		}
	}
	var removed []string
	done := map[string]bool{}
	for _, ns := range nss {
		id, _ := runIDOf(ns)
		if alive[id] || done[id] {
			continue
		}
		done[id] = true
		gone, _ := Namespaces(id)
		if err := Teardown(ctx, id); err != nil {
			return removed, err
		}
		removed = append(removed, gone...)
	}
	return removed, nil
}

// Attach finds the live lab called name (or the only live lab if name is
// empty) so that another process can run commands in it or tear it down.
func Attach(name string, launcher Launcher) (*Lab, error) {
	dir := StateDir
	sts, err := readStates(dir)
	if err != nil {
		return nil, err
	}
	var match []State
	for _, st := range sts {
		if st.Alive() && (name == "" || st.Name == name) {
			match = append(match, st)
		}
	}
	switch {
	case len(match) == 0 && name == "":
		return nil, errors.New("natlab: no lab is up (start one with `up`)")
	case len(match) == 0:
		return nil, fmt.Errorf("natlab: no lab named %q is up", name)
	case len(match) > 1:
		var names []string
		for _, m := range match {
			names = append(names, m.Name)
		}
		return nil, fmt.Errorf("natlab: several labs are up (%s): choose one with --lab", strings.Join(names, ", "))
	}
	return &Lab{State: match[0], stateDir: dir, launcher: launcher, log: io.Discard}, nil
}

// Down stops a lab found by Attach: it signals the owner (which tears down
// and exits), waits for it up to wait, then removes whatever is left.
func Down(ctx context.Context, l *Lab, wait time.Duration) error {
	if !l.Detached && l.OwnerPID != os.Getpid() {
		_ = syscall.Kill(l.OwnerPID, syscall.SIGTERM)
		deadline := time.Now().Add(wait)
		for l.State.Alive() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond) // poll the owner's exit
		}
	}
	if err := Teardown(ctx, l.ID); err != nil {
		return err
	}
	return removeRunFiles(l.stateDir, l.ID)
}

// runCmd runs a root-namespace command with optional stdin and returns stdout.
func runCmd(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

func lookTool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		if p := filepath.Join(d, name); isExecutable(p) {
			return p
		}
	}
	return ""
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

func toolOr(name string) string {
	if p := lookTool(name); p != "" {
		return p
	}
	return name
}

func ipPath() string     { return toolOr("ip") }
func nftPath() string    { return toolOr("nft") }
func tcPath() string     { return toolOr("tc") }
func sysctlPath() string { return toolOr("sysctl") }
