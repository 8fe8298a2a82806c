package circuit_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/elacity/pc2/core/config"
	"github.com/elacity/pc2/core/host"
	"github.com/elacity/pc2/core/host/hosttest"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/relay/circuit"
)

// runHost runs svc in a dev host with cfgBody; it returns the host's Info
// or the start error.
func runHost(t *testing.T, cfgBody string, role config.Role, svc host.Service) (host.Info, error) {
	t.Helper()
	return hosttest.Run(t, cfgBody, role, nil, svc)
}

// TestServiceOnNode: a node runs the relay only when enabled; then peers
// on its allow list reserve and exchange packets through it, and others
// are refused.
func TestServiceOnNode(t *testing.T) {
	svc := circuit.NewService(nil, false)
	if _, err := runHost(t, "metrics:\n  listen: \"off\"\n", config.RoleNode, svc); err != nil {
		t.Fatal(err)
	}
	if svc.Server() != nil {
		t.Fatal("relay runs on a node without relay.enabled")
	}

	a, b, stranger := newKey(t), newKey(t), newKey(t)
	svc = circuit.NewService(nil, false)
	body := fmt.Sprintf("metrics:\n  listen: \"off\"\nrelay:\n  enabled: true\n  allow: [%s, %s]\n  sessionMaxBytes: 100000\n", a.ID(), b.ID())
	info, err := runHost(t, body, config.RoleNode, svc)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := netip.ParseAddrPort(info.Extra["relay.listen"])
	if err != nil || addr != svc.Addr() {
		t.Fatalf("advertised %q (%v), service on %v", info.Extra["relay.listen"], err, svc.Addr())
	}
	relayID, err := identity.ParseID(info.ID.String())
	if err != nil {
		t.Fatal(err)
	}
	dial := func(kp *identity.KeyPair) (*peer, error) {
		sock := newSharedSocket(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cli, err := circuit.Dial(ctx, sock.tr, sock, kp, addr, relayID, circuit.ClientConfig{})
		if err != nil {
			return nil, err
		}
		sock.setHandler(cli.Handle)
		t.Cleanup(func() { cli.Close() })
		return &peer{kp: kp, sock: sock, cli: cli}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pa, err := dial(a)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := dial(b)
	if err != nil {
		t.Fatal(err)
	}
	res, err := pb.cli.Reserve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Limits.MaxBytes != 100000 || res.Limits.BytesPerSecond != 1<<20 {
		t.Fatalf("granted limits %+v, want the section's", res.Limits)
	}
	sa, err := pa.cli.Connect(ctx, b.ID())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pa.cli.PacketConn().WriteTo([]byte("hello"), sa); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = pb.cli.PacketConn().SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := pb.cli.PacketConn().ReadFrom(buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}

	ps, err := dial(stranger)
	if err == nil {
		_, err = ps.cli.Reserve(ctx)
	}
	if err == nil {
		t.Fatal("a node not on the allow list got a reservation")
	}
}

// TestServiceConfigErrors: bad values are reported at their fields.
func TestServiceConfigErrors(t *testing.T) {
	_, err := runHost(t, "metrics:\n  listen: \"off\"\nrelay:\n  enabled: true\n  listen: nope\n  allow: [bad-id]\n  maxSessions: -1\n  idleTimeout: 0s\n", config.RoleNode, circuit.NewService(nil, false))
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{"listen", "allow", "maxSessions", "idleTimeout"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
}
