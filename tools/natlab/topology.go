package natlab

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
)

// Topology declares a lab. Addresses left zero are assigned by Resolve:
// the internet router holds 198.51.100.1/24 and 203.0.113.1/24; public hosts
// get consecutive addresses from 198.51.100.10; NATs on the internet get
// 203.0.113.10 upward; a NAT behind another NAT (double NAT) gets an address of
// its upstream's LAN. Top-level NAT LANs are 10.0.N.0/24, LANs behind an
// upstream NAT are 192.168.N.0/24, and a NAT marked CGNAT serves 100.64.N.0/24
// (inside 100.64.0.0/10, RFC 6598). Private hosts get .2, .3, ... of their LAN.
type Topology struct {
	Name   string
	Public []PublicHost
	NATs   []NAT
}

// PublicHost is a host on the internet segment (supernode, relay, probe server).
type PublicHost struct {
	Name string
	// Addrs are its internet addresses; if empty, NumAddrs (default 1) are
	// assigned.
	Addrs    []netip.Addr
	NumAddrs int
	// ProbeServer starts a probe server on this host (needs ≥ 2 addresses).
	ProbeServer bool
}

// NAT is one NAT router and the private hosts behind it.
type NAT struct {
	Name    string
	Options NATOptions
	// Upstream is the name of the NAT this router sits behind ("" = internet).
	Upstream string
	// CGNAT puts the LAN in 100.64.0.0/10 (carrier-grade NAT serving home NATs).
	CGNAT bool
	// Hosts are the private hosts on the LAN.
	Hosts []string
	// WAN and LAN override the assigned addresses.
	WAN netip.Addr
	LAN netip.Prefix
}

// Node kinds in a resolved topology.
const (
	KindInternet = "internet"
	KindPublic   = "public"
	KindRouter   = "nat"
	KindPrivate  = "private"
)

// Node is one namespace of a resolved topology.
type Node struct {
	Name string
	Kind string
	// Addrs: public host addresses; router WAN address; private host address.
	Addrs []netip.Addr
	// Gateway is the default route (zero for the internet router).
	Gateway netip.Addr
	// Parent is the node whose segment this node is attached to ("inet" or a router).
	Parent string
	// Prefix is the on-link prefix of Addrs[0] on the parent segment.
	Prefix netip.Prefix
	// Router-only fields.
	LAN     netip.Prefix `json:",omitzero"`
	Options *NATOptions  `json:",omitempty"`
	Probe   bool         `json:",omitempty"`
}

// Internet-side addressing.
var (
	PublicPrefixHosts = netip.MustParsePrefix("198.51.100.0/24")
	PublicPrefixNATs  = netip.MustParsePrefix("203.0.113.0/24")
	CGNATPrefix       = netip.MustParsePrefix("100.64.0.0/10")
)

// InternetNode is the reserved name of the internet router namespace.
const InternetNode = "inet"

var nodeNameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,23}$`)

// Resolve validates t and assigns addresses, returning nodes in creation order
// (internet, public hosts, routers outer before inner, private hosts).
func (t Topology) Resolve() ([]Node, error) {
	seen := map[string]bool{InternetNode: true}
	check := func(name string) error {
		if !nodeNameRE.MatchString(name) {
			return fmt.Errorf("node name %q: want [a-z][a-z0-9-]{0,23}", name)
		}
		if seen[name] {
			return fmt.Errorf("duplicate node name %q", name)
		}
		seen[name] = true
		return nil
	}
	nodes := []Node{{
		Name:  InternetNode,
		Kind:  KindInternet,
		Addrs: []netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("203.0.113.1")},
	}}
	used := map[netip.Addr]string{}
	claim := func(a netip.Addr, who string) error {
		if other, ok := used[a]; ok {
			return fmt.Errorf("address %v used by %s and %s", a, other, who)
		}
		used[a] = who
		return nil
	}
	for _, a := range nodes[0].Addrs {
		_ = claim(a, InternetNode)
	}

	next := netip.MustParseAddr("198.51.100.10")
	for _, p := range t.Public {
		if err := check(p.Name); err != nil {
			return nil, err
		}
		addrs := slices.Clone(p.Addrs)
		if len(addrs) == 0 {
			n := max(p.NumAddrs, 1)
			if p.ProbeServer {
				n = max(n, 2)
			}
			for range n {
				for used[next] != "" {
					next = next.Next()
				}
				addrs = append(addrs, next)
				next = next.Next()
			}
		}
		if p.ProbeServer && len(addrs) < 2 {
			return nil, fmt.Errorf("public host %s: a probe server needs two addresses", p.Name)
		}
		for _, a := range addrs {
			if !PublicPrefixHosts.Contains(a) && !PublicPrefixNATs.Contains(a) {
				return nil, fmt.Errorf("public host %s: %v is outside 198.51.100.0/24 and 203.0.113.0/24", p.Name, a)
			}
			if err := claim(a, p.Name); err != nil {
				return nil, err
			}
		}
		gw := nodes[0].Addrs[0]
		pfx := PublicPrefixHosts
		if PublicPrefixNATs.Contains(addrs[0]) {
			gw, pfx = nodes[0].Addrs[1], PublicPrefixNATs
		}
		nodes = append(nodes, Node{Name: p.Name, Kind: KindPublic, Addrs: addrs, Gateway: gw,
			Parent: InternetNode, Prefix: pfx, Probe: p.ProbeServer})
	}

	// Routers: resolve parents first (outer before inner).
	byName := map[string]int{}
	for i, n := range t.NATs {
		if err := check(n.Name); err != nil {
			return nil, err
		}
		if err := n.Options.validate(); err != nil {
			return nil, fmt.Errorf("nat %s: %w", n.Name, err)
		}
		byName[n.Name] = i
	}
	hasProbe := slices.ContainsFunc(t.Public, func(p PublicHost) bool { return p.ProbeServer })
	for _, n := range t.NATs {
		if n.Options.PortMapping && !hasProbe {
			// miniupnpd learns its external address from the probe server
			// by STUN; without it, it refuses every mapping.
			return nil, fmt.Errorf("nat %s: the upnp option needs a public host with a probe server", n.Name)
		}
	}
	order, err := natOrder(t.NATs, byName)
	if err != nil {
		return nil, err
	}
	routerIdx := map[string]int{} // router name → index in nodes
	nextWAN := netip.MustParseAddr("203.0.113.10")
	lanSeq := map[string]int{} // next host octet per upstream LAN
	var nTop, nHome, nCGN int
	for _, i := range order {
		n := t.NATs[i]
		node := Node{Name: n.Name, Kind: KindRouter, Parent: InternetNode}
		opts := n.Options
		node.Options = &opts
		wan := n.WAN
		if n.Upstream == "" {
			node.Prefix, node.Gateway = PublicPrefixNATs, nodes[0].Addrs[1]
			if !wan.IsValid() {
				for used[nextWAN] != "" {
					nextWAN = nextWAN.Next()
				}
				wan = nextWAN
			}
		} else {
			up := nodes[routerIdx[n.Upstream]]
			node.Parent, node.Prefix, node.Gateway = up.Name, up.LAN, up.LAN.Addr().Next()
			if !wan.IsValid() {
				wan = nextLANAddr(up.LAN, lanSeq, used)
			}
		}
		if !node.Prefix.Contains(wan) {
			return nil, fmt.Errorf("nat %s: WAN %v outside its segment %v", n.Name, wan, node.Prefix)
		}
		if err := claim(wan, n.Name); err != nil {
			return nil, err
		}
		node.Addrs = []netip.Addr{wan}
		lan := n.LAN
		if !lan.IsValid() {
			switch {
			case n.CGNAT:
				nCGN++
				lan = netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(nCGN), 0}), 24)
			case n.Upstream != "":
				nHome++
				lan = netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(nHome), 0}), 24)
			default:
				nTop++
				lan = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(nTop), 0}), 24)
			}
		}
		if lan.Bits() > 29 || lan != lan.Masked() || !lan.Addr().Is4() {
			return nil, fmt.Errorf("nat %s: LAN %v must be an IPv4 network of /29 or larger", n.Name, lan)
		}
		if n.CGNAT && !CGNATPrefix.Contains(lan.Addr()) {
			return nil, fmt.Errorf("nat %s: CGNAT LAN %v outside 100.64.0.0/10", n.Name, lan)
		}
		if PublicPrefixHosts.Overlaps(lan) || PublicPrefixNATs.Overlaps(lan) {
			return nil, fmt.Errorf("nat %s: LAN %v overlaps the internet", n.Name, lan)
		}
		for _, j := range routerIdx {
			if other := nodes[j]; other.LAN.Overlaps(lan) {
				return nil, fmt.Errorf("nat %s: LAN %v overlaps %s's LAN", n.Name, lan, other.Name)
			}
		}
		if err := claim(lan.Addr().Next(), n.Name); err != nil {
			return nil, err
		}
		node.LAN = lan
		nodes = append(nodes, node)
		routerIdx[n.Name] = len(nodes) - 1
	}
	for _, i := range order {
		n := t.NATs[i]
		r := nodes[routerIdx[n.Name]]
		lan, gw := r.LAN, r.LAN.Addr().Next()
		for _, h := range n.Hosts {
			if err := check(h); err != nil {
				return nil, err
			}
			a := nextLANAddr(lan, lanSeq, used)
			if !a.IsValid() {
				return nil, fmt.Errorf("nat %s: LAN %v is full", n.Name, lan)
			}
			_ = claim(a, h)
			nodes = append(nodes, Node{Name: h, Kind: KindPrivate, Addrs: []netip.Addr{a},
				Gateway: gw, Parent: n.Name, Prefix: lan})
		}
	}
	return nodes, nil
}

// nextLANAddr returns the next free address of lan from .2 upward.
func nextLANAddr(lan netip.Prefix, seq map[string]int, used map[netip.Addr]string) netip.Addr {
	a := lan.Addr().Next().Next()
	for range seq[lan.String()] {
		a = a.Next()
	}
	for used[a] != "" {
		a = a.Next()
		seq[lan.String()]++
	}
	seq[lan.String()]++
	if !lan.Contains(a) || !lan.Contains(a.Next()) { // keep the broadcast address free
		return netip.Addr{}
	}
	return a
}

func natOrder(nats []NAT, byName map[string]int) ([]int, error) {
	var order []int
	state := make([]int, len(nats)) // 0 new, 1 visiting, 2 done
	var visit func(i int) error
	visit = func(i int) error {
		switch state[i] {
		case 1:
			return fmt.Errorf("nat %s: upstream cycle", nats[i].Name)
		case 2:
			return nil
		}
		state[i] = 1
		if up := nats[i].Upstream; up != "" {
			j, ok := byName[up]
			if !ok {
				return fmt.Errorf("nat %s: unknown upstream %q", nats[i].Name, up)
			}
			if err := visit(j); err != nil {
				return err
			}
		}
		state[i] = 2
		order = append(order, i)
		return nil
	}
	for i := range nats {
		if err := visit(i); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// NATChain returns the routers between a private host and the internet,
// nearest first.
func NATChain(nodes []Node, host string) []Node {
	byName := map[string]Node{}
	for _, n := range nodes {
		byName[n.Name] = n
	}
	var chain []Node
	n, ok := byName[host]
	for ok && n.Parent != InternetNode && n.Parent != "" {
		n, ok = byName[n.Parent]
		if ok {
			chain = append(chain, n)
		}
	}
	return chain
}

// Expected returns the behaviour a private host should observe.
func Expected(nodes []Node, host string) Behaviour {
	var opts []NATOptions
	for _, r := range NATChain(nodes, host) {
		opts = append(opts, *r.Options)
	}
	return ExpectedBehaviour(opts)
}

// PairTopology is two NATs ("a" and "b") with hosts a1..aN and b1..bN, plus a
// probe server "probe".
func PairTopology(a, b NATOptions, hostsPerLAN int) Topology {
	hostsPerLAN = max(hostsPerLAN, 1)
	t := Topology{Name: "pair", Public: []PublicHost{{Name: "probe", ProbeServer: true}}}
	for _, side := range []struct {
		name string
		opts NATOptions
	}{{"a", a}, {"b", b}} {
		n := NAT{Name: side.name, Options: side.opts}
		for i := 1; i <= hostsPerLAN; i++ {
			n.Hosts = append(n.Hosts, fmt.Sprintf("%s%d", side.name, i))
		}
		t.NATs = append(t.NATs, n)
	}
	return t
}

// MatrixTopology has two NATs of every given profile ("<alias>-a", "<alias>-b",
// with hosts "<alias>-a1", "<alias>-b1"), so every ordered pair of profiles,
// including a profile with itself, can be tested between distinct routers.
func MatrixTopology(profiles []NATOptions) Topology {
	t := Topology{Name: "matrix", Public: []PublicHost{{Name: "probe", ProbeServer: true}}}
	for _, o := range profiles {
		for _, side := range []string{"a", "b"} {
			name := o.Profile.Alias + "-" + side
			t.NATs = append(t.NATs, NAT{Name: name, Options: o, Hosts: []string{name + "1"}})
		}
	}
	return t
}

// DoubleTopology is a CGNAT ("cgn", 100.64.1.0/24) with two home NATs behind
// it: "home" (hosts home1, home2) and "home-b" (host homeb1).
func DoubleTopology(cgn, home NATOptions) Topology {
	return Topology{
		Name:   "double",
		Public: []PublicHost{{Name: "probe", ProbeServer: true}},
		NATs: []NAT{
			{Name: "cgn", Options: cgn, CGNAT: true},
			{Name: "home", Options: home, Upstream: "cgn", Hosts: []string{"home1", "home2"}},
			{Name: "home-b", Options: home, Upstream: "cgn", Hosts: []string{"homeb1"}},
		},
	}
}

// ZooTopology has one NAT per profile with hairpinning off and one with it
// on, plus a double NAT: the self-test topology and `classify` default.
func ZooTopology() Topology {
	t := Topology{Name: "zoo", Public: []PublicHost{{Name: "probe", ProbeServer: true}}}
	for _, p := range Profiles() {
		for _, hp := range []bool{false, true} {
			name := p.Alias
			if hp {
				name += "-hp"
			}
			t.NATs = append(t.NATs, NAT{Name: name, Options: NATOptions{Profile: p, Hairpin: hp},
				Hosts: []string{name + "1"}})
		}
	}
	t.NATs = append(t.NATs,
		NAT{Name: "cgn", Options: NATOptions{Profile: PortRestricted, Hairpin: true}, CGNAT: true},
		NAT{Name: "home", Options: NATOptions{Profile: FullCone}, Upstream: "cgn", Hosts: []string{"home1"}},
		NAT{Name: "cgn2", Options: NATOptions{Profile: FullCone}, CGNAT: true},
		NAT{Name: "home2", Options: NATOptions{Profile: Symmetric}, Upstream: "cgn2", Hosts: []string{"home2-1"}},
	)
	return t
}

// TopologyFlags are the knobs of the built-in topologies.
type TopologyFlags struct {
	A, B        string // pair: NAT specs
	CGN, Home   string // double: NAT specs
	HostsPerLAN int
	// Extra NAT options appended to every spec (e.g. "loss=nth:4").
	Extra string
}

// BuiltinTopologies names the topologies Builtin knows, with a description.
func BuiltinTopologies() [][2]string {
	return [][2]string{
		{"pair", "two NATs a and b (specs --a, --b) with hosts a1..aN, b1..bN, probe server"},
		{"matrix", "two NATs of each profile (fc-a, fc-b, ... sym-b) with one host each, probe server"},
		{"double", "CGNAT cgn (--cgn) with two home NATs home, home-b (--home) behind it"},
		{"zoo", "every profile with hairpin off and on, plus two double NATs (self-test)"},
	}
}

// Builtin returns a named built-in topology.
func Builtin(name string, f TopologyFlags) (Topology, error) {
	spec := func(s, def string) (NATOptions, error) {
		if s == "" {
			s = def
		}
		if f.Extra != "" {
			s += "," + f.Extra
		}
		return ParseNATSpec(s)
	}
	switch name {
	case "pair":
		a, err := spec(f.A, "prc")
		if err != nil {
			return Topology{}, fmt.Errorf("--a: %w", err)
		}
		b, err := spec(f.B, "prc")
		if err != nil {
			return Topology{}, fmt.Errorf("--b: %w", err)
		}
		n := f.HostsPerLAN
		if n <= 0 {
			n = 2
		}
		return PairTopology(a, b, n), nil
	case "matrix":
		var ps []NATOptions
		for _, p := range Profiles() {
			o, err := spec(p.Alias, "")
			if err != nil {
				return Topology{}, err
			}
			ps = append(ps, o)
		}
		return MatrixTopology(ps), nil
	case "double":
		c, err := spec(f.CGN, "prc,hairpin")
		if err != nil {
			return Topology{}, fmt.Errorf("--cgn: %w", err)
		}
		h, err := spec(f.Home, "fc")
		if err != nil {
			return Topology{}, fmt.Errorf("--home: %w", err)
		}
		return DoubleTopology(c, h), nil
	case "zoo":
		t := ZooTopology()
		if f.Extra != "" {
			for i := range t.NATs {
				o, err := ParseNATSpec(t.NATs[i].Options.String() + "," + f.Extra)
				if err != nil {
					return Topology{}, err
				}
				t.NATs[i].Options = o
			}
		}
		return t, nil
	}
	var names []string
	for _, b := range BuiltinTopologies() {
		names = append(names, b[0])
	}
	return Topology{}, fmt.Errorf("unknown topology %q (built-in: %s)", name, strings.Join(names, ", "))
}
