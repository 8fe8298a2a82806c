package fuzz

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/gateway/dns"
	"github.com/elacity/pc2/gateway/names"
	"github.com/elacity/pc2/plugins/registry/wire"
)

func registryKey(b byte) *identity.KeyPair {
	kp, _ := identity.FromSeed(bytes.Repeat([]byte{b}, 32))
	return kp
}

// FuzzRegistryRequest: the registration decoder refuses with a typed
// error or returns a request that passes Check, whose canonical bytes
// are one line per field (no injected newlines), and that survives a JSON
// round trip with the same canonical bytes and signature verdict.
func FuzzRegistryRequest(f *testing.F) {
	q := &wire.Request{Op: wire.OpRegister, Name: "alice.ela.city", Target: "203.0.113.7:443", HTTP: "[2001:db8::1]:80",
		RedirectHTTPS: true, Timestamp: 1700000000, Nonce: "000102030405060708090a0b0c0d0e0f"}
	q.Sign(registryKey(1))
	valid, _ := json.Marshal(q)
	bob := registryKey(2).ID()
	tr := &wire.Request{Op: wire.OpTransfer, Name: "alice.ela.city", Target: "198.51.100.1:443", NewOwner: &bob,
		Timestamp: 1700000000, Nonce: "0f0e0d0c0b0a09080706050403020100"}
	tr.Sign(registryKey(1))
	tr.CoSign(registryKey(2))
	transfer, _ := json.Marshal(tr)
	tun := &wire.Request{Op: wire.OpRegister, Name: "bob.ela.city", Target: wire.TargetTunnel, HTTP: wire.TargetTunnel,
		Timestamp: 1700000000, Nonce: "000102030405060708090a0b0c0d0e0f"}
	tun.Sign(registryKey(2))
	tunnel, _ := json.Marshal(tun)
	for _, s := range [][]byte{valid, transfer, tunnel, []byte(`{}`), []byte(`{"op":"acme-set","txt":"a\nb"}`),
		[]byte(strings.Replace(string(valid), "alice", "al\\nice", 1)), []byte(`[1,2,3]`), []byte(`{"op":"register"}{"op":"delete"}`)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := wire.Decode(b)
		if err != nil {
			if !errors.Is(err, wire.ErrMalformed) && !errors.Is(err, wire.ErrTooLarge) {
				t.Fatalf("untyped error: %v", err)
			}
			return
		}
		if len(b) > wire.MaxRequestSize {
			t.Fatal("accepted an oversized request")
		}
		if err := r.Check(); err != nil {
			t.Fatalf("Decode returned a request failing Check: %v", err)
		}
		c := r.Canonical()
		if lines := bytes.Count(c, []byte("\n")); lines != 12 {
			t.Fatalf("canonical form has %d lines:\n%s", lines, c)
		}
		again, _ := json.Marshal(r)
		r2, err := wire.Decode(again)
		if err != nil {
			t.Fatalf("re-encoded request refused: %v", err)
		}
		if !bytes.Equal(r2.Canonical(), c) || (r.Verify() == nil) != (r2.Verify() == nil) {
			t.Fatal("round trip changed the signed bytes or the verdict")
		}
	})
}

// FuzzName: a name either fails with a typed *names.Error or parses to a
// label.suffix that parses again to itself, satisfies every label rule,
// and is found by Fold from any case.
func FuzzName(f *testing.F) {
	rules, _ := names.NewRules([]string{"ela.city", "pc2.net", "pc2.localhost", "localhost"})
	for _, s := range []string{"alice.ela.city", "ALICE.ela.city.", "www.ela.city", "xn--bcher-kva.pc2.net", "a.b.ela.city",
		"-ab.ela.city", "abc.pc2.localhost", "abc.localhost", "ela.city", "", ".", " alice.pc2.net "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := rules.Parse(s)
		if err != nil {
			var ne *names.Error
			if !errors.As(err, &ne) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		full := n.String()
		back, err := rules.Parse(full)
		if err != nil || back != n {
			t.Fatalf("%q → %q does not parse to itself: %v", s, full, err)
		}
		if names.CheckLabel(n.Label) != nil || len(full) > names.MaxName || strings.ContainsAny(n.Label, ".") {
			t.Fatalf("accepted bad name %q", full)
		}
		var buf [names.MaxName]byte
		b, ok := names.Fold(buf[:], strings.ToUpper(full)+".")
		if !ok || string(b) != full {
			t.Fatalf("Fold(%q) = %q", strings.ToUpper(full), b)
		}
	})
}

type fuzzSource struct{}

func (fuzzSource) Zones() []string { return []string{"ela.city", "pc2.localhost"} }
func (fuzzSource) LookupName(n string) ([]netip.Addr, bool) {
	switch n {
	case "alice.ela.city":
		return nil, true
	case "direct.ela.city":
		return []netip.Addr{netip.MustParseAddr("198.51.100.7")}, true
	}
	return nil, false
}
func (fuzzSource) ACMEChallenge(n string) ([]string, bool) {
	if n == "alice.ela.city" {
		return []string{"token-one", strings.Repeat("x", 255)}, true
	}
	_, ok := fuzzSource{}.LookupName(n)
	return nil, ok
}

// FuzzDNSHandler: any packet either fails to unpack or gets no answer or
// an answer that packs, fits the transport (512 bytes without EDNS, the
// advertised size up to 1232 with it), echoes the id, and is never a
// non-REFUSED answer for a name outside the zones.
func FuzzDNSHandler(f *testing.F) {
	cfg := dns.DefaultConfig(false)
	cfg.Addresses = []string{"203.0.113.10", "2001:db8::10"}
	cfg.RateLimit.Rate, cfg.RateLimit.Burst = 1e9, 1e9
	h, err := dns.NewHandler(fuzzSource{}, cfg, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	for _, q := range []struct {
		name string
		t    uint16
		edns bool
	}{{"alice.ela.city.", mdns.TypeA, false}, {"ELA.city.", mdns.TypeNS, true}, {"_acme-challenge.alice.ela.city.", mdns.TypeTXT, false},
		{"example.com.", mdns.TypeA, false}, {"ela.city.", mdns.TypeANY, true}, {"ela.city.", mdns.TypeAXFR, false}} {
		m := new(mdns.Msg).SetQuestion(q.name, q.t)
		if q.edns {
			m.SetEdns0(4096, true)
		}
		b, _ := m.Pack()
		f.Add(b, false)
	}
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1}, true) // compression loop
	src := netip.MustParseAddr("192.0.2.1")
	f.Fuzz(func(t *testing.T, pkt []byte, tcp bool) {
		var req mdns.Msg
		if err := req.Unpack(pkt); err != nil {
			return
		}
		resp := h.Answer(&req, src, tcp)
		if resp == nil {
			return
		}
		out, err := resp.Pack()
		if err != nil {
			t.Fatalf("answer does not pack: %v", err)
		}
		limit := mdns.MaxMsgSize
		if !tcp {
			limit = 512
			if opt := req.IsEdns0(); opt != nil {
				limit = min(max(int(opt.UDPSize()), 512), 1232)
			}
		}
		if len(out) > limit {
			t.Fatalf("answer %d bytes > limit %d", len(out), limit)
		}
		if resp.Id != req.Id {
			t.Fatal("id not echoed")
		}
		if len(req.Question) == 1 && len(resp.Answer) > 0 {
			name := strings.ToLower(req.Question[0].Name)
			if !mdns.IsSubDomain("ela.city.", name) && !mdns.IsSubDomain("pc2.localhost.", name) {
				t.Fatalf("answered for %q outside the zones", name)
			}
		}
	})
}
