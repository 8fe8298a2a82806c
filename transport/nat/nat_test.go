package nat_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/elacity/pc2/core/config"
	"github.com/elacity/pc2/core/host"
	"github.com/elacity/pc2/core/host/hosttest"
	"github.com/elacity/pc2/transport/nat"
	"github.com/elacity/pc2/transport/stun"
)

// runHost runs svcs in a dev host with cfgBody; it returns the Info or the
// start error.
func runHost(t *testing.T, cfgBody string, role config.Role, svcs ...host.Service) (host.Info, error) {
	t.Helper()
	return hosttest.Run(t, "metrics:\n  listen: \"off\"\n"+cfgBody, role, nil, svcs...)
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
