//go:build linux

package sniproxy_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/elacity/pc2/core/metrics"
	"github.com/elacity/pc2/gateway/sniproxy"
)

const sourceChildEnv = "SNIPROXY_SOURCE_CHILD"

// TestPendingPerIPv6Prefix: an IPv6 client has a whole /64 to pick source
// addresses from, so a bound per address bounds nothing; MaxPendingPerIP
// must count per /64. It runs in a network namespace of its own (the test
// binary re-runs itself under unshare) with addresses from two /64s on lo.
func TestPendingPerIPv6Prefix(t *testing.T) {
	inOwnNetns(t, "TestPendingPerIPv6Prefix", pendingPerPrefix)
}

// inOwnNetns runs child, on both data paths, in a process of its own (the
// test binary again, as test name) inside a new network namespace, which
// ends with it.
func inOwnNetns(t *testing.T, name string, child func(t *testing.T)) {
	if mode := os.Getenv(sourceChildEnv); mode != "" {
		goroutineMode = mode == "goroutines"
		child(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace with IPv6 addresses")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("unshare not installed (util-linux)")
	}
	for _, mode := range []string{"loops", "goroutines"} {
		t.Run(mode, func(t *testing.T) {
			cmd := exec.Command(unshare, "--net", os.Args[0], "-test.run=^"+name+"$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), sourceChildEnv+"="+mode)
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "--- PASS: "+name) {
				t.Fatalf("child in its own network namespace: %v\n%s", err, out)
			}
		})
	}
}

func ipCommands(t *testing.T, cmds ...[]string) {
	t.Helper()
	for _, args := range cmds {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
}

// pendingPerPrefix runs inside the new network namespace.
func pendingPerPrefix(t *testing.T) {
	ipCommands(t,
		[]string{"link", "set", "lo", "up"},
		[]string{"-6", "addr", "add", "fd00::1/64", "dev", "lo", "nodad"},
		[]string{"-6", "addr", "add", "fd00::a/128", "dev", "lo", "nodad"},
		[]string{"-6", "addr", "add", "fd00::b/128", "dev", "lo", "nodad"},
		[]string{"-6", "addr", "add", "fd00::c/128", "dev", "lo", "nodad"},
		[]string{"-6", "addr", "add", "fd00:0:0:1::a/64", "dev", "lo", "nodad"},
	)
	backend, err := net.Listen("tcp", "[fd00::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	m := sniproxy.NewMetrics(metrics.New())
	cfg := sniproxy.Config{
		Router:          staticRouter{names: map[string]sniproxy.Target{testName: {Addr: backend.Addr().String()}}},
		MaxPendingPerIP: 2,
		HelloTimeout:    time.Minute,
		Metrics:         m,
	}
	if goroutineMode {
		cfg.Dial = plainDial
	}
	srv, err := sniproxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "[fd00::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() {
		cancel()
		<-done
	}()
	from := func(src string) net.Conn {
		t.Helper()
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// Two pending hellos from two addresses of one /64 use its budget...
	from("fd00::a")
	from("fd00::b")
	waitFor(t, "two pending hellos", func() bool { return metrics.Value(m.Pending) == 2 })
	// ...so a third address of it is turned away,
	third := from("fd00::c")
	_ = third.SetReadDeadline(time.Now().Add(10 * time.Second))
	var ne net.Error
	if n, err := third.Read(make([]byte, 1)); n != 0 || err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("a third source in the same /64: read %d, %v; want it closed", n, err)
	}
	if got := metrics.Value(m.RejectedPerIP); got != 1 {
		t.Fatalf("RejectedPerIP = %v, want 1", got)
	}
	// ...while another /64 has a budget of its own.
	from("fd00:0:0:1::a")
	waitFor(t, "a pending hello from another /64", func() bool { return metrics.Value(m.Pending) == 3 })
}

// TestLinkLocalTarget: a backend on an IPv6 link-local address needs the
// zone of its target address (the interface); connecting without it fails.
func TestLinkLocalTarget(t *testing.T) {
	inOwnNetns(t, "TestLinkLocalTarget", linkLocalTarget)
}

func linkLocalTarget(t *testing.T) {
	ipCommands(t,
		[]string{"link", "set", "lo", "up"},
		[]string{"-6", "addr", "add", "fe80::1/64", "dev", "lo", "nodad"},
	)
	backendLn, err := net.Listen("tcp", "[fe80::1%lo]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer backendLn.Close()
	backends := rawBackend(backendLn)
	target := fmt.Sprintf("[fe80::1%%lo]:%d", backendLn.Addr().(*net.TCPAddr).Port)
	// Right after the namespace is set up, the first SYNs to the new
	// link-local address are sometimes lost: wait until it answers.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", target, 200*time.Millisecond)
		if err == nil {
			c.Close()
			<-backends
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the backend's link-local address never answered: %v", err)
		}
	}
	e := startProxy(t, sniproxy.Config{Router: staticRouter{names: map[string]sniproxy.Target{testName: {Addr: target}}}}, false)
	c, b := relayedPair(t, e, backends)
	exchange(t, c, b, 10)
}
