package natlab

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Mapping is a NAT's mapping behaviour (RFC 4787 §4.1).
type Mapping string

// Mapping behaviours.
const (
	MappingNone Mapping = "none" // no translation observed (public host)
	EIM         Mapping = "EIM"  // endpoint-independent
	ADM         Mapping = "ADM"  // address-dependent
	APDM        Mapping = "APDM" // address-and-port-dependent
)

// Filtering is a NAT's filtering behaviour (RFC 4787 §5).
type Filtering string

// Filtering behaviours.
const (
	EIF  Filtering = "EIF"  // endpoint-independent
	ADF  Filtering = "ADF"  // address-dependent
	APDF Filtering = "APDF" // address-and-port-dependent
)

func mappingRank(m Mapping) int {
	return slices.Index([]Mapping{MappingNone, EIM, ADM, APDM}, m)
}

func filteringRank(f Filtering) int {
	return slices.Index([]Filtering{"", EIF, ADF, APDF}, f)
}

// Profile is a named NAT behaviour, implemented by one nftables ruleset.
type Profile struct {
	Name        string
	Alias       string
	Mapping     Mapping
	Filtering   Filtering
	Description string
}

// The built-in profiles (nat-dht.md §A3). Linux has no address-dependent
// (ADM) or sequential-port symmetric mode, so "symmetric" is APDM with a
// random port per new destination.
var (
	FullCone = Profile{"full-cone", "fc", EIM, EIF,
		"EIM+EIF: port-preserving masquerade + learned public-port map used to DNAT any inbound"}
	AddrRestricted = Profile{"addr-restricted", "arc", EIM, ADF,
		"EIM+ADF: as full cone, inbound only from IPs the inside endpoint sent to"}
	PortRestricted = Profile{"port-restricted", "prc", EIM, APDF,
		"EIM+APDF: plain port-preserving masquerade (the common home router)"}
	Symmetric = Profile{"symmetric", "sym", APDM, APDF,
		"APDM+APDF: masquerade fully-random, a new random port per destination ip:port"}
)

// Profiles lists the built-in profiles in punchability order.
func Profiles() []Profile {
	return []Profile{FullCone, AddrRestricted, PortRestricted, Symmetric}
}

// ProfileByName finds a profile by name or alias.
func ProfileByName(name string) (Profile, error) {
	for _, p := range Profiles() {
		if name == p.Name || name == p.Alias {
			return p, nil
		}
	}
	return Profile{}, fmt.Errorf("unknown NAT profile %q (want one of fc, arc, prc, sym or their long names)", name)
}

// LossMode selects how a NAT drops packets.
type LossMode string

// Loss modes.
const (
	LossNone   LossMode = ""
	LossNth    LossMode = "nth"    // deterministic: drop packet 0 of every N (CI)
	LossRandom LossMode = "random" // random with probability PerMille/1000 (research)
)

// Loss drops forwarded packets at a NAT, independently in each direction (one
// counter per direction, so deterministic loss stays deterministic).
type Loss struct {
	Mode     LossMode
	Every    int // LossNth: drop one packet of every Every (≥ 2)
	PerMille int // LossRandom: drop probability in 1/1000 (1..999)
}

func (l Loss) String() string {
	switch l.Mode {
	case LossNth:
		return fmt.Sprintf("nth:%d", l.Every)
	case LossRandom:
		return fmt.Sprintf("random:%g%%", float64(l.PerMille)/10)
	}
	return "none"
}

func (l Loss) validate() error {
	switch l.Mode {
	case LossNone:
		return nil
	case LossNth:
		if l.Every < 2 || l.Every > 1_000_000 {
			return fmt.Errorf("loss nth:%d: want 2..1000000", l.Every)
		}
	case LossRandom:
		if l.PerMille < 1 || l.PerMille > 999 {
			return fmt.Errorf("loss random %d‰: want 1..999", l.PerMille)
		}
	default:
		return fmt.Errorf("unknown loss mode %q", l.Mode)
	}
	return nil
}

// ParseLoss parses "nth:4" (drop every 4th packet) or "random:5%" / "random:0.05".
func ParseLoss(s string) (Loss, error) {
	mode, arg, ok := strings.Cut(s, ":")
	if !ok {
		return Loss{}, fmt.Errorf("loss %q: want nth:N or random:P%%", s)
	}
	var l Loss
	switch mode {
	case "nth":
		n, err := strconv.Atoi(arg)
		if err != nil {
			return Loss{}, fmt.Errorf("loss %q: %w", s, err)
		}
		l = Loss{Mode: LossNth, Every: n}
	case "random":
		var p float64
		var err error
		if pct, ok := strings.CutSuffix(arg, "%"); ok {
			p, err = strconv.ParseFloat(pct, 64)
			p /= 100
		} else {
			p, err = strconv.ParseFloat(arg, 64)
		}
		if err != nil {
			return Loss{}, fmt.Errorf("loss %q: %w", s, err)
		}
		l = Loss{Mode: LossRandom, PerMille: int(p*1000 + 0.5)}
	default:
		return Loss{}, fmt.Errorf("loss %q: unknown mode %q", s, mode)
	}
	return l, l.validate()
}

// NATOptions is everything that describes one NAT router's behaviour.
type NATOptions struct {
	Profile Profile
	Hairpin bool
	// UDPTimeout sets the router's conntrack UDP timeouts (unreplied and
	// stream) and the lifetime of learned mappings; 0 keeps the kernel
	// defaults (30 s / 120 s) and a 120 s mapping lifetime.
	UDPTimeout time.Duration
	Loss       Loss
	// RateKbit limits each direction with a tbf qdisc (0 = unlimited).
	RateKbit int
	// PortMapping starts miniupnpd (UPnP IGD + NAT-PMP) on the router.
	PortMapping bool
}

// ParseNATSpec parses a compact NAT description used by the CLI and built-in
// topologies: a profile name followed by comma-separated options, e.g.
// "prc", "fc,hairpin", "sym,loss=nth:4,rate=2mbit,timeout=5s,upnp".
func ParseNATSpec(spec string) (NATOptions, error) {
	parts := strings.Split(spec, ",")
	p, err := ProfileByName(strings.TrimSpace(parts[0]))
	if err != nil {
		return NATOptions{}, err
	}
	o := NATOptions{Profile: p}
	for _, part := range parts[1:] {
		key, val, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch key {
		case "hairpin":
			o.Hairpin = true
		case "nohairpin":
			o.Hairpin = false
		case "upnp", "portmap":
			o.PortMapping = true
		case "loss":
			if o.Loss, err = ParseLoss(val); err != nil {
				return NATOptions{}, err
			}
		case "rate":
			if o.RateKbit, err = ParseRate(val); err != nil {
				return NATOptions{}, err
			}
		case "timeout":
			if o.UDPTimeout, err = time.ParseDuration(val); err != nil {
				return NATOptions{}, fmt.Errorf("timeout %q: %w", val, err)
			}
		default:
			return NATOptions{}, fmt.Errorf("NAT spec %q: unknown option %q (want hairpin, upnp, loss=, rate=, timeout=)", spec, key)
		}
	}
	return o, o.validate()
}

// String renders o in the ParseNATSpec syntax.
func (o NATOptions) String() string {
	s := o.Profile.Alias
	if o.Hairpin {
		s += ",hairpin"
	}
	if o.Loss.Mode != LossNone {
		s += ",loss=" + o.Loss.String()
	}
	if o.RateKbit > 0 {
		s += fmt.Sprintf(",rate=%dkbit", o.RateKbit)
	}
	if o.UDPTimeout > 0 {
		s += ",timeout=" + o.UDPTimeout.String()
	}
	if o.PortMapping {
		s += ",upnp"
	}
	return s
}

func (o NATOptions) validate() error {
	if o.Profile.Name == "" {
		return fmt.Errorf("NAT has no profile")
	}
	if _, err := ProfileByName(o.Profile.Name); err != nil {
		return err
	}
	if err := o.Loss.validate(); err != nil {
		return err
	}
	if o.RateKbit < 0 || o.RateKbit > 100_000_000 {
		return fmt.Errorf("rate %d kbit out of range", o.RateKbit)
	}
	if o.UDPTimeout < 0 || (o.UDPTimeout > 0 && o.UDPTimeout < time.Second) || o.UDPTimeout > 24*time.Hour {
		return fmt.Errorf("udp timeout %v: want 1s..24h", o.UDPTimeout)
	}
	return nil
}

// ParseRate parses a tc-style rate: "500kbit", "10mbit", "1gbit" or plain kbit.
func ParseRate(s string) (int, error) {
	mult := 1
	num := s
	switch {
	case strings.HasSuffix(s, "gbit"):
		mult, num = 1_000_000, strings.TrimSuffix(s, "gbit")
	case strings.HasSuffix(s, "mbit"):
		mult, num = 1000, strings.TrimSuffix(s, "mbit")
	case strings.HasSuffix(s, "kbit"):
		num = strings.TrimSuffix(s, "kbit")
	}
	n, err := strconv.Atoi(num)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("rate %q: want e.g. 500kbit, 10mbit", s)
	}
	return n * mult, nil
}

// mappingLifetime is how long learned public-port entries live without traffic.
func (o NATOptions) mappingLifetime() time.Duration {
	if o.UDPTimeout > 0 {
		return o.UDPTimeout
	}
	return 120 * time.Second
}

// ruleset returns the nftables ruleset for a router whose WAN interface is
// "wan0" with address wan and whose LAN bridge "lan0" serves lan.
//
// Pitfalls from nat-dht.md §A3 applied here: unsolicited inbound to the router
// itself is silently dropped (no ICMP, no confirmed conntrack entry that would
// later force a port re-map); learned mappings are keyed by the public port
// after SNAT.
//
// Beyond §A3, the EIM profiles keep the mapping of an inside endpoint in a
// reverse map and reuse it for its new flows, and refuse to hand a public
// port that another inside endpoint owns to a new one. Plain Linux SNAT only
// keeps whole reply tuples unique, so two hosts sending from the same port
// (every PC2 node uses UDP 39001) to different destinations both get the same
// public port ("port overloading", forbidden by RFC 4787 REQ-3), and a full
// cone could then deliver inbound traffic to only one of them.
//
// The router's own traffic (miniupnpd's STUN test) is neither translated nor
// learned: the router owns its WAN address, and a symmetric profile would
// otherwise re-map the test's ports and make miniupnpd see a NAT in front of
// itself. With PortMapping, answers from stunServers (the lab's probe server
// endpoints) may reach the router unsolicited: the STUN test asks for answers
// from the server's other address and port.
func (o NATOptions) ruleset(wan netip.Addr, lan netip.Prefix, stunServers []netip.AddrPort) string {
	var b strings.Builder
	life := int(o.mappingLifetime() / time.Second)
	eim := o.Profile.Mapping == EIM
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("table ip natlab {")
	// pmap: public port → inside endpoint. Cone profiles use it for inbound
	// DNAT; every profile uses it for hairpinning.
	w("\tmap pmap { type inet_proto . inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout %ds; }", life)
	if eim {
		// rmap: inside endpoint → public endpoint; owned: public ports in use.
		w("\tmap rmap { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout %ds; }", life)
		w("\tset owned { type inet_proto . inet_service; flags dynamic,timeout; timeout %ds; }", life)
	}
	if o.Profile.Filtering == ADF {
		w("\tset contacted { type ipv4_addr . inet_proto . inet_service; flags dynamic,timeout; timeout %ds; }", life)
	}

	// prerouting: inbound DNAT for cone profiles, hairpin DNAT from the LAN.
	w("\tchain pre {\n\t\ttype nat hook prerouting priority dstnat; policy accept;")
	switch o.Profile.Filtering {
	case EIF:
		w("\t\tiifname \"wan0\" ip daddr %s meta l4proto { tcp, udp } dnat ip to meta l4proto . th dport map @pmap", wan)
	case ADF:
		w("\t\tiifname \"wan0\" ip daddr %s ip saddr . meta l4proto . th dport @contacted dnat ip to meta l4proto . th dport map @pmap", wan)
	}
	if o.Hairpin {
		w("\t\tiifname \"lan0\" ip daddr %s meta l4proto { tcp, udp } dnat ip to meta l4proto . th dport map @pmap", wan)
	}
	w("\t}")

	// postrouting: SNAT.
	w("\tchain post {\n\t\ttype nat hook postrouting priority srcnat; policy accept;")
	w("\t\toifname \"wan0\" ip saddr %s accept", wan) // the router's own traffic
	if o.Hairpin {
		// Hairpinned packets carry the sender's external address (RFC 4787 REQ-9).
		w("\t\tip saddr %s ip daddr %s ct status dnat snat ip to %s", lan.Masked(), lan.Masked(), wan)
	}
	if eim {
		// 1. the inside endpoint already has a mapping: reuse it;
		// 2. its port number is owned by another endpoint: pick a random port;
		// 3. otherwise preserve the port when the kernel can.
		w("\t\toifname \"wan0\" meta l4proto { tcp, udp } snat ip to ip saddr . meta l4proto . th sport map @rmap")
		w("\t\toifname \"wan0\" meta l4proto { tcp, udp } meta l4proto . th sport @owned snat ip to %s:1024-65535 fully-random", wan)
		w("\t\toifname \"wan0\" snat ip to %s", wan)
	} else {
		w("\t\toifname \"wan0\" meta l4proto { tcp, udp } snat ip to %s:1024-65535 fully-random", wan)
		w("\t\toifname \"wan0\" snat ip to %s fully-random", wan)
	}
	w("\t}")

	// learn (after SNAT, so th sport is the public port). The inside endpoint
	// is the original source for flows that started inside and the reply
	// source for flows that started outside (a cone DNAT).
	w("\tchain learn {\n\t\ttype filter hook postrouting priority 300; policy accept;")
	w("\t\toifname \"wan0\" ct original ip saddr %s accept", wan) // the router's own flows
	for _, dir := range []string{"original", "reply"} {
		w("\t\toifname \"wan0\" meta l4proto { tcp, udp } ct direction %s update @pmap { meta l4proto . th sport timeout %ds : ct %s ip saddr . ct %s proto-src }", dir, life, dir, dir)
		if eim {
			w("\t\toifname \"wan0\" meta l4proto { tcp, udp } ct direction %s update @rmap { ct %s ip saddr . meta l4proto . ct %s proto-src timeout %ds : ip saddr . th sport }", dir, dir, dir, life)
		}
	}
	if eim {
		w("\t\toifname \"wan0\" meta l4proto { tcp, udp } update @owned { meta l4proto . th sport timeout %ds }", life)
	}
	if o.Profile.Filtering == ADF {
		w("\t\toifname \"wan0\" meta l4proto { tcp, udp } update @contacted { ip daddr . meta l4proto . th sport timeout %ds }", life)
	}
	w("\t}")

	// Silent drop of unsolicited inbound to the router itself (pitfall 1),
	// invalid packets included: a stray TCP segment (a late SYN-ACK of an
	// abandoned connect, say) that matches no DNAT would otherwise reach
	// the router's own stack and be answered with a RST, which kills a
	// TCP hole punch in progress; home routers drop such packets too.
	w("\tchain input {\n\t\ttype filter hook input priority 0; policy accept;")
	if o.PortMapping {
		for _, ap := range stunServers {
			w("\t\tiifname \"wan0\" ip saddr %s udp sport %d accept", ap.Addr(), ap.Port())
		}
	}
	w("\t\tiifname \"wan0\" ct state { new, invalid } drop")
	w("\t}")

	// Loss: one rule (and one counter) per direction.
	if o.Loss.Mode != LossNone {
		w("\tchain loss {\n\t\ttype filter hook forward priority -10; policy accept;")
		for _, dir := range []string{"iifname \"wan0\"", "oifname \"wan0\""} {
			switch o.Loss.Mode {
			case LossNth:
				w("\t\t%s numgen inc mod %d 0 counter drop", dir, o.Loss.Every)
			case LossRandom:
				w("\t\t%s numgen random mod 1000 < %d counter drop", dir, o.Loss.PerMille)
			}
		}
		w("\t}")
	}
	w("}")
	return b.String()
}

// Behaviour is what a host behind one or more NATs should observe.
type Behaviour struct {
	Mapping   Mapping
	Filtering Filtering
	Hairpin   bool
}

func (b Behaviour) String() string {
	h := "no"
	if b.Hairpin {
		h = "yes"
	}
	return fmt.Sprintf("mapping=%s filtering=%s hairpin=%s", b.Mapping, b.Filtering, h)
}

// ExpectedBehaviour combines a chain of NATs (nearest first) into what a host
// behind them observes from the internet: the most dependent mapping and the
// strictest filtering of any NAT on the path. Hairpinning toward the
// outermost external address needs the outermost NAT to hairpin and every
// inner NAT to let the hairpinned packet in, which only endpoint-independent
// filtering guarantees.
func ExpectedBehaviour(chain []NATOptions) Behaviour {
	b := Behaviour{Mapping: MappingNone}
	if len(chain) == 0 {
		return b
	}
	for _, n := range chain {
		if mappingRank(n.Profile.Mapping) > mappingRank(b.Mapping) {
			b.Mapping = n.Profile.Mapping
		}
		if filteringRank(n.Profile.Filtering) > filteringRank(b.Filtering) {
			b.Filtering = n.Profile.Filtering
		}
	}
	outer := chain[len(chain)-1]
	b.Hairpin = outer.Hairpin
	for _, n := range chain[:len(chain)-1] {
		if n.Profile.Filtering != EIF || n.Profile.Mapping != EIM {
			b.Hairpin = false
		}
	}
	return b
}
