//go:build linux

package sniproxy_test

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/elacity/pc2/gateway/clienthello/hellotest"
	"github.com/elacity/pc2/gateway/sniproxy"
)

const (
	spliceChildEnv = "SNIPROXY_SPLICE_CHILD"
	spliceDown     = 48 << 20
	spliceUp       = 16 << 20
)

// TestRelayUsesSplice proves the relay moves bytes with splice(2): it
// re-runs itself under strace, pushes 64 MiB through the proxy and sums the
// bytes that splice calls returned. Each relayed byte is spliced twice
// (socket to pipe, pipe to socket); a user-space copy would show none.
func TestRelayUsesSplice(t *testing.T) {
	if mode := os.Getenv(spliceChildEnv); mode != "" {
		goroutineMode = mode == "goroutines"
		bulkThroughProxy(t)
		return
	}
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace not installed: cannot observe splice(2) (apt-get install strace)")
	}
	for _, mode := range []string{"loops", "goroutines"} {
		t.Run(mode, func(t *testing.T) { spliceUnderStrace(t, strace, mode) })
	}
}

func spliceUnderStrace(t *testing.T, strace, mode string) {
	trace := filepath.Join(t.TempDir(), "trace")
	cmd := exec.Command(strace, "-f", "-qq", "-e", "trace=splice", "-o", trace,
		os.Args[0], "-test.run=^TestRelayUsesSplice$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), spliceChildEnv+"="+mode)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if bytes.Contains(out, []byte("Operation not permitted")) || bytes.Contains(out, []byte("PTRACE")) {
			t.Skipf("ptrace not permitted here: %s", out)
		}
		t.Fatalf("child under strace: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("--- PASS: TestRelayUsesSplice")) {
		t.Fatalf("child did not pass:\n%s", out)
	}
	f, err := os.Open(trace)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// "splice(...) = N", or "<... splice resumed>...) = N" when strace -f
	// had to split the line between threads.
	ret := regexp.MustCompile(`splice(\(| resumed>).*\)\s+=\s+(\d+)`)
	var spliced, calls int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := ret.FindSubmatch(sc.Bytes()); m != nil {
			n, _ := strconv.ParseInt(string(m[2]), 10, 64)
			spliced += n
			calls++
		}
	}
	want := int64(2 * (spliceDown + spliceUp - 64<<10)) // the hello and its read-ahead are written normally
	t.Logf("splice calls %d, bytes %d (relayed payload %d)", calls, spliced, spliceDown+spliceUp)
	if spliced < want {
		t.Fatalf("splice moved %d bytes, want >= %d: the relay is copying in user space", spliced, want)
	}
}

func bulkThroughProxy(t *testing.T) {
	e := startProxy(t, sniproxy.Config{}, false)
	conns := rawBackend(e.backend)
	hello := hellotest.ChromeLike(testName)
	c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(hello); err != nil {
		t.Fatal(err)
	}
	b := <-conns
	defer b.Close()
	_ = b.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.ReadFull(b, make([]byte, len(hello))); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	errc := make(chan error, 2)
	go func() { // backend → client
		for i := 0; i < spliceDown/len(chunk); i++ {
			if _, err := b.Write(chunk); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	go func() { // client → backend
		for i := 0; i < spliceUp/len(chunk); i++ {
			if _, err := c.Write(chunk); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	if _, err := io.CopyN(io.Discard, c, spliceDown); err != nil {
		t.Fatalf("client read: %v", err)
	}
	if _, err := io.CopyN(io.Discard, b, spliceUp); err != nil {
		t.Fatalf("backend read: %v", err)
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

func countPipes(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && len(target) > 5 && target[:5] == "pipe:" {
			n++
		}
	}
	return n
}

// TestIdleConnectionsHoldNoPipe checks that relayed but idle connections
// hold no splice pipes (io.Copy would keep one per direction: four
// descriptors per connection).
func TestIdleConnectionsHoldNoPipe(t *testing.T) {
	const conns = 50
	e := startProxy(t, sniproxy.Config{}, false)
	backends := rawBackend(e.backend)
	hello := hellotest.ChromeLike(testName)
	before := countPipes(t)
	for i := range conns {
		c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(hello); err != nil {
			t.Fatal(err)
		}
		b := <-backends
		defer b.Close()
		_ = b.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(b, make([]byte, len(hello))); err != nil {
			t.Fatalf("conn %d: %v", i, err)
		}
		// One burst each way so both directions have spliced once.
		if _, err := b.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}
	// Go pools a few pipes for reuse; holding them per connection would
	// show 4*conns descriptors.
	if got := countPipes(t) - before; got >= conns {
		t.Fatalf("%d idle relayed connections hold %d pipe descriptors", conns, got)
	}
}

func init() {
	behaviourTests["IdleHoldsNoPipe"] = TestIdleConnectionsHoldNoPipe
}
