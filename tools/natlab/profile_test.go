package natlab

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseNATSpec(t *testing.T) {
	o, err := ParseNATSpec("sym,hairpin,loss=nth:4,rate=2mbit,timeout=5s,upnp")
	if err != nil {
		t.Fatal(err)
	}
	want := NATOptions{Profile: Symmetric, Hairpin: true, Loss: Loss{Mode: LossNth, Every: 4},
		RateKbit: 2000, UDPTimeout: 5 * time.Second, PortMapping: true}
	if o != want {
		t.Fatalf("got %+v want %+v", o, want)
	}
	back, err := ParseNATSpec(o.String())
	if err != nil || back != o {
		t.Fatalf("String round trip %q: %+v %v", o.String(), back, err)
	}
	if o, err := ParseNATSpec("full-cone,loss=random:5%"); err != nil || o.Loss.PerMille != 50 || o.Profile != FullCone {
		t.Fatalf("random loss: %+v %v", o, err)
	}
	for _, bad := range []string{"", "cone", "fc,loss=nth:1", "fc,loss=random:0", "fc,loss=sometimes",
		"fc,rate=fast", "fc,timeout=10ms", "fc,colour=blue"} {
		if _, err := ParseNATSpec(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestExpectedBehaviour(t *testing.T) {
	fc := NATOptions{Profile: FullCone}
	fcH := NATOptions{Profile: FullCone, Hairpin: true}
	prcH := NATOptions{Profile: PortRestricted, Hairpin: true}
	sym := NATOptions{Profile: Symmetric}
	cases := []struct {
		chain []NATOptions
		want  Behaviour
	}{
		{nil, Behaviour{Mapping: MappingNone}},
		{[]NATOptions{fcH}, Behaviour{EIM, EIF, true}},
		{[]NATOptions{fc, prcH}, Behaviour{EIM, APDF, true}},
		{[]NATOptions{sym, fcH}, Behaviour{APDM, APDF, false}},
		{[]NATOptions{prcH, fcH}, Behaviour{EIM, APDF, false}}, // inner NAT filters the hairpinned packet
	}
	for _, c := range cases {
		if got := ExpectedBehaviour(c.chain); got != c.want {
			t.Errorf("%v: got %v want %v", c.chain, got, c.want)
		}
	}
}

func TestResolveAddressing(t *testing.T) {
	nodes, err := ZooTopology().Resolve()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Addr]string{}
	for _, n := range nodes {
		for _, a := range n.Addrs {
			if other, dup := seen[a]; dup {
				t.Fatalf("%v used by %s and %s", a, other, n.Name)
			}
			seen[a] = n.Name
		}
		switch n.Kind {
		case KindPublic, KindInternet:
			for _, a := range n.Addrs {
				if !PublicPrefixHosts.Contains(a) && !PublicPrefixNATs.Contains(a) {
					t.Errorf("%s: %v outside the documentation prefixes", n.Name, a)
				}
			}
		case KindRouter:
			if n.Name == "cgn" && !CGNATPrefix.Contains(n.LAN.Addr()) {
				t.Errorf("cgn LAN %v outside 100.64.0.0/10", n.LAN)
			}
			if n.Name == "home" && (!CGNATPrefix.Contains(n.Addrs[0]) || !strings.HasPrefix(n.LAN.String(), "192.168.")) {
				t.Errorf("home WAN %v / LAN %v", n.Addrs[0], n.LAN)
			}
		case KindPrivate:
			if !n.Prefix.Contains(n.Addrs[0]) || !n.Prefix.Contains(n.Gateway) {
				t.Errorf("%s: %v via %v outside %v", n.Name, n.Addrs[0], n.Gateway, n.Prefix)
			}
		}
	}
	if chain := NATChain(nodes, "home1"); len(chain) != 2 || chain[0].Name != "home" || chain[1].Name != "cgn" {
		t.Fatalf("NATChain(home1) = %v", chain)
	}
}

func TestResolveRejects(t *testing.T) {
	prc := NATOptions{Profile: PortRestricted}
	bad := []Topology{
		{NATs: []NAT{{Name: "a", Options: prc}, {Name: "a", Options: prc}}},
		{NATs: []NAT{{Name: "Bad_Name", Options: prc}}},
		{NATs: []NAT{{Name: "inet", Options: prc}}},
		{NATs: []NAT{{Name: "a", Options: prc, Upstream: "nowhere"}}},
		{NATs: []NAT{{Name: "a", Options: prc, Upstream: "b"}, {Name: "b", Options: prc, Upstream: "a"}}},
		{NATs: []NAT{{Name: "a"}}},
		{NATs: []NAT{{Name: "a", Options: prc, LAN: netip.MustParsePrefix("198.51.100.0/25")}}},
		{NATs: []NAT{{Name: "a", Options: prc, CGNAT: true, LAN: netip.MustParsePrefix("10.9.0.0/24")}}},
		{NATs: []NAT{{Name: "a", Options: prc, Hosts: []string{"h1", "h2"}, LAN: netip.MustParsePrefix("10.9.0.0/30")}}},
		{Public: []PublicHost{{Name: "p", Addrs: []netip.Addr{netip.MustParseAddr("8.8.8.8")}}}},
		{Public: []PublicHost{{Name: "p", ProbeServer: true, Addrs: []netip.Addr{netip.MustParseAddr("198.51.100.50")}}}},
		// upnp without a probe server (miniupnpd's STUN test needs one)
		{Public: []PublicHost{{Name: "p", NumAddrs: 2}}, NATs: []NAT{{Name: "a", Options: NATOptions{Profile: PortRestricted, PortMapping: true}}}},
	}
	for i, topo := range bad {
		if _, err := topo.Resolve(); err == nil {
			t.Errorf("case %d accepted: %+v", i, topo)
		}
	}
}

func TestRulesetShape(t *testing.T) {
	wan, lan := netip.MustParseAddr("203.0.113.10"), netip.MustParsePrefix("10.0.1.0/24")
	for _, p := range Profiles() {
		rs := NATOptions{Profile: p}.ruleset(wan, lan, nil)
		if !strings.Contains(rs, `iifname "wan0" ct state { new, invalid } drop`) {
			t.Errorf("%s: no silent drop of unsolicited inbound", p.Name)
		}
		if got := strings.Contains(rs, "dnat ip to meta l4proto . th dport map @pmap"); got != (p.Filtering != APDF) {
			t.Errorf("%s: inbound DNAT present=%v", p.Name, got)
		}
		// EIM: a mapping is reused (reverse map) and the port preserved;
		// symmetric: every new flow gets a random port.
		eim := p.Mapping == EIM
		if got := strings.Contains(rs, "map @rmap"); got != eim {
			t.Errorf("%s: reverse map=%v", p.Name, got)
		}
		if got := strings.Contains(rs, `oifname "wan0" snat ip to 203.0.113.10`+"\n"); got != eim {
			t.Errorf("%s: port-preserving snat=%v", p.Name, got)
		}
		// The router's own traffic is neither translated nor learned, and
		// it comes before any SNAT or learning rule.
		for _, rule := range []string{`oifname "wan0" ip saddr 203.0.113.10 accept`, `oifname "wan0" ct original ip saddr 203.0.113.10 accept`} {
			i := strings.Index(rs, rule)
			if i < 0 {
				t.Errorf("%s: no rule %q", p.Name, rule)
				continue
			}
			chainStart := strings.LastIndex(rs[:i], "chain ")
			if j := strings.Index(rs[chainStart:], "snat"); j >= 0 && chainStart+j < i {
				t.Errorf("%s: %q after a snat rule", p.Name, rule)
			}
			if j := strings.Index(rs[chainStart:], "update @"); j >= 0 && chainStart+j < i {
				t.Errorf("%s: %q after a learning rule", p.Name, rule)
			}
		}
	}
	// STUN answers reach the router itself only with port mapping, and
	// only from the given endpoints, before the silent drop.
	stun := []netip.AddrPort{netip.MustParseAddrPort("198.51.100.10:3478"), netip.MustParseAddrPort("198.51.100.11:3479")}
	if rs := (NATOptions{Profile: PortRestricted}).ruleset(wan, lan, stun); strings.Contains(rs, "udp sport") {
		t.Errorf("STUN exception without port mapping:\n%s", rs)
	}
	rs := NATOptions{Profile: PortRestricted, PortMapping: true}.ruleset(wan, lan, stun)
	drop := strings.Index(rs, `iifname "wan0" ct state { new, invalid } drop`)
	for _, ap := range stun {
		rule := fmt.Sprintf(`iifname "wan0" ip saddr %s udp sport %d accept`, ap.Addr(), ap.Port())
		if i := strings.Index(rs, rule); i < 0 || i > drop {
			t.Errorf("no %q before the silent drop:\n%s", rule, rs)
		}
	}
}
