package dns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

type fakeSource struct {
	mu    sync.Mutex
	zones []string
	names map[string][]netip.Addr
	acme  map[string][]string
}

func (f *fakeSource) Zones() []string { return f.zones }
func (f *fakeSource) LookupName(n string) ([]netip.Addr, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.names[n]
	return a, ok
}
func (f *fakeSource) ACMEChallenge(n string) ([]string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.names[n]
	return f.acme[n], ok
}

func newSource() *fakeSource {
	many := make([]string, 40)
	for i := range many {
		many[i] = fmt.Sprintf("%043d", i) // 40 × 43-byte values: > 1232 bytes
	}
	return &fakeSource{
		zones: []string{"ela.city", "pc2.localhost"},
		names: map[string][]netip.Addr{
			"alice.ela.city":  nil,
			"direct.ela.city": {netip.MustParseAddr("198.51.100.7")},
			"many.ela.city":   nil,
		},
		acme: map[string][]string{"alice.ela.city": {"tok-1", "tok-2"}, "many.ela.city": many},
	}
}

func testConfig() Config {
	c := DefaultConfig(false)
	c.Addresses = []string{"203.0.113.10", "2001:db8::10"}
	c.Hosts = []string{"www"}
	c.Nameservers = []NameServer{{Name: "ns1"}, {Name: "ns2", Addresses: []string{"203.0.113.11"}}, {Name: "ns.example.net."}}
	return c
}

// server starts the handler on loopback UDP and TCP.
func server(t *testing.T, src Source, cfg Config) (addr string, h *Handler) {
	h, err := NewHandler(src, cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	pc, ln, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udp, tcp, err := Serve(h, pc, ln, 16)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Shutdown(); tcp.Shutdown() })
	return ln.Addr().String(), h
}

func query(t *testing.T, addr, net, name string, qtype uint16) *mdns.Msg {
	t.Helper()
	c := &mdns.Client{Net: net, Timeout: 3 * time.Second}
	m := new(mdns.Msg).SetQuestion(name, qtype)
	resp, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s %s: %v", net, name, mdns.TypeToString[qtype], err)
	}
	return resp
}

func rrs(section []mdns.RR) string {
	var out []string
	for _, rr := range section {
		f := strings.Fields(rr.String())
		out = append(out, f[3]+" "+strings.Join(f[4:], " "))
	}
	return strings.Join(out, "; ")
}

func TestAnswers(t *testing.T) {
	addr, _ := server(t, newSource(), testConfig())
	for _, tc := range []struct {
		name          string
		qtype         uint16
		rcode         int
		answer, extra string
		authSOA       bool
	}{
		{"alice.ela.city.", mdns.TypeA, mdns.RcodeSuccess, "A 203.0.113.10", "", false},
		{"ALICE.Ela.City.", mdns.TypeAAAA, mdns.RcodeSuccess, "AAAA 2001:db8::10", "", false},
		{"direct.ela.city.", mdns.TypeA, mdns.RcodeSuccess, "A 198.51.100.7", "", false},
		{"direct.ela.city.", mdns.TypeAAAA, mdns.RcodeSuccess, "", "", true}, // NODATA: the node has no IPv6
		{"alice.ela.city.", mdns.TypeMX, mdns.RcodeSuccess, "", "", true},
		{"ela.city.", mdns.TypeNS, mdns.RcodeSuccess, "NS ns1.ela.city.; NS ns2.ela.city.; NS ns.example.net.", "A 203.0.113.10; AAAA 2001:db8::10; A 203.0.113.11", false},
		{"ela.city.", mdns.TypeSOA, mdns.RcodeSuccess, "SOA ns1.ela.city. hostmaster.ela.city.", "", false},
		{"ela.city.", mdns.TypeA, mdns.RcodeSuccess, "A 203.0.113.10", "", false},
		{"ns2.ela.city.", mdns.TypeA, mdns.RcodeSuccess, "A 203.0.113.11", "", false},
		{"www.pc2.localhost.", mdns.TypeA, mdns.RcodeSuccess, "A 203.0.113.10", "", false},
		{"_acme-challenge.alice.ela.city.", mdns.TypeTXT, mdns.RcodeSuccess, `TXT "tok-1"; TXT "tok-2"`, "", false},
		{"_acme-challenge.alice.ela.city.", mdns.TypeA, mdns.RcodeSuccess, "", "", true},
		{"_acme-challenge.direct.ela.city.", mdns.TypeTXT, mdns.RcodeNameError, "", "", true},
		{"_acme-challenge.nobody.ela.city.", mdns.TypeTXT, mdns.RcodeNameError, "", "", true},
		{"nobody.ela.city.", mdns.TypeA, mdns.RcodeNameError, "", "", true},
		{"x.alice.ela.city.", mdns.TypeA, mdns.RcodeNameError, "", "", true},
		{"example.com.", mdns.TypeA, mdns.RcodeRefused, "", "", false},
		{"xela.city.", mdns.TypeA, mdns.RcodeRefused, "", "", false},
		{"ela.city.", mdns.TypeAXFR, mdns.RcodeRefused, "", "", false},
	} {
		t.Run(tc.name+mdns.TypeToString[tc.qtype], func(t *testing.T) {
			r := query(t, addr, "udp", tc.name, tc.qtype)
			if r.Rcode != tc.rcode {
				t.Fatalf("rcode %s, want %s", mdns.RcodeToString[r.Rcode], mdns.RcodeToString[tc.rcode])
			}
			if got := rrs(r.Answer); !strings.HasPrefix(got, tc.answer) || (tc.answer == "" && got != "") {
				t.Errorf("answer %q, want %q", got, tc.answer)
			}
			if got := rrs(r.Extra); got != tc.extra {
				t.Errorf("extra %q, want %q", got, tc.extra)
			}
			hasSOA := len(r.Ns) == 1 && r.Ns[0].Header().Rrtype == mdns.TypeSOA
			if hasSOA != tc.authSOA {
				t.Errorf("authority %v, want SOA=%v", r.Ns, tc.authSOA)
			}
			if hasSOA && r.Ns[0].Header().Ttl > 60 {
				t.Errorf("negative TTL %d above the SOA minimum", r.Ns[0].Header().Ttl)
			}
			if r.RecursionAvailable {
				t.Error("RA set: we do not recurse")
			}
			if tc.rcode != mdns.RcodeRefused && !r.Authoritative {
				t.Error("AA not set")
			}
			if r.Question[0].Name != tc.name {
				t.Errorf("question case changed: %q", r.Question[0].Name)
			}
		})
	}
}

func TestTruncationAndTCP(t *testing.T) {
	addr, _ := server(t, newSource(), testConfig())
	r := query(t, addr, "udp", "_acme-challenge.many.ela.city.", mdns.TypeTXT)
	r.Compress = true // measure as sent
	if !r.Truncated || r.Len() > 512 {
		t.Fatalf("UDP without EDNS: TC=%v len=%d", r.Truncated, r.Len())
	}
	// With EDNS 4096 the answer is capped at maxUDPSize (1232).
	c := &mdns.Client{Net: "udp", Timeout: 3 * time.Second, UDPSize: 4096}
	m := new(mdns.Msg).SetQuestion("_acme-challenge.many.ela.city.", mdns.TypeTXT)
	m.SetEdns0(4096, false)
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatal(err)
	}
	r.Compress = true
	if !r.Truncated || r.Len() > 1232 || r.Len() < 1000 {
		t.Fatalf("EDNS: TC=%v len=%d", r.Truncated, r.Len())
	}
	r = query(t, addr, "tcp", "_acme-challenge.many.ela.city.", mdns.TypeTXT)
	if r.Truncated || len(r.Answer) != 40 {
		t.Fatalf("TCP: TC=%v answers=%d", r.Truncated, len(r.Answer))
	}
	r = query(t, addr, "tcp", "alice.ela.city.", mdns.TypeA)
	if r.Rcode != mdns.RcodeSuccess || rrs(r.Answer) != "A 203.0.113.10" {
		t.Fatalf("TCP A: %v", r)
	}
}

func TestMalformedAndOddQueries(t *testing.T) {
	src := newSource()
	h, err := NewHandler(src, testConfig(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	src1 := netip.MustParseAddr("192.0.2.1")
	m := new(mdns.Msg).SetQuestion("alice.ela.city.", mdns.TypeA)
	m.Question[0].Qclass = mdns.ClassCHAOS
	if r := h.Answer(m, src1, false); r.Rcode != mdns.RcodeRefused {
		t.Errorf("CHAOS: %s", mdns.RcodeToString[r.Rcode])
	}
	m = new(mdns.Msg).SetQuestion("alice.ela.city.", mdns.TypeA)
	m.SetEdns0(1232, false)
	m.IsEdns0().SetVersion(1)
	if r := h.Answer(m, src1, false); r.Rcode != mdns.RcodeBadVers {
		t.Errorf("EDNS1: %s", mdns.RcodeToString[r.Rcode])
	}
	m = new(mdns.Msg).SetQuestion("alice.ela.city.", mdns.TypeA)
	m.Opcode = mdns.OpcodeUpdate
	if r := h.Answer(m, src1, false); r.Rcode != mdns.RcodeNotImplemented {
		t.Errorf("UPDATE: %s", mdns.RcodeToString[r.Rcode])
	}
	m = new(mdns.Msg).SetQuestion("alice.ela.city.", mdns.TypeA)
	m.Response = true
	if r := h.Answer(m, src1, false); r != nil {
		t.Error("answered a response")
	}
	m = new(mdns.Msg)
	if r := h.Answer(m, src1, false); r.Rcode != mdns.RcodeFormatError {
		t.Errorf("no question: %s", mdns.RcodeToString[r.Rcode])
	}
	// Garbage over the socket gets no answer and does not stop the server.
	addr, _ := server(t, src, testConfig())
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{1, 2, 3})
	c.Write(make([]byte, 40))
	if r := query(t, addr, "udp", "alice.ela.city.", mdns.TypeA); r.Rcode != mdns.RcodeSuccess {
		t.Fatal("server broken by garbage")
	}
}

func TestRateLimitSlip(t *testing.T) {
	cfg := testConfig()
	cfg.RateLimit.Rate, cfg.RateLimit.Burst = 1, 5
	now := time.Unix(1_900_000_000, 0)
	h, err := NewHandler(newSource(), cfg, nil, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	q := new(mdns.Msg).SetQuestion("alice.ela.city.", mdns.TypeA)
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	for i := range 5 {
		if r := h.Answer(q, a, false); r == nil || len(r.Answer) != 1 {
			t.Fatalf("query %d within burst not answered", i)
		}
	}
	var slipped, dropped int
	for range 10 {
		r := h.Answer(q, a, false)
		switch {
		case r == nil:
			dropped++
		case r.Truncated && len(r.Answer) == 0:
			packed, _ := r.Pack()
			qb, _ := q.Pack()
			if len(packed) > len(qb) {
				t.Fatalf("slipped reply %d bytes > query %d: amplification", len(packed), len(qb))
			}
			slipped++
		default:
			t.Fatal("limited source got a full answer")
		}
	}
	if slipped != 5 || dropped != 5 {
		t.Fatalf("slipped %d dropped %d, want 5/5", slipped, dropped)
	}
	if r := h.Answer(q, b, false); r == nil || len(r.Answer) != 1 {
		t.Fatal("another source was limited")
	}
	if r := h.Answer(q, a, true); r == nil || r.Rcode != mdns.RcodeRefused {
		t.Fatal("limited TCP source not refused")
	}
	now = now.Add(time.Second)
	if r := h.Answer(q, a, false); r == nil || len(r.Answer) != 1 {
		t.Fatal("bucket did not refill")
	}
	// IPv6 sources share a bucket per /64.
	v6a, v6b := netip.MustParseAddr("2001:db8:1:2::1"), netip.MustParseAddr("2001:db8:1:2::ffff")
	for range 5 {
		h.Answer(q, v6a, false)
	}
	if r := h.Answer(q, v6b, false); r != nil && len(r.Answer) != 0 {
		t.Fatal("same /64 not limited together")
	}
}

func TestConfigNeedsZonesAndAddresses(t *testing.T) {
	if _, err := NewHandler(&fakeSource{}, testConfig(), nil, nil); err == nil {
		t.Fatal("no zones accepted")
	}
	c := testConfig()
	c.Addresses = nil
	if _, err := NewHandler(newSource(), c, nil, nil); err == nil {
		t.Fatal("no addresses accepted")
	}
}

func BenchmarkQuery(b *testing.B) {
	h, err := NewHandler(newSource(), testConfig(), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		qname string
		qtype uint16
	}{{"A", "alice.ela.city.", mdns.TypeA}, {"NXDOMAIN", "nobody.ela.city.", mdns.TypeA}, {"TXT", "_acme-challenge.alice.ela.city.", mdns.TypeTXT}} {
		b.Run(tc.name, func(b *testing.B) {
			q := new(mdns.Msg).SetQuestion(tc.qname, tc.qtype)
			q.SetEdns0(1232, false)
			wire, _ := q.Pack()
			buf := make([]byte, 0, 1232)
			b.ReportAllocs()
			for b.Loop() {
				// The whole per-query path: unpack, answer, pack.
				var req mdns.Msg
				if err := req.Unpack(wire); err != nil {
					b.Fatal(err)
				}
				resp := h.answerUnlimited(&req, false)
				out, err := resp.PackBuffer(buf)
				if err != nil || len(out) == 0 {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
		})
	}
}
