// Package dns is the supernode's authoritative DNS server for the name
// suffixes it serves (ela.city, pc2.net, ela.net...). It answers what a
// browser needs to reach a registered name through this supernode:
//
//   - A/AAAA for <label>.<zone> → this supernode's public addresses, or
//     the node's own address when its owner asked for direct DNS;
//   - SOA and NS (with glue) at the zone apex;
//   - TXT at _acme-challenge.<label>.<zone>, from the registry, for
//     ACME DNS-01;
//   - NXDOMAIN (with the SOA for negative caching) for names nobody
//     registered; REFUSED for names outside the zones: it is not a
//     resolver and never recurses.
//
// It uses github.com/miekg/dns (the library under CoreDNS) for the wire
// format and the UDP/TCP servers; this package adds only the zone logic
// and the bounds an Internet-facing server needs: per-source rate limits
// with RRL-style "slip" (a limited UDP source gets every second answer as
// an empty truncated reply, so a real resolver retries over TCP while a
// spoofed victim gets nothing larger than the query), answers truncated
// to the client's EDNS size (TC set), a cap on TCP connections, and read
// and idle timeouts.
package dns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/elacity/pc2/core/metrics"
	"github.com/elacity/pc2/core/ratelimit"
	"github.com/elacity/pc2/gateway/names"
)

// Config is the "dns" section of a supernode's configuration.
type Config struct {
	// Listen is the UDP and TCP address. Default ":53"; dev:
	// "127.0.0.1:0" (a free port).
	Listen string `yaml:"listen"`
	// Addresses are this supernode's public IPv4/IPv6 addresses: the
	// answer for every registered name and for the apex. Required
	// outside dev mode (dev: 127.0.0.1 and ::1).
	Addresses []string `yaml:"addresses"`
	// Nameservers are the NS records of every zone. A name without a
	// dot is a label under each zone (default: ns1, ns2) and gets glue
	// records: its Addresses, or the supernode's.
	Nameservers []NameServer `yaml:"nameservers"`
	// Hosts are labels under every zone that answer with the
	// supernode's addresses without a registration (e.g. www).
	Hosts []string `yaml:"hosts"`
	// Hostmaster is the SOA contact, as a label under the zone or a
	// full mailbox name. Default "hostmaster".
	Hostmaster string `yaml:"hostmaster"`
	// TTL of positive answers (default 60s: names move when nodes do).
	TTL time.Duration `yaml:"ttl"`
	// LiveTTL is the TTL of answers made of the live supernodes of a
	// federation (dns.LiveSupernodes; default 10s): short, so resolvers
	// stop using a supernode soon after it died.
	LiveTTL time.Duration `yaml:"liveTTL"`
	// NegativeTTL is the SOA minimum: how long NXDOMAIN is cached.
	NegativeTTL time.Duration `yaml:"negativeTTL"`
	// MaxUDPSize caps UDP answers whatever the client advertises
	// (default 1232, the DNS flag day 2020 value that avoids
	// fragmentation).
	MaxUDPSize int `yaml:"maxUDPSize"`
	// RateLimit is per source address (IPv6: per /64).
	RateLimit struct {
		Rate  float64 `yaml:"rate"`  // queries per second, default 50
		Burst int     `yaml:"burst"` // default 100
	} `yaml:"rateLimit"`
	// MaxTCPConns caps concurrent TCP connections (default 256).
	MaxTCPConns int `yaml:"maxTCPConns"`
}

// NameServer is one NS record of the zones.
type NameServer struct {
	Name      string   `yaml:"name"`
	Addresses []string `yaml:"addresses"`
}

// DefaultConfig returns the defaults; dev mode listens on a free
// loopback port and answers with loopback addresses.
func DefaultConfig(dev bool) Config {
	c := Config{
		Listen:      ":53",
		Nameservers: []NameServer{{Name: "ns1"}, {Name: "ns2"}},
		Hostmaster:  "hostmaster",
		TTL:         60 * time.Second,
		LiveTTL:     10 * time.Second,
		NegativeTTL: 60 * time.Second,
		MaxUDPSize:  1232,
		MaxTCPConns: 256,
	}
	c.RateLimit.Rate, c.RateLimit.Burst = 50, 100
	if dev {
		c.Listen = "127.0.0.1:0"
		c.Addresses = []string{"127.0.0.1", "::1"}
	}
	return c
}

// zone is one served suffix, prepared for answering.
type zone struct {
	apex  string // "ela.city."
	soa   *mdns.SOA
	ns    []mdns.RR
	glue  map[string][]netip.Addr // lowercase fqdn of in-zone name servers
	hosts map[string]bool         // labels answered with own addresses
}

// Handler answers queries. It is safe for concurrent use.
type Handler struct {
	src     Source
	rules   *names.Rules
	zones   map[string]*zone
	own     []netip.Addr
	ttl     uint32
	liveTTL uint32
	maxUDP  int
	limiter *ratelimit.Limiter[netip.Addr]
	slip    atomic.Uint32 // counts limited UDP queries for the 1-in-2 slip
	m       *dnsMetrics
	now     func() time.Time
}

// NewHandler prepares the zones of src with cfg. now is the clock of the
// rate limiter (nil: time.Now); m may be nil.
func NewHandler(src Source, cfg Config, m *metrics.Registry, now func() time.Time) (*Handler, error) {
	zones := src.Zones()
	if len(zones) == 0 {
		return nil, errors.New("dns: the name source serves no zones (start the registry before the DNS service)")
	}
	rules, err := names.NewRules(zones)
	if err != nil {
		return nil, fmt.Errorf("dns: %w", err)
	}
	own, err := parseAddrs(cfg.Addresses)
	if err != nil {
		return nil, fmt.Errorf("dns: addresses: %w", err)
	}
	if len(own) == 0 {
		return nil, errors.New("dns: no addresses: set the supernode's public addresses")
	}
	if now == nil {
		now = time.Now
	}
	h := &Handler{
		src: src, rules: rules, zones: map[string]*zone{}, own: own,
		ttl: uint32(cfg.TTL / time.Second), liveTTL: uint32(cfg.LiveTTL / time.Second), maxUDP: cfg.MaxUDPSize,
		limiter: ratelimit.New[netip.Addr](cfg.RateLimit.Rate, cfg.RateLimit.Burst, 100_000),
		m:       newDNSMetrics(m), now: now,
	}
	if h.maxUDP < mdns.MinMsgSize {
		h.maxUDP = mdns.MinMsgSize
	}
	serial := uint32(now().Unix())
	for _, z := range rules.Suffixes() {
		apex := mdns.Fqdn(z)
		zn := &zone{apex: apex, glue: map[string][]netip.Addr{}, hosts: map[string]bool{}}
		for _, l := range cfg.Hosts {
			zn.hosts[strings.ToLower(l)] = true
		}
		var primary string
		for _, ns := range cfg.Nameservers {
			name := strings.ToLower(ns.Name)
			if !strings.Contains(strings.TrimSuffix(name, "."), ".") {
				name = name + "." + apex
			}
			name = mdns.Fqdn(name)
			if primary == "" {
				primary = name
			}
			zn.ns = append(zn.ns, &mdns.NS{Hdr: hdr(apex, mdns.TypeNS, 3600), Ns: name})
			if mdns.IsSubDomain(apex, name) {
				addrs, err := parseAddrs(ns.Addresses)
				if err != nil {
					return nil, fmt.Errorf("dns: nameserver %s: %w", ns.Name, err)
				}
				if len(addrs) == 0 {
					addrs = own
				}
				zn.glue[name] = addrs
			}
		}
		if primary == "" {
			return nil, errors.New("dns: no nameservers")
		}
		mbox := cfg.Hostmaster
		if !strings.Contains(strings.TrimSuffix(mbox, "."), ".") {
			mbox = mbox + "." + apex
		}
		zn.soa = &mdns.SOA{
			Hdr: hdr(apex, mdns.TypeSOA, 3600), Ns: primary, Mbox: mdns.Fqdn(mbox),
			Serial: serial, Refresh: 3600, Retry: 600, Expire: 604800, Minttl: uint32(cfg.NegativeTTL / time.Second),
		}
		h.zones[z] = zn
	}
	return h, nil
}

func parseAddrs(ss []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range ss {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, err
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}

func hdr(name string, t uint16, ttl uint32) mdns.RR_Header {
	return mdns.RR_Header{Name: name, Rrtype: t, Class: mdns.ClassINET, Ttl: ttl}
}

// ServeDNS implements mdns.Handler.
func (h *Handler) ServeDNS(w mdns.ResponseWriter, req *mdns.Msg) {
	src, tcp := remote(w.RemoteAddr())
	resp := h.Answer(req, src, tcp)
	if resp == nil {
		return
	}
	_ = w.WriteMsg(resp)
}

func remote(a net.Addr) (netip.Addr, bool) {
	switch a := a.(type) {
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap(), false
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap(), true
	}
	return netip.Addr{}, false
}

// sourceKey groups IPv6 sources by /64.
func sourceKey(a netip.Addr) netip.Addr {
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// Answer returns the response to req from src, already truncated to what
// the transport allows, or nil when nothing must be sent.
func (h *Handler) Answer(req *mdns.Msg, src netip.Addr, tcp bool) *mdns.Msg {
	if req.Response {
		return nil
	}
	if !h.limiter.Allow(sourceKey(src), h.now()) {
		if tcp {
			h.m.limited.Inc()
			return h.fail(req, mdns.RcodeRefused)
		}
		// Slip: answer every second limited query with an empty
		// truncated reply (no larger than the query), drop the rest.
		if h.slip.Add(1)%2 == 0 {
			h.m.limited.Inc()
			return nil
		}
		h.m.slipped.Inc()
		resp := new(mdns.Msg).SetReply(req)
		resp.Truncated = true
		return resp
	}
	return h.answerUnlimited(req, tcp)
}

// answerUnlimited is Answer after the rate limit (and the benchmark's
// entry point).
func (h *Handler) answerUnlimited(req *mdns.Msg, tcp bool) *mdns.Msg {
	resp := h.answer(req)
	h.m.rcode(resp.Rcode)
	limit := mdns.MaxMsgSize
	if !tcp {
		limit = mdns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			limit = min(max(int(opt.UDPSize()), mdns.MinMsgSize), h.maxUDP)
		}
	}
	resp.Truncate(limit)
	if resp.Truncated {
		h.m.truncated.Inc()
	}
	return resp
}

func (h *Handler) fail(req *mdns.Msg, rcode int) *mdns.Msg {
	resp := new(mdns.Msg).SetRcode(req, rcode)
	if len(req.Question) != 1 {
		resp.Question = nil
	}
	return resp
}

func (h *Handler) answer(req *mdns.Msg) *mdns.Msg {
	if req.Opcode != mdns.OpcodeQuery {
		return h.fail(req, mdns.RcodeNotImplemented)
	}
	if len(req.Question) != 1 {
		return h.fail(req, mdns.RcodeFormatError)
	}
	opt := req.IsEdns0()
	if opt != nil && opt.Version() != 0 {
		resp := h.fail(req, mdns.RcodeBadVers)
		resp.SetEdns0(uint16(h.maxUDP), false)
		return resp
	}
	resp := new(mdns.Msg).SetReply(req)
	if opt != nil {
		resp.SetEdns0(uint16(h.maxUDP), false)
	}
	q := req.Question[0]
	if q.Qclass != mdns.ClassINET && q.Qclass != mdns.ClassANY {
		resp.Rcode = mdns.RcodeRefused
		return resp
	}
	if q.Qtype == mdns.TypeAXFR || q.Qtype == mdns.TypeIXFR {
		resp.Rcode = mdns.RcodeRefused // no zone transfers: the zone is the registry
		return resp
	}
	name := strings.ToLower(strings.TrimSuffix(q.Name, "."))
	head, suffix, ok := h.rules.Zone(name)
	if !ok {
		resp.Rcode = mdns.RcodeRefused // not ours: not a resolver
		return resp
	}
	zn := h.zones[suffix]
	resp.Authoritative = true
	owner := q.Name

	switch {
	case head == "":
		switch q.Qtype {
		case mdns.TypeSOA:
			resp.Answer = append(resp.Answer, rename(zn.soa, owner))
		case mdns.TypeNS:
			for _, ns := range zn.ns {
				resp.Answer = append(resp.Answer, rename(ns, owner))
			}
			h.addGlue(resp, zn)
		case mdns.TypeANY:
			resp.Answer = append(resp.Answer, rename(zn.soa, owner))
			for _, ns := range zn.ns {
				resp.Answer = append(resp.Answer, rename(ns, owner))
			}
			resp.Answer = h.addrs(resp.Answer, owner, mdns.TypeANY, h.own)
		default:
			resp.Answer = h.addrs(resp.Answer, owner, q.Qtype, h.own)
		}
	case !strings.Contains(head, "."):
		if glue, ok := zn.glue[name+"."]; ok {
			resp.Answer = h.addrs(resp.Answer, owner, q.Qtype, glue)
			break
		}
		if zn.hosts[head] {
			resp.Answer = h.addrs(resp.Answer, owner, q.Qtype, h.own)
			break
		}
		direct, ok := h.src.LookupName(name)
		if !ok {
			return h.nxdomain(resp, zn)
		}
		addrs, ttl := h.own, h.ttl
		if live, ok := h.src.(LiveSupernodes); ok {
			if a := live.LiveAddrs(); len(a) > 0 {
				addrs, ttl = a, min(h.ttl, h.liveTTL)
			}
		}
		if len(direct) > 0 {
			addrs, ttl = direct, h.ttl
		}
		resp.Answer = h.addrsTTL(resp.Answer, owner, q.Qtype, addrs, ttl)
	case strings.HasPrefix(head, "_acme-challenge.") && !strings.Contains(head[len("_acme-challenge."):], "."):
		values, _ := h.src.ACMEChallenge(name[len("_acme-challenge."):])
		if len(values) == 0 {
			return h.nxdomain(resp, zn)
		}
		if q.Qtype == mdns.TypeTXT || q.Qtype == mdns.TypeANY {
			for _, v := range values {
				resp.Answer = append(resp.Answer, &mdns.TXT{Hdr: hdr(owner, mdns.TypeTXT, h.ttl), Txt: []string{v}})
			}
		}
	default:
		return h.nxdomain(resp, zn)
	}
	if len(resp.Answer) == 0 {
		resp.Ns = append(resp.Ns, h.negSOA(zn)) // NODATA
	}
	return resp
}

// addrs appends the A and/or AAAA records of addrs that qtype asks for.
func (h *Handler) addrs(rrs []mdns.RR, owner string, qtype uint16, addrs []netip.Addr) []mdns.RR {
	return h.addrsTTL(rrs, owner, qtype, addrs, h.ttl)
}

func (h *Handler) addrsTTL(rrs []mdns.RR, owner string, qtype uint16, addrs []netip.Addr, ttl uint32) []mdns.RR {
	for _, a := range addrs {
		switch {
		case a.Is4() && (qtype == mdns.TypeA || qtype == mdns.TypeANY):
			b := a.As4()
			rrs = append(rrs, &mdns.A{Hdr: hdr(owner, mdns.TypeA, ttl), A: net.IP(b[:])})
		case a.Is6() && (qtype == mdns.TypeAAAA || qtype == mdns.TypeANY):
			b := a.As16()
			rrs = append(rrs, &mdns.AAAA{Hdr: hdr(owner, mdns.TypeAAAA, ttl), AAAA: net.IP(b[:])})
		}
	}
	return rrs
}

func (h *Handler) addGlue(resp *mdns.Msg, zn *zone) {
	for _, rr := range zn.ns {
		name := rr.(*mdns.NS).Ns
		if glue, ok := zn.glue[name]; ok {
			resp.Extra = h.addrs(resp.Extra, name, mdns.TypeANY, glue)
		}
	}
}

func (h *Handler) nxdomain(resp *mdns.Msg, zn *zone) *mdns.Msg {
	resp.Rcode = mdns.RcodeNameError
	resp.Answer = nil
	resp.Ns = append(resp.Ns, h.negSOA(zn))
	return resp
}

// negSOA is the SOA for negative answers, its TTL capped by the minimum
// (RFC 2308 §5).
func (h *Handler) negSOA(zn *zone) mdns.RR {
	soa := *zn.soa
	soa.Hdr.Ttl = min(soa.Hdr.Ttl, soa.Minttl)
	return &soa
}

// rename copies rr with owner as its name (keeping the query's case).
func rename(rr mdns.RR, owner string) mdns.RR {
	c := mdns.Copy(rr)
	c.Header().Name = owner
	return c
}
