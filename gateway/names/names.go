// Package names holds the rules for the names a supernode serves: which
// domain suffixes it is authoritative for, which labels a user may take
// under them, and how a name typed by a person, sent in a TLS server name,
// a Host header or a DNS question is normalised before anyone looks it up.
//
// It exists so that the registry, the DNS server, the :443 SNI router and
// the :80 Host router agree byte for byte on what a name is; a name that
// one of them accepts and another spells differently is a routing hole.
//
// A name is exactly one label under one configured suffix: alice.ela.city.
// Labels are lowercase LDH (a-z, 0-9, inner hyphens), 3 to 63 bytes.
// Punycode (labels starting with "xn--") is refused for now: accepting it
// safely needs IDNA validation and a confusables policy (homograph
// attacks), which are out of scope; so is any other label with "--" in
// positions 3-4, which RFC 5891 reserves for such encodings.
package names

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// DefaultSuffixes are the domains a supernode serves unless configured.
// A devnet uses a suffix under "localhost" (e.g. pc2.localhost) so that
// browsers resolve every name to loopback without any DNS set-up.
var DefaultSuffixes = []string{"ela.city", "pc2.net", "ela.net"}

// Label length bounds. Short labels are refused because they are few, and
// first come first served would hand them all to the first squatter.
const (
	MinLabel = 3
	MaxLabel = 63
	// MaxName is the longest name in presentation form without the final
	// dot (RFC 1035: 255 octets on the wire = 253 characters).
	MaxName = 253
)

// reserved labels are kept for the operators of the network: service
// hosts, mail and abuse contacts (RFC 2142), name servers, and words that
// would let one user impersonate the network itself. Labels shorter than
// MinLabel (ns, mx...) are already refused by length.
var reserved = []string{
	"abuse", "account", "acme", "admin", "administrator", "api", "app",
	"auth", "autoconfig", "autodiscover", "billing", "blog", "boson",
	"cdn", "dashboard", "dev", "dht", "dns", "docs", "ela", "elacity",
	"elastos", "ftp", "gateway", "help", "hostmaster", "imap", "info",
	"isatap", "localhost", "login", "mail", "metrics", "node", "nodes",
	"ns0", "ns1", "ns2", "ns3", "ns4", "ns5", "pc2", "pop", "pop3",
	"postmaster", "registry", "relay", "root", "security", "smtp",
	"staging", "static", "status", "support", "supernode", "supernodes",
	"test", "tunnel", "webmail", "webmaster", "wpad", "www",
}

func init() { slices.Sort(reserved) }

// Reserved returns the reserved labels, sorted.
func Reserved() []string { return slices.Clone(reserved) }

// IsReserved reports whether label (lowercase) is kept for the operators.
func IsReserved(label string) bool {
	_, ok := slices.BinarySearch(reserved, label)
	return ok
}

// Errors a name can fail with. They are wrapped in *Error, which names
// the input; test with errors.Is.
var (
	ErrEmpty       = errors.New("empty name")
	ErrTooLong     = errors.New("name too long")
	ErrLabelLength = fmt.Errorf("label must be %d to %d characters", MinLabel, MaxLabel)
	ErrCharacter   = errors.New("label may hold only a-z, 0-9 and inner hyphens")
	ErrHyphen      = errors.New("label must not start or end with a hyphen")
	ErrPunycode    = errors.New("punycode and other labels with \"--\" at positions 3-4 are not accepted")
	ErrReserved    = errors.New("label is reserved")
	ErrSuffix      = errors.New("name is not under a served domain")
	ErrDepth       = errors.New("name must be one label under a served domain")
)

// Error is a name that failed a rule.
type Error struct {
	Name string // the input, truncated for display
	Err  error  // one of the Err* values
}

func (e *Error) Error() string { return fmt.Sprintf("name %q: %v", e.Name, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

func nameError(name string, err error) *Error {
	if len(name) > 80 {
		name = name[:80] + "…"
	}
	return &Error{Name: name, Err: err}
}

// CheckLabel returns nil if label may be registered: lowercase LDH, 3-63
// bytes, no edge hyphens, no "--" at positions 3-4, not reserved.
func CheckLabel(label string) error {
	if err := checkLDH(label); err != nil {
		return err
	}
	if len(label) < MinLabel {
		return ErrLabelLength
	}
	if len(label) >= 4 && label[2] == '-' && label[3] == '-' {
		return ErrPunycode
	}
	if IsReserved(label) {
		return ErrReserved
	}
	return nil
}

// checkLDH checks the syntax every DNS host label shares (1-63 bytes).
func checkLDH(label string) error {
	if len(label) == 0 || len(label) > MaxLabel {
		return ErrLabelLength
	}
	for i := 0; i < len(label); i++ {
		c := label[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return ErrCharacter
		}
	}
	if label[0] == '-' || label[len(label)-1] == '-' {
		return ErrHyphen
	}
	return nil
}

// Name is a parsed, normalised name.
type Name struct {
	Label  string // "alice"
	Suffix string // "ela.city"
}

// String returns label.suffix.
func (n Name) String() string { return n.Label + "." + n.Suffix }

// Rules are the suffixes one supernode serves. They are immutable after
// NewRules and safe for concurrent use.
type Rules struct {
	suffixes []string // normalised, longest first so the most specific wins
}

// NewRules checks and normalises suffixes (lowercase, no edge dots). An
// empty list takes DefaultSuffixes.
func NewRules(suffixes []string) (*Rules, error) {
	if len(suffixes) == 0 {
		suffixes = DefaultSuffixes
	}
	r := &Rules{}
	for _, s := range suffixes {
		n := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), ".")
		if err := checkSuffix(n); err != nil {
			return nil, fmt.Errorf("suffix %q: %w", s, err)
		}
		if slices.Contains(r.suffixes, n) {
			return nil, fmt.Errorf("suffix %q: listed twice", s)
		}
		r.suffixes = append(r.suffixes, n)
	}
	slices.SortStableFunc(r.suffixes, func(a, b string) int { return len(b) - len(a) })
	return r, nil
}

func checkSuffix(s string) error {
	if s == "" {
		return ErrEmpty
	}
	if len(s)+1+MinLabel > MaxName {
		return ErrTooLong
	}
	for l := range strings.SplitSeq(s, ".") {
		if err := checkLDH(l); err != nil {
			return err
		}
	}
	return nil
}

// Suffixes returns the served suffixes, longest first.
func (r *Rules) Suffixes() []string { return slices.Clone(r.suffixes) }

// Parse normalises s (ASCII lowercase, one trailing dot removed,
// surrounding space trimmed) and checks it is one allowed label under a
// served suffix. Errors are *Error wrapping one of the Err* values.
func (r *Rules) Parse(s string) (Name, error) {
	in := s
	s = strings.TrimSpace(s)
	s = strings.TrimSuffix(s, ".")
	if s == "" {
		return Name{}, nameError(in, ErrEmpty)
	}
	if len(s) > MaxName {
		return Name{}, nameError(in, ErrTooLong)
	}
	s = strings.ToLower(s)
	label, suffix, ok := r.split(s)
	if !ok {
		return Name{}, nameError(in, ErrSuffix)
	}
	if strings.Contains(label, ".") {
		return Name{}, nameError(in, ErrDepth)
	}
	if err := CheckLabel(label); err != nil {
		return Name{}, nameError(in, err)
	}
	return Name{Label: label, Suffix: suffix}, nil
}

// split finds the served suffix of s (lowercase, no trailing dot) and
// returns what stands before it. It does not allocate.
func (r *Rules) split(s string) (head, suffix string, ok bool) {
	for _, suf := range r.suffixes {
		if len(s) > len(suf)+1 && s[len(s)-len(suf)-1] == '.' && s[len(s)-len(suf):] == suf {
			return s[:len(s)-len(suf)-1], suf, true
		}
	}
	return "", "", false
}

// Zone returns the served suffix s (lowercase, no trailing dot) belongs
// to, including the suffix itself, and the part before it ("" for the
// apex). It does not allocate.
func (r *Rules) Zone(s string) (head, suffix string, ok bool) {
	for _, suf := range r.suffixes {
		if s == suf {
			return "", suf, true
		}
	}
	return r.split(s)
}

// Fold copies s into buf, lowercasing ASCII and dropping a :port and one
// trailing dot: the forms a name arrives in from DNS questions (0x20 mixed
// case) and Host headers. Look the result up as m[string(b)], which Go
// does without allocating. ok is false when s is empty after trimming or
// longer than buf (use a [MaxName]byte array: longer is never a name).
func Fold[S ~string | ~[]byte](buf []byte, s S) (b []byte, ok bool) {
	n := len(s)
	if n > 0 && s[0] == '[' {
		for i := 1; i < n; i++ {
			if s[i] == ']' {
				n = i + 1 // [IPv6]:port: never a name, but folded consistently
				break
			}
		}
	} else {
		colons, last := 0, -1
		for i := 0; i < n; i++ {
			if s[i] == ':' {
				colons, last = colons+1, i
			}
		}
		if colons == 1 {
			n = last // host:port; a bare IPv6 literal has more colons and stays whole
		}
	}
	if n > 0 && s[n-1] == '.' {
		n--
	}
	if n == 0 || n > len(buf) {
		return nil, false
	}
	b = buf[:n]
	for i := 0; i < n; i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[i] = c
	}
	return b, true
}
