package node

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/elacity/pc2/core/identity"
)

// DefaultPort is Boson's DHT port.
const DefaultPort = 39001

// Dialects a node can be configured with.
const (
	// DialectV3 speaks only Boson 3.1 (v3 framing and bodies).
	DialectV3 = "v3"
	// DialectCompat speaks 3.1 natively and Boson 2.0.x to peers that need
	// it: v2 datagrams are accepted and answered in v2, and a peer that
	// never answered v3 is retried in v2 after a v3 timeout. A peer seen
	// speaking v3 is never sent v2 (v2 reuses one nonce per node pair).
	DialectCompat = "compat"
)

// Config is the "dht" section of the configuration file.
type Config struct {
	// Port is the UDP port of both families (default 39001; 0 picks one).
	Port int `yaml:"port"`
	// Bind4 is the IPv4 address to listen on ("0.0.0.0"), or "off".
	Bind4 string `yaml:"bind4"`
	// Bind6 is the IPv6 address to listen on ("::"), or "off". When it is
	// the default and the host has no IPv6, the node runs IPv4 only.
	Bind6 string `yaml:"bind6"`
	// K is the bucket and result size (Boson: 16; 4..128).
	K int `yaml:"k"`
	// Alpha is the lookup concurrency (Boson: 3; 1..32).
	Alpha int `yaml:"alpha"`
	// Dialect is "v3" or "compat"; empty means v3, or compat when
	// PublicNetwork is on (today's public network speaks v2).
	Dialect string `yaml:"dialect"`
	// Bootstrap lists nodes to join through, as id@host:port.
	Bootstrap []string `yaml:"bootstrap"`
	// PublicNetwork adds the public Boson bootstrap nodes to Bootstrap.
	PublicNetwork bool `yaml:"publicNetwork"`
	// DeveloperMode admits loopback and private addresses (tests, labs).
	DeveloperMode bool `yaml:"developerMode"`
	// Workers is the number of sockets per family (default: one per CPU).
	Workers int `yaml:"workers"`
	// RateLimit bounds the packets one source may send.
	RateLimit RateLimit `yaml:"rateLimit"`
	// MaxRecords bounds the values and peer records stored for others.
	MaxRecords int `yaml:"maxRecords"`
	// Client runs a short-lived node that looks up and publishes but is
	// kept out of others' routing tables (a user node behind NAT).
	Client bool `yaml:"client"`
}

// RateLimit is a token bucket per source: per IPv4 address or IPv6 /64,
// with 8 times as much per IPv4 /24 (and per address:port for the
// loopback and private sources of developer mode). The node holds its own
// calls to each destination to the same budget.
type RateLimit struct {
	PacketsPerSecond float64 `yaml:"packetsPerSecond"`
	Burst            int     `yaml:"burst"`
}

// DefaultConfig returns Boson's defaults; dev selects developer settings:
// loopback addresses, a free port, developer mode.
func DefaultConfig(dev bool) Config {
	c := Config{
		Port:      DefaultPort,
		Bind4:     "0.0.0.0",
		Bind6:     "::",
		K:         16,
		Alpha:     3,
		RateLimit: RateLimit{PacketsPerSecond: 32, Burst: 512},
	}
	if dev {
		c.Port = 0
		c.Bind4 = "127.0.0.1"
		c.Bind6 = "::1"
		c.DeveloperMode = true
	}
	return c
}

// PublicBootstrap is the list of public Boson bootstrap nodes
// (shared/protocols/boson.md §7.1, the nodes every Boson configuration
// lists). They speak v2. They are used only with PublicNetwork.
var PublicBootstrap = []string{
	"HZXXs9LTfNQjrDKvvexRhuMk8TTJhYCfrHwaj3jUzuhZ@155.138.245.211:39001",
	"6o6LkHgLyD5sYyW9iN5LNRYnUoX29jiYauQ5cDjhCpWQ@45.32.138.246:39001",
	"8grFdb2f6LLJajHwARvXC95y73WXEanNS1rbBAZYbC5L@140.82.57.197:39001",
	"4A6UDpARbKBJZmW5s6CmGDgeNmTxWFoGUi2Z5C4z7E41@66.42.74.13:39001",
}

// ResolvedDialect returns the dialect in effect.
func (c *Config) ResolvedDialect() string {
	if c.Dialect != "" {
		return c.Dialect
	}
	if c.PublicNetwork {
		return DialectCompat
	}
	return DialectV3
}

// FieldError is a problem with one field of the section.
type FieldError struct {
	Field string // relative to the section, e.g. "rateLimit"
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Validate checks c; every problem is a *FieldError (joined).
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	if c.Port < 0 || c.Port > 65535 {
		bad("port", "%d is not a port number", c.Port)
	}
	for _, b := range []struct{ field, v string }{{"bind4", c.Bind4}, {"bind6", c.Bind6}} {
		if b.v == "off" {
			continue
		}
		a, err := netip.ParseAddr(b.v)
		switch {
		case err != nil:
			bad(b.field, "%q is not an IP address or off", b.v)
		case b.field == "bind4" && !a.Is4():
			bad(b.field, "%q is not an IPv4 address", b.v)
		case b.field == "bind6" && (!a.Is6() || a.Is4In6()):
			bad(b.field, "%q is not an IPv6 address", b.v)
		}
	}
	if c.Bind4 == "off" && c.Bind6 == "off" {
		bad("bind4", "both families are off")
	}
	if c.K < 4 || c.K > 128 {
		bad("k", "%d is outside 4..128", c.K)
	}
	if c.Alpha < 1 || c.Alpha > 32 {
		bad("alpha", "%d is outside 1..32", c.Alpha)
	}
	switch c.Dialect {
	case "", DialectV3, DialectCompat:
	default:
		bad("dialect", "%q is not one of v3, compat", c.Dialect)
	}
	for i, s := range c.Bootstrap {
		if _, err := ParseBootstrap(s); err != nil {
			bad("bootstrap", "entry %d: %v", i+1, err)
		}
	}
	if c.Workers < 0 || c.Workers > 256 {
		bad("workers", "%d is outside 0..256", c.Workers)
	}
	if c.RateLimit.PacketsPerSecond <= 0 || c.RateLimit.Burst < 1 {
		bad("rateLimit", "packetsPerSecond and burst must be positive")
	}
	if c.MaxRecords < 0 {
		bad("maxRecords", "%d is negative", c.MaxRecords)
	}
	return errors.Join(errs...)
}

// BootstrapNode is a node to join through: its id and where it listens.
// Host is an IP literal or a DNS name, resolved when the node bootstraps.
type BootstrapNode struct {
	ID   identity.ID
	Host string
	Port uint16
}

func (b BootstrapNode) String() string {
	return b.ID.String() + "@" + net.JoinHostPort(b.Host, strconv.Itoa(int(b.Port)))
}

// maxBootstrapLen bounds the text ParseBootstrap reads.
const maxBootstrapLen = 512

// ParseBootstrap reads id@host:port, where id is a node id in any form
// identity.ParseID takes (Base58, 0x hex, did:boson:), host an IPv4
// literal, a bracketed IPv6 literal or a DNS name, and port 1..65535.
func ParseBootstrap(s string) (BootstrapNode, error) {
	var b BootstrapNode
	if len(s) > maxBootstrapLen {
		return b, fmt.Errorf("bootstrap node: longer than %d bytes", maxBootstrapLen)
	}
	idPart, addr, ok := strings.Cut(s, "@")
	if !ok {
		return b, fmt.Errorf("bootstrap node %q: want id@host:port", s)
	}
	id, err := identity.ParseID(idPart)
	if err != nil {
		return b, fmt.Errorf("bootstrap node %q: %w", s, err)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return b, fmt.Errorf("bootstrap node %q: %w", s, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return b, fmt.Errorf("bootstrap node %q: bad port %q", s, port)
	}
	if host == "" {
		return b, fmt.Errorf("bootstrap node %q: no host", s)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return b, fmt.Errorf("bootstrap node %q: zoned address", s)
		}
		host = ip.Unmap().String()
	} else if !validHostname(host) {
		return b, fmt.Errorf("bootstrap node %q: %q is not an IP address or host name", s, host)
	}
	return BootstrapNode{ID: id, Host: host, Port: uint16(p)}, nil
}

// validHostname accepts DNS names of letters, digits, hyphens and dots
// (RFC 1123 labels of 1..63 bytes, 253 in all).
func validHostname(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
