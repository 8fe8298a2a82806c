package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/elacity/pc2/core/config"
	"github.com/elacity/pc2/core/host"
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
	for _, p := range procs {
		if err := p.start(self, filepath.Join(dataRoot, p.name), out); err != nil {
			return err
		}
	}

	startCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for _, p := range procs {
		select {
		case p.info = <-p.ready:
		case err := <-p.done:
			return fmt.Errorf("%s exited before it was ready: %v", p.name, err)
		case <-startCtx.Done():
			if ctx.Err() != nil {
				return nil // interrupted while starting
			}
			return fmt.Errorf("%s was not ready within %v", p.name, timeout)
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

func (p *devProc) start(self, dataDir string, out io.Writer) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	p.cmd = exec.Command(self, string(p.role), "--dev", "--data", dataDir)
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
	for _, k := range []string{"registry.api", "sni.listen", "http.listen", "dns.listen"} {
		if v := super.Extra[k]; v != "" {
			fmt.Fprintf(&b, "  %-13s %s\n", k, v)
		}
	}
	fmt.Fprintf(&b, "  %-13s %s\n", "metrics", super.Metrics)
	self := os.Args[0]
	fmt.Fprintf(&b, "\nTry:\n")
	fmt.Fprintf(&b, "  %s name register alice.pc2.localhost --target 127.0.0.1:8443 --registry %s --data %s\n", self, super.Extra["registry.api"], alice.info.DataDir)
	fmt.Fprintf(&b, "  %s name list --registry %s --data %s\n", self, super.Extra["registry.api"], alice.info.DataDir)
	if _, dnsPort, err := net.SplitHostPort(super.Extra["dns.listen"]); err == nil {
		fmt.Fprintf(&b, "  dig @127.0.0.1 -p %s alice.pc2.localhost +short\n", dnsPort)
	}
	fmt.Fprintf(&b, "  curl -s %s | grep ^pc2_\n", super.Metrics)
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
