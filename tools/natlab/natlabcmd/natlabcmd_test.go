package natlabcmd_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/elacity/pc2/tools/natlab"
	"github.com/elacity/pc2/tools/natlab/natlabcmd"
)

// mainEnv makes the test binary behave as the CLI (`natlab <args>`), so the
// tests run real `up` processes and agents without a pre-built pc2 binary.
const mainEnv = "PC2_NATLABCMD_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) == "1" {
		err := natlabcmd.Run(context.Background(), os.Args[1:], os.Stdout, os.Stderr)
		var ee *natlabcmd.ExitError
		switch {
		case errors.As(err, &ee):
			os.Exit(ee.Code)
		case err != nil:
			fmt.Fprintln(os.Stderr, "natlab:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func cli(t *testing.T) *natlabcmd.Command {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return &natlabcmd.Command{Agent: natlab.Launcher{Path: exe, Args: []string{"agent"}, Env: []string{mainEnv + "=1"}}}
}

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := cli(t).Run(ctx, args, &out, &errb)
	return out.String() + errb.String(), err
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces and nftables (run `sudo go test ./tools/natlab/...`)")
	}
}

func TestHelp(t *testing.T) {
	out, err := run(t, "--help")
	if err != nil || !strings.Contains(out, "classify [topology]") {
		t.Fatalf("help: %v\n%s", err, out)
	}
	for _, c := range []string{"up", "down", "exec", "classify", "punch", "matrix", "list", "install-deps"} {
		out, err := run(t, c, "--help")
		if err != nil || !strings.Contains(out, "usage: natlab "+c) {
			t.Errorf("%s --help: %v\n%s", c, err, out)
		}
	}
	if _, err := run(t, "frobnicate"); err == nil {
		t.Error("unknown command accepted")
	}
	if _, err := run(t, "up", "nosuchtopology"); err == nil || !strings.Contains(err.Error(), "unknown topology") {
		t.Errorf("unknown topology: %v", err)
	}
	if _, err := run(t, "up", "pair", "--a", "cone-of-shame"); err == nil || !strings.Contains(err.Error(), "unknown NAT profile") {
		t.Errorf("bad NAT spec: %v", err)
	}
}

func TestList(t *testing.T) {
	out, err := run(t, "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"full-cone", "addr-restricted", "port-restricted", "symmetric", "matrix", "double", "loss=nth:N"} {
		if !strings.Contains(out, want) {
			t.Errorf("list lacks %q:\n%s", want, out)
		}
	}
}

// upProcess runs `natlab up` as a real process and waits until the lab is up.
type upProcess struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan error
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func startUp(t *testing.T, args ...string) *upProcess {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"up"}, args...)...)
	cmd.Env = append(os.Environ(), mainEnv+"=1")
	p := &upProcess{cmd: cmd, out: &lockedBuffer{}, done: make(chan error, 1)}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		once := false
		for sc.Scan() {
			fmt.Fprintln(p.out, sc.Text())
			if !once && strings.Contains(sc.Text(), " is up") {
				once = true
				close(ready)
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
	})
	select {
	case <-ready:
	case err := <-p.done:
		t.Fatalf("natlab up exited: %v\n%s", err, p.out.String())
	case <-time.After(time.Minute):
		t.Fatalf("natlab up not ready:\n%s", p.out.String())
	}
	return p
}

func (p *upProcess) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-p.done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("natlab up did not exit:\n%s", p.out.String())
		return nil
	}
}

func labID(t *testing.T, name string) string {
	t.Helper()
	l, err := natlab.Attach(name, natlab.Launcher{})
	if err != nil {
		t.Fatal(err)
	}
	return l.ID
}

func assertGone(t *testing.T, id string) {
	t.Helper()
	if nss, err := natlab.Namespaces(id); err != nil || len(nss) > 0 {
		t.Errorf("run %s left namespaces %v (err %v)", id, nss, err)
	}
	if pids := natlab.ProcessesOf(id); len(pids) > 0 {
		t.Errorf("run %s left processes %v", id, pids)
	}
	sts, _ := natlab.ReadStates()
	for _, st := range sts {
		if st.ID == id {
			t.Errorf("run %s left its state file", id)
		}
	}
}

// TestUpExecClassifySIGINT: a researcher's session. `up` in one process;
// exec, classify and punch from "another shell"; Ctrl-C (SIGINT) on `up`
// removes every namespace and process.
func TestUpExecClassifySIGINT(t *testing.T) {
	needRoot(t)
	name := fmt.Sprintf("cmdtest-%d", os.Getpid())
	up := startUp(t, "pair", "--a", "fc", "--b", "sym", "--hosts", "1", "--name", name)
	id := labID(t, name)
	if nss, _ := natlab.Namespaces(id); len(nss) != 6 {
		t.Fatalf("pair with one host per LAN should have 6 namespaces, got %v", nss)
	}

	// A second `up` with the same name is refused.
	if out, err := run(t, "up", "pair", "--name", name); err == nil || !strings.Contains(err.Error(), "already up") {
		t.Errorf("second up with the same name: %v\n%s", err, out)
	}

	out, err := run(t, "exec", "--lab", name, "a1", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	if err != nil || !strings.Contains(out, "10.0.1.2/24") {
		t.Fatalf("exec: %v\n%s", err, out)
	}
	_, err = run(t, "exec", "--lab", name, "a1", "--", "sh", "-c", "exit 7")
	var ee *natlabcmd.ExitError
	if !errors.As(err, &ee) || ee.Code != 7 {
		t.Fatalf("exec exit status: %v", err)
	}

	out, err = run(t, "classify", "--lab", name)
	if err != nil {
		t.Fatalf("classify: %v\n%s", err, out)
	}
	for _, want := range []string{"a1", "EIM", "EIF", "b1", "APDM", "APDF"} {
		if !strings.Contains(out, want) {
			t.Errorf("classify output lacks %q:\n%s", want, out)
		}
	}
	t.Logf("classify:\n%s", out)

	out, err = run(t, "punch", "--lab", name, "a1", "b1")
	if err != nil || !strings.Contains(out, "\npunched") {
		t.Fatalf("punch full cone ↔ symmetric: %v\n%s", err, out)
	}

	if err := up.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := up.wait(t); err != nil {
		t.Fatalf("natlab up after SIGINT: %v\n%s", err, up.out.String())
	}
	if !strings.Contains(up.out.String(), "removed") {
		t.Errorf("up did not report removal:\n%s", up.out.String())
	}
	assertGone(t, id)
}

// TestDownFromAnotherShell: `down --lab` stops a foreground `up`.
func TestDownFromAnotherShell(t *testing.T) {
	needRoot(t)
	name := fmt.Sprintf("cmddown-%d", os.Getpid())
	up := startUp(t, "double", "--name", name)
	id := labID(t, name)
	out, err := run(t, "down", "--lab", name)
	if err != nil || !strings.Contains(out, "removed") {
		t.Fatalf("down: %v\n%s", err, out)
	}
	if err := up.wait(t); err != nil {
		t.Fatalf("natlab up after down: %v\n%s", err, up.out.String())
	}
	assertGone(t, id)
}

// TestDetachedUpAndDown: a detached lab outlives its `up` and is not
// considered stale; `down` removes it.
func TestDetachedUpAndDown(t *testing.T) {
	needRoot(t)
	name := fmt.Sprintf("cmddetach-%d", os.Getpid())
	out, err := run(t, "up", "pair", "--detach", "--name", name, "--hosts", "1")
	if err != nil {
		t.Fatalf("up --detach: %v\n%s", err, out)
	}
	id := labID(t, name)
	t.Cleanup(func() { _ = natlab.Teardown(context.Background(), id) })
	if _, err := natlab.CleanStale(context.Background()); err != nil {
		t.Fatal(err)
	}
	if nss, _ := natlab.Namespaces(id); len(nss) == 0 {
		t.Fatal("CleanStale removed a detached lab")
	}
	if pids := natlab.ProcessesOf(id); len(pids) == 0 {
		t.Fatal("detached lab has no probe server running")
	}
	out, err = run(t, "down", "--lab", name)
	if err != nil {
		t.Fatalf("down: %v\n%s", err, out)
	}
	assertGone(t, id)
}

// TestClassifyTopology: `classify <topology>` builds, classifies and removes
// a lab in one go, and checks observed against declared behaviour.
func TestClassifyTopology(t *testing.T) {
	needRoot(t)
	out, err := run(t, "classify", "pair", "--a", "arc,hairpin", "--b", "prc", "--hosts", "1")
	if err != nil {
		t.Fatalf("classify pair: %v\n%s", err, out)
	}
	if strings.Contains(out, "MISMATCH") || !strings.Contains(out, "ADF") || !strings.Contains(out, "APDF") {
		t.Fatalf("classify pair output:\n%s", out)
	}
	t.Logf("classify pair --a arc,hairpin --b prc:\n%s", out)
	m := regexp.MustCompile(`\(run ([0-9a-f]+)\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("classify did not log its run id:\n%s", out)
	}
	assertGone(t, m[1])
}
