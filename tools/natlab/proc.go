package natlab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// maxCapture bounds the output kept per stream of a lab process; older
// output is discarded (the tail is what explains a failure).
const maxCapture = 1 << 20

// Launcher tells the lab how to start an agent: the agent arguments are
// appended to Path Args... and the process gets Env added to its environment.
// The CLI uses its own executable and hidden "agent" subcommand; tests use the
// test binary with an environment variable that TestMain checks.
type Launcher struct {
	Path string
	Args []string
	Env  []string
}

func (l Launcher) argv(agentArgs []string) ([]string, error) {
	if l.Path == "" {
		return nil, errors.New("natlab: no agent launcher configured")
	}
	argv := append([]string{l.Path}, l.Args...)
	return append(argv, agentArgs...), nil
}

// Proc is a process running inside a lab namespace. Its stdout and stderr are
// captured (bounded); stdout is also readable line by line.
type Proc struct {
	Host string
	Argv []string

	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *capture
	errb  *capture
	done  chan struct{}
	err   error // valid after done
}

// capture is a bounded output buffer that also queues complete lines.
type capture struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	dropped int
	lines   []string
	next    int
	notify  chan struct{}
	eof     bool
}

func newCapture() *capture { return &capture{notify: make(chan struct{})} }

func (c *capture) feed(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for sc.Scan() {
		line := sc.Text()
		c.mu.Lock()
		c.buf.WriteString(line)
		c.buf.WriteByte('\n')
		if c.buf.Len() > maxCapture {
			n := c.buf.Len() - maxCapture
			c.buf.Next(n)
			c.dropped += n
		}
		if len(c.lines)-c.next < 4096 { // bound unread lines
			c.lines = append(c.lines, line)
		}
		close(c.notify)
		c.notify = make(chan struct{})
		c.mu.Unlock()
	}
	// Drain whatever is left (overlong lines) so the child never blocks.
	_, _ = io.Copy(io.Discard, r)
	c.mu.Lock()
	c.eof = true
	close(c.notify)
	c.notify = make(chan struct{})
	c.mu.Unlock()
}

func (c *capture) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dropped > 0 {
		return fmt.Sprintf("[%d bytes dropped]\n%s", c.dropped, c.buf.String())
	}
	return c.buf.String()
}

func (c *capture) nextLine(ctx context.Context) (string, error) {
	for {
		c.mu.Lock()
		if c.next < len(c.lines) {
			l := c.lines[c.next]
			c.next++
			c.mu.Unlock()
			return l, nil
		}
		if c.eof {
			c.mu.Unlock()
			return "", io.EOF
		}
		ch := c.notify
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// StartOptions tune Start.
type StartOptions struct {
	Env []string
	// Detach lets the process outlive the lab owner (no parent-death signal).
	Detach bool
}

// startInNamespace runs argv in namespace ns through `ip netns exec`.
func startInNamespace(ns, host string, argv []string, opts StartOptions) (*Proc, error) {
	full := append([]string{"netns", "exec", ns}, argv...)
	cmd := exec.Command(ipPath(), full...)
	cmd.Env = append(os.Environ(), opts.Env...)
	// Own process group: a terminal's Ctrl-C reaches only the lab owner, which
	// then tears everything down in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if !opts.Detach {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	p := &Proc{Host: host, Argv: argv, cmd: cmd, out: newCapture(), errb: newCapture(), done: make(chan struct{})}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	p.stdin = stdin
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s on %s: %w", strings.Join(argv, " "), host, err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.out.feed(stdout) }()
	go func() { defer wg.Done(); p.errb.feed(stderr) }()
	go func() {
		wg.Wait() // pipes must be drained before Wait closes them
		p.err = cmd.Wait()
		close(p.done)
	}()
	// Return only once the process is inside the namespace: until then it
	// is `ip` in the root namespace, invisible to a teardown that looks for
	// processes by namespace.
	if err := waitInNamespace(ns, p, 5*time.Second); err != nil {
		_ = cmd.Process.Kill()
		<-p.done
		return nil, fmt.Errorf("start %s on %s: %w", strings.Join(argv, " "), host, err)
	}
	return p, nil
}

func waitInNamespace(ns string, p *Proc, limit time.Duration) error {
	var want syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+ns, &want); err != nil {
		return fmt.Errorf("namespace %s: %w", ns, err)
	}
	deadline := time.Now().Add(limit)
	path := fmt.Sprintf("/proc/%d/ns/net", p.Pid())
	for {
		var st syscall.Stat_t
		if syscall.Stat(path, &st) == nil && st.Dev == want.Dev && st.Ino == want.Ino {
			return nil
		}
		select {
		case <-p.done:
			return nil // exited already (its error is reported by Wait)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process did not enter namespace %s", ns)
		}
		time.Sleep(time.Millisecond) // poll: the switch happens within microseconds
	}
}

// Pid is the process id (of the command itself: `ip netns exec` execs it).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Stdout returns the captured standard output so far.
func (p *Proc) Stdout() string { return p.out.String() }

// Stderr returns the captured standard error so far.
func (p *Proc) Stderr() string { return p.errb.String() }

// NextLine returns the next unread line of standard output.
func (p *Proc) NextLine(ctx context.Context) (string, error) { return p.out.nextLine(ctx) }

// WriteLine writes one line to the process's standard input.
func (p *Proc) WriteLine(s string) error {
	_, err := io.WriteString(p.stdin, s+"\n")
	return err
}

// CloseStdin closes the process's standard input.
func (p *Proc) CloseStdin() error { return p.stdin.Close() }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit and returns its exit error. If ctx ends
// first, the process is killed.
func (p *Proc) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		_ = p.cmd.Process.Kill()
		<-p.done
		return ctx.Err()
	}
}

// Stop sends SIGTERM, waits up to grace, then kills, and waits for the exit.
func (p *Proc) Stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// ExitError describes a lab command that failed.
type ExitError struct {
	Host   string
	Argv   []string
	Err    error
	Stderr string
}

func (e *ExitError) Error() string {
	s := strings.TrimSpace(e.Stderr)
	if len(s) > 2000 {
		s = "..." + s[len(s)-2000:]
	}
	return fmt.Sprintf("%s on %s: %v: %s", strings.Join(e.Argv, " "), e.Host, e.Err, s)
}

func (e *ExitError) Unwrap() error { return e.Err }
