package nat_test

import (
	"context"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/elacity/pc2/core/config"
	"github.com/elacity/pc2/core/host"
	"github.com/elacity/pc2/transport/nat"
	"github.com/elacity/pc2/transport/stun"
)

// runHost runs svcs in a dev host with cfgBody; it returns the Info or the
// start error.
func runHost(t *testing.T, cfgBody string, role config.Role, svcs ...host.Service) (host.Info, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pc2.yaml")
	if err := os.WriteFile(p, []byte("metrics:\n  listen: \"off\"\n"+cfgBody), 0o600); err != nil {
		t.Fatal(err)
	}
	var sections []string
	for _, s := range svcs {
		sections = append(sections, s.Name())
	}
	cfg, err := config.Load(p, role, true, sections)
	if err != nil {
		return host.Info{}, err
	}
	cfg.DataDir = t.TempDir()
	h, err := host.New(host.Options{Config: cfg, Services: svcs, Log: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan host.Info, 1), make(chan error, 1)
	go func() { done <- h.Run(ctx, func(i host.Info) { ready <- i }) }()
	select {
	case info := <-ready:
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("host stop: %v", err)
			}
		})
		return info, nil
	case err := <-done:
		cancel()
		return host.Info{}, err
	case <-time.After(20 * time.Second):
		t.Fatal("host not ready")
	}
	return host.Info{}, nil
}

// TestServiceDiscovers: a node's nat service finds its reflexive address
// from a supernode's stun service (a dev server: one socket, so the mapped
// address only), on its shared socket.
func TestServiceDiscovers(t *testing.T) {
	st := stun.NewService()
	if _, err := runHost(t, "stun:\n  listen: 127.0.0.1:0\n", config.RoleSupernode, st); err != nil {
		t.Fatal(err)
	}
	server := st.Server().Addrs()[0]
	svc := nat.NewService()
	info, err := runHost(t, "nat:\n  stun: ["+server.String()+"]\n", config.RoleNode, svc)
	if err != nil {
		t.Fatal(err)
	}
	if info.Extra["nat.udp"] != svc.Mux().LocalAddr().String() {
		t.Fatalf("advertised %q, socket %s", info.Extra["nat.udp"], svc.Mux().LocalAddr())
	}
	deadline := time.Now().Add(10 * time.Second)
	for !svc.Status().Reflexive.IsValid() {
		if time.Now().After(deadline) {
			t.Fatal("no reflexive address")
		}
		time.Sleep(20 * time.Millisecond)
	}
	s := svc.Status()
	// The mapped address is the shared socket's own (no NAT on loopback).
	want := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), svc.Mux().LocalAddr().Port())
	if s.Reflexive != want || s.NAT.Mapping != stun.NoNAT || len(s.NAT.Notes) != 1 {
		t.Fatalf("status %+v", s)
	}
}

func TestServiceRejectsBadConfig(t *testing.T) {
	for field, body := range map[string]string{
		"protocols": "nat:\n  protocols: [smtp]\n",
		"gateway":   "nat:\n  gateway: nope\n",
		"stun":      "nat:\n  stun: [nope]\n",
	} {
		_, err := runHost(t, body, config.RoleNode, nat.NewService())
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: start error %v, want one naming the field", field, err)
		}
	}
}
