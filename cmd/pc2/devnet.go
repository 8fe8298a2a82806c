package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/elacity/pc2/core/config"
	"github.com/elacity/pc2/core/host"
	"github.com/elacity/pc2/gateway/testcert"
)

func devnetCommand() *command {
	var (
		dataRoot string
		nodes    int
		timeout  time.Duration
	)
	return &command{
		name:    "devnet",
		summary: "run a local network on loopback: a supernode and two nodes",
		help: `Starts a supernode and user nodes as separate pc2 processes on loopback,
waits until each is ready, prints their ids and endpoints and what to try,
and stops them all cleanly on Ctrl-C. Identities persist in the data
directory, so ids stay the same from run to run.`,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&dataRoot, "data", filepath.Join(os.TempDir(), fmt.Sprintf("pc2-devnet-%d", os.Getuid())), "directory for the processes' data")
			fs.IntVar(&nodes, "nodes", 2, "number of user nodes (1-8)")
			fs.DurationVar(&timeout, "start-timeout", 30*time.Second, "how long to wait for every process to be ready")
		},
		run: func(ctx context.Context, std *stdio, _ *flag.FlagSet, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			if nodes < 1 || nodes > len(nodeNames) {
				return usageError{fmt.Sprintf("--nodes must be 1-%d", len(nodeNames))}
			}
			return runDevnet(ctx, std, dataRoot, nodes, timeout)
		},
	}
}

var nodeNames = []string{"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"}

type devProc struct {
	name  string
	role  config.Role
	cmd   *exec.Cmd
	info  host.Info
	ready chan host.Info
	done  chan error
}

func runDevnet(ctx context.Context, std *stdio, dataRoot string, nodes int, timeout time.Duration) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	out := &lockedWriter{w: std.out}
	procs := []*devProc{{name: "supernode", role: config.RoleSupernode}}
	for _, n := range nodeNames[:nodes] {
		procs = append(procs, &devProc{name: n, role: config.RoleNode})
	}
	defer stopAll(procs, std)

	startCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	wait := func(p *devProc) error {
		select {
		case p.info = <-p.ready:
			return nil
		case err := <-p.done:
			return fmt.Errorf("%s exited before it was ready: %v", p.name, err)
		case <-startCtx.Done():
			if ctx.Err() != nil {
				return errInterrupted
			}
			return fmt.Errorf("%s was not ready within %v", p.name, timeout)
		}
	}
	// The supernode first: alice's tunnel needs its endpoint and id.
	super := procs[0]
	superCfg, err := writeDevConfig(filepath.Join(dataRoot, super.name), devSupernodeConfig)
	if err != nil {
		return err
	}
	if err := super.start(self, filepath.Join(dataRoot, super.name), out, "--config", superCfg); err != nil {
		return err
	}
	if err := wait(super); err != nil {
		if errors.Is(err, errInterrupted) {
			return nil
		}
		return err
	}
	demo, err := startDemoSite()
	if err != nil {
		return err
	}
	defer demo.Close()
	for i, p := range procs[1:] {
		dir := filepath.Join(dataRoot, p.name)
		body := peerConfig(super.info)
		if i == 0 { // alice serves the demo page through her tunnel
			body += tunnelConfig(super.info, demo.Addr().String())
		}
		cfg, err := writeDevConfig(dir, body)
		if err != nil {
			return err
		}
		extra := []string{"--config", cfg}
		if err := p.start(self, dir, out, extra...); err != nil {
			return err
		}
	}
	for _, p := range procs[1:] {
		if err := wait(p); err != nil {
			if errors.Is(err, errInterrupted) {
				return nil
			}
			return err
		}
	}
	printDevnet(out, procs, dataRoot)

	exited := make(chan string, len(procs))
	for _, p := range procs {
		go func() {
			err := <-p.done
			p.done <- err // leave it for stopAll
			exited <- fmt.Sprintf("%s exited: %v", p.name, err)
		}()
	}
	select {
	case <-ctx.Done():
		fmt.Fprintln(out, "devnet: stopping")
		return nil
	case msg := <-exited:
		return errors.New(msg)
	}
}

func (p *devProc) start(self, dataDir string, out io.Writer, extra ...string) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	p.cmd = exec.Command(self, append([]string{string(p.role), "--dev", "--data", dataDir}, extra...)...)
	p.cmd.Env = append(os.Environ(), "PC2_READY_FD=3")
	p.cmd.ExtraFiles = []*os.File{w}
	p.cmd.Stdout = &prefixWriter{prefix: fmt.Sprintf("%-9s | ", p.name), w: out}
	p.cmd.Stderr = p.cmd.Stdout
	p.cmd.SysProcAttr = childProcAttr()
	if err := p.cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	w.Close()
	p.ready = make(chan host.Info, 1)
	p.done = make(chan error, 1)
	go func() {
		defer r.Close()
		line, err := bufio.NewReader(io.LimitReader(r, 64<<10)).ReadBytes('\n')
		var info host.Info
		if err == nil && json.Unmarshal(line, &info) == nil {
			p.ready <- info
		}
	}()
	go func() { p.done <- p.cmd.Wait() }()
	return nil
}

// stopAll sends each process one SIGTERM (they run in their own process
// group, so the terminal's Ctrl-C reached only the devnet) and waits for a
// drain; whatever is still running after that is killed.
func stopAll(procs []*devProc, std *stdio) {
	for _, p := range procs {
		if p.cmd != nil && p.cmd.Process != nil {
			p.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	deadline := time.After(10 * time.Second)
	for _, p := range procs {
		if p.done == nil {
			continue
		}
		select {
		case <-p.done:
		case <-deadline:
			fmt.Fprintf(std.err, "devnet: %s did not stop in time; killing it\n", p.name)
			p.cmd.Process.Kill()
			<-p.done
		}
	}
}

func printDevnet(w io.Writer, procs []*devProc, dataRoot string) {
	var b bytes.Buffer
	super, alice := procs[0].info, procs[1]
	fmt.Fprintf(&b, "\nPC2 devnet is up (data in %s)\n\n", dataRoot)
	for _, p := range procs {
		fmt.Fprintf(&b, "  %-9s %-9s %s\n", p.name, p.role, p.info.DID)
	}
	fmt.Fprintf(&b, "\nSupernode endpoints:\n")
	for _, k := range []string{"registry.api", "sni.listen", "http.listen", "dns.listen", "tunnel.listen"} {
		if v := super.Extra[k]; v != "" {
			fmt.Fprintf(&b, "  %-13s %s\n", k, v)
		}
	}
	fmt.Fprintf(&b, "  %-13s %s\n", "metrics", super.Metrics)
	self := os.Args[0]
	if _, sniPort, err := net.SplitHostPort(super.Extra["sni.listen"]); err == nil {
		fmt.Fprintf(&b, "\nalice's demo page, served through her QUIC tunnel and the supernode's SNI gateway\n(self-signed certificate: accept it in the browser, or curl -k):\n")
		fmt.Fprintf(&b, "  https://alice.pc2.localhost:%s/\n", sniPort)
	}
	fmt.Fprintf(&b, "\nTry:\n")
	if len(procs) > 2 {
		bob := procs[2]
		fmt.Fprintf(&b, "  %s name register %s.pc2.localhost --target 127.0.0.1:8443 --registry %s --data %s\n", self, bob.name, super.Extra["registry.api"], bob.info.DataDir)
	}
	fmt.Fprintf(&b, "  %s name list --registry %s --data %s\n", self, super.Extra["registry.api"], alice.info.DataDir)
	if _, dnsPort, err := net.SplitHostPort(super.Extra["dns.listen"]); err == nil {
		fmt.Fprintf(&b, "  dig @127.0.0.1 -p %s alice.pc2.localhost +short\n", dnsPort)
	}
	fmt.Fprintf(&b, "  curl -s %s | grep ^pc2_\n", super.Metrics)
	if len(procs) > 2 {
		bob := procs[2]
		fmt.Fprintf(&b, "\nNode to node, found by id in the DHT: through the relay first, then direct:\n")
		fmt.Fprintf(&b, "  %s peer ping %s --dht %s@%s --listen 127.0.0.1:0\n", self, bob.info.ID, super.ID, super.Extra["dht.udp4"])
	}
	fmt.Fprintf(&b, "\nPress Ctrl-C to stop.\n\n")
	w.Write(b.Bytes())
}

// lockedWriter serialises writes from several processes' output.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// prefixWriter writes each complete line with a prefix naming its process.
type prefixWriter struct {
	prefix string
	w      io.Writer
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		line := append([]byte(p.prefix), p.buf[:i+1]...)
		if _, err := p.w.Write(line); err != nil {
			return 0, err
		}
		p.buf = p.buf[i+1:]
	}
	if len(p.buf) > 64<<10 { // a runaway line without newline
		p.w.Write(append([]byte(p.prefix), append(p.buf, '\n')...))
		p.buf = p.buf[:0]
	}
	return len(b), nil
}

var errInterrupted = errors.New("interrupted")

// startDemoSite serves alice's demo page over HTTPS on loopback with a
// self-signed certificate for alice.pc2.localhost: the page a visitor gets
// through the supernode, which never sees its key.
func startDemoSite() (net.Listener, error) {
	cert, _, err := testcert.New("alice.pc2.localhost")
	if err != nil {
		return nil, err
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		return nil, fmt.Errorf("demo site: %w", err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, "<!doctype html><title>alice on PC2</title><h1>Hello from alice</h1><p>This page comes from alice's node through its QUIC tunnel to the supernode; TLS ends at alice (you see her certificate).</p><p>Your address as alice sees it: %s</p>\n", html.EscapeString(r.RemoteAddr))
	})}
	go srv.Serve(ln)
	return ln, nil
}

// devSupernodeConfig lets every devnet node use the supernode's relay
// (by default it admits registered nodes only).
const devSupernodeConfig = `# written by pc2 devnet
relay:
  admitAll: true
`

// peerConfig makes a node reachable by id: reserved at the supernode's
// relay, its record in the supernode's DHT, answering pc2/echo.
func peerConfig(super host.Info) string {
	return fmt.Sprintf(`# written by pc2 devnet
nat:
  listen: 127.0.0.1:0
  stun: [%s]
  classify: false
dht:
  bootstrap: [%s@%s]
peer:
  relays: [%s@%s]
  echo: true
`, super.Extra["stun.listen"], super.ID, super.Extra["dht.udp4"], super.ID, super.Extra["relay.listen"])
}

// tunnelConfig is alice's part: register alice.pc2.localhost and serve it
// through a tunnel to the supernode.
func tunnelConfig(super host.Info, site string) string {
	return fmt.Sprintf(`names:
  registry: %s
  names:
    - name: alice.pc2.localhost
      target: tunnel # served only through her tunnel
tunnel-client:
  supernode: %s
  supernodeID: %s
  services:
    - name: https
      addr: %s
`, super.Extra["registry.api"], super.Extra["tunnel.listen"], super.ID, site)
}

func writeDevConfig(dir, body string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	p := filepath.Join(dir, "devnet.yaml")
	return p, os.WriteFile(p, []byte(body), 0o600)
}
