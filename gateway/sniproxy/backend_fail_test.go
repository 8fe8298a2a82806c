package sniproxy_test

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/elacity/pc2/core/metrics"
	"github.com/elacity/pc2/gateway/clienthello/hellotest"
	"github.com/elacity/pc2/gateway/sniproxy"
)

func init() {
	behaviourTests["BackendRefused"] = TestBackendRefusedAlert
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// wantInternalErrorAlert sends a hello for testName on a new connection and
// checks that the proxy answers with a fatal internal_error alert and
// closes, within limit.
func wantInternalErrorAlert(t *testing.T, e *env, limit time.Duration) {
	t.Helper()
	c, err := net.DialTimeout("tcp", e.proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_ = c.SetDeadline(start.Add(limit))
	if _, err := c.Write(hellotest.ChromeLike(testName)); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read after %v: %v (got % x); want an alert and the close", time.Since(start), err, got)
	}
	if want := []byte{0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 80}; !bytes.Equal(got, want) {
		t.Fatalf("got % x, want internal_error alert % x", got, want)
	}
	c.Close() // ends the proxy's drain at once
	waitFor(t, "dial error counted and the connection released", func() bool {
		return metrics.Value(e.m.DialErrors) == 1 && metrics.Value(e.m.Active) == 0 && metrics.Value(e.m.Pending) == 0
	})
}

// TestBackendRefusedAlert: a backend that refuses the connection gets the
// client a TLS internal_error alert at once.
func TestBackendRefusedAlert(t *testing.T) {
	addr := closedPort(t)
	e := startProxy(t, sniproxy.Config{Router: staticRouter{names: map[string]sniproxy.Target{testName: {Addr: addr}}}}, false)
	wantInternalErrorAlert(t, e, 5*time.Second)
}
