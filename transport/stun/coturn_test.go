package stun_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/elacity/pc2/transport/stun"
)

// TestAgainstCoturn checks the client against another implementation:
// coturn (Debian package coturn, installed by tools/install-deps.sh) in
// STUN-only mode on two loopback addresses with an alternate port, which is
// how coturn enables RFC 5780. A plain Binding must report our address, and
// the full classification must work against it (no NAT on loopback).
func TestAgainstCoturn(t *testing.T) {
	bin, err := exec.LookPath("turnserver")
	if err != nil {
		t.Skip("needs coturn's turnserver (tools/install-deps.sh installs it)")
	}
	ports := freePorts(t, 2, lo1, lo2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.Command(bin, "-n", "--listening-ip=127.0.0.1", "--listening-ip=127.0.0.2",
		"-p", fmt.Sprint(ports[0]), "--alt-listening-port", fmt.Sprint(ports[1]),
		"--stun-only", "--no-tls", "--no-dtls", "--no-cli", "-z", "--log-file=stdout", "--simple-log",
		"--pidfile", t.TempDir()+"/turnserver.pid")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("turnserver output:\n%s", out.String())
		}
	})
	server := netip.AddrPortFrom(lo1, ports[0])
	c := listenClient(t)

	// Wait until coturn answers (it starts its listeners asynchronously).
	var a stun.Answer
	for {
		a, err = c.Binding(ctx, server, 0)
		if err == nil {
			break
		}
		if !errors.Is(err, stun.ErrTimeout) || ctx.Err() != nil {
			t.Fatalf("no answer from coturn: %v", err)
		}
	}
	if a.ErrorCode != 0 || a.Mapped != c.LocalAddr() {
		t.Fatalf("coturn answered %+v, want mapped %s", a, c.LocalAddr())
	}
	t.Logf("coturn: mapped %s origin %s other %s", a.Mapped, a.Origin, a.Other)

	res, err := stun.Classify(ctx, c, listenClient(t), server, c.LocalAddr())
	if err != nil {
		t.Fatal(err)
	}
	if res.Mapping != stun.NoNAT || res.Filtering != stun.EIF || res.Other != netip.AddrPortFrom(lo2, ports[1]) {
		t.Fatalf("classification against coturn: %v (other %s)", res, res.Other)
	}
}
