// Package wire is the registration protocol shared by the supernode's
// registry and the nodes that register names: the signed request, the
// exact bytes its Ed25519 signature covers, the record a name resolves to,
// and the error codes of the API.
//
// It is its own package so that a node (the client) and the supernode (the
// server) cannot drift apart on the signed bytes, and so that the decoder
// of untrusted requests can be fuzzed without a server.
//
// Requests travel as JSON: it is readable with curl and in logs, and the
// signature does not depend on the encoding (it covers the canonical byte
// string below, rebuilt from the decoded fields), so JSON's lack of a
// canonical form costs nothing. A request is about 400 bytes; decoding it
// costs a few microseconds, against ~50 µs for the signature check and a
// disk sync for the write, so a binary encoding would buy nothing
// measurable.
//
// # Canonical signed bytes
//
// The signature is Ed25519 (RFC 8032, pure) by the key of ID over these
// UTF-8 (in fact ASCII) lines, each ended by one "\n", in this order, all
// always present, empty values written as nothing after "=":
//
//	pc2-registry-v1
//	op=<register|update|delete|transfer|acme-set|acme-delete>
//	name=<label.suffix, lowercase, no trailing dot>
//	id=<signer id, Base58>
//	target=<IP:port of the node's TLS service, "tunnel", or empty>
//	http=<IP:port of the node's plain HTTP service, "tunnel", or empty>
//	redirectHTTPS=<0|1>
//	dnsDirect=<0|1>
//	newOwner=<Base58 id, transfer only, else empty>
//	txt=<ACME TXT value, acme-* only, else empty>
//	ts=<Unix seconds, decimal, no sign or leading zeros>
//	nonce=<16 random bytes, 32 lowercase hex digits>
//
// The first line separates these signatures from every other use of the
// key. No value can hold a newline: names are LDH, ids Base58, endpoints
// the normal form of netip.AddrPort, TXT values printable ASCII without
// spaces, so the lines cannot be shifted. A transfer is signed by the
// owner (sig) and by the new owner (coSig) over the same bytes.
//
// # Tunnel targets
//
// A node behind NAT has no address to register. Its target (and http)
// may instead be the word "tunnel" (TargetTunnel): the name is served only
// through a tunnel the owner holds to the supernode (relay/tunnel), and a
// supernode where it holds none refuses visitors at once. Records written
// before this form existed stay valid: every IP:port target is read as
// before.
package wire

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"

	"github.com/elacity/pc2/core/identity"
)

// Domain is the first line of every signed message.
const Domain = "pc2-registry-v1"

// MaxRequestSize bounds a request body. A full transfer request is under
// 800 bytes.
const MaxRequestSize = 4096

// MaxTXT bounds one ACME TXT value (one DNS character-string). RFC 8555
// values are 43 characters.
const MaxTXT = 255

// TargetTunnel is the target (and http) value meaning "reachable only
// through the owner's tunnel to the supernode".
const TargetTunnel = "tunnel"

// NonceSize is the size of a request nonce in bytes.
const NonceSize = 16

// Op is what a request asks for.
type Op string

const (
	OpRegister   Op = "register"    // take a free name, or renew and update one's own
	OpUpdate     Op = "update"      // change one's own name's endpoints, keep its expiry
	OpDelete     Op = "delete"      // free one's own name
	OpTransfer   Op = "transfer"    // give one's own name to NewOwner (who co-signs)
	OpACMESet    Op = "acme-set"    // add a TXT value at _acme-challenge.<name>
	OpACMEDelete Op = "acme-delete" // remove one TXT value, or all when TXT is empty
)

// Ops lists every operation, for metrics and validation.
var Ops = []Op{OpRegister, OpUpdate, OpDelete, OpTransfer, OpACMESet, OpACMEDelete}

// Request is one signed registry operation.
type Request struct {
	Op            Op           `json:"op"`
	Name          string       `json:"name"`
	ID            identity.ID  `json:"id"`
	Target        string       `json:"target,omitempty"`
	HTTP          string       `json:"http,omitempty"`
	RedirectHTTPS bool         `json:"redirectHTTPS,omitempty"`
	DNSDirect     bool         `json:"dnsDirect,omitempty"`
	NewOwner      *identity.ID `json:"newOwner,omitempty"`
	TXT           string       `json:"txt,omitempty"`
	Timestamp     int64        `json:"ts"`
	Nonce         string       `json:"nonce"`
	Sig           string       `json:"sig"`             // 64 bytes, lowercase hex
	CoSig         string       `json:"coSig,omitempty"` // transfer: NewOwner's signature
}

// Errors of Decode and Check; the API maps them to code "bad_request".
var (
	ErrTooLarge  = fmt.Errorf("request larger than %d bytes", MaxRequestSize)
	ErrMalformed = errors.New("malformed request")
)

// Decode reads one JSON request of at most MaxRequestSize bytes, refusing
// unknown fields and trailing data, and checks its syntax (Check). It
// does not verify signatures.
func Decode(b []byte) (*Request, error) {
	if len(b) > MaxRequestSize {
		return nil, ErrTooLarge
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var r Request
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the request", ErrMalformed)
	}
	if err := r.Check(); err != nil {
		return nil, err
	}
	return &r, nil
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// Check verifies the syntax of every field and which fields op allows. It
// does not apply the served suffixes (the registry does) nor check
// signatures (Verify does).
func (r *Request) Check() error {
	if err := checkName(r.Name); err != nil {
		return err
	}
	if r.ID.IsZero() {
		return malformed("no id")
	}
	if r.Timestamp <= 0 {
		return malformed("ts must be positive Unix seconds")
	}
	if n, err := hex.DecodeString(r.Nonce); err != nil || len(n) != NonceSize || r.Nonce != hex.EncodeToString(n) {
		return malformed("nonce must be %d lowercase hex digits", 2*NonceSize)
	}
	if err := checkSig(r.Sig); err != nil {
		return malformed("sig: %v", err)
	}
	endpoints := r.Target != "" || r.HTTP != "" || r.RedirectHTTPS || r.DNSDirect
	switch r.Op {
	case OpRegister, OpUpdate, OpTransfer:
		if r.Target == "" {
			return malformed("%s needs a target", r.Op)
		}
		if err := CheckTarget(r.Target); err != nil {
			return malformed("target: %v", err)
		}
		if r.HTTP != "" {
			if err := CheckTarget(r.HTTP); err != nil {
				return malformed("http: %v", err)
			}
		}
		if r.DNSDirect && r.Target == TargetTunnel {
			return malformed("dnsDirect needs an IP target, not %q", TargetTunnel)
		}
		if r.TXT != "" {
			return malformed("%s takes no txt", r.Op)
		}
	case OpDelete, OpACMESet, OpACMEDelete:
		if endpoints {
			return malformed("%s takes no endpoints or flags", r.Op)
		}
		if r.Op == OpDelete && r.TXT != "" {
			return malformed("delete takes no txt")
		}
		if r.Op == OpACMESet && r.TXT == "" {
			return malformed("acme-set needs a txt value")
		}
		if err := CheckTXT(r.TXT); err != nil {
			return malformed("txt: %v", err)
		}
	default:
		return malformed("unknown op %.20q", r.Op)
	}
	if r.Op == OpTransfer {
		if r.NewOwner == nil || r.NewOwner.IsZero() {
			return malformed("transfer needs newOwner")
		}
		if *r.NewOwner == r.ID {
			return malformed("transfer to oneself")
		}
		if err := checkSig(r.CoSig); err != nil {
			return malformed("coSig: %v", err)
		}
	} else if r.NewOwner != nil || r.CoSig != "" {
		return malformed("%s takes no newOwner or coSig", r.Op)
	}
	return nil
}

// checkName checks only what keeps the canonical bytes unambiguous:
// lowercase LDH labels and dots, in normal form. The served suffixes and
// label rules are applied by the registry (gateway/names).
func checkName(s string) error {
	if s == "" || len(s) > 253 || s[0] == '.' || s[len(s)-1] == '.' {
		return malformed("name must be a lowercase name without a trailing dot")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' && c != '.' {
			return malformed("name must be a lowercase name without a trailing dot")
		}
	}
	return nil
}

func checkSig(s string) error {
	if len(s) != 128 {
		return errors.New("must be 128 lowercase hex digits")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return errors.New("must be 128 lowercase hex digits")
		}
	}
	return nil
}

// CheckEndpoint checks that s is IP:port in netip's normal form
// ("192.0.2.1:443", "[2001:db8::1]:443") with a non-zero port and an
// address a server could dial. Host names are refused: the gateway would
// have to resolve them, and a name that resolves elsewhere later (DNS
// rebinding) would turn the gateway into a proxy to wherever it points.
// Whether private addresses are allowed is the registry's policy.
func CheckEndpoint(s string) error {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return fmt.Errorf("%.60q is not IP:port", s)
	}
	if ap.String() != s {
		return fmt.Errorf("%.60q is not in normal form (want %q)", s, ap.String())
	}
	a := ap.Addr()
	if ap.Port() == 0 || a.IsUnspecified() || a.IsMulticast() || a.Zone() != "" || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return fmt.Errorf("%q is not a dialable unicast address and port", s)
	}
	return nil
}

// CheckTarget checks a target or http value: TargetTunnel, or an
// endpoint (CheckEndpoint).
func CheckTarget(s string) error {
	if s == TargetTunnel {
		return nil
	}
	return CheckEndpoint(s)
}

// CheckTXT checks an ACME TXT value: printable ASCII without spaces, at
// most MaxTXT bytes. Empty is valid here; ops that need a value say so.
func CheckTXT(s string) error {
	if len(s) > MaxTXT {
		return fmt.Errorf("longer than %d bytes", MaxTXT)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c > '~' {
			return errors.New("must be printable ASCII without spaces")
		}
	}
	return nil
}

// AppendCanonical appends the bytes the signatures cover (see the package
// doc) to dst.
func (r *Request) AppendCanonical(dst []byte) []byte {
	dst = append(dst, Domain+"\nop="...)
	dst = append(dst, r.Op...)
	dst = append(dst, "\nname="...)
	dst = append(dst, r.Name...)
	dst = append(dst, "\nid="...)
	dst = appendID(dst, r.ID)
	dst = append(dst, "\ntarget="...)
	dst = append(dst, r.Target...)
	dst = append(dst, "\nhttp="...)
	dst = append(dst, r.HTTP...)
	dst = append(dst, "\nredirectHTTPS="...)
	dst = appendBool(dst, r.RedirectHTTPS)
	dst = append(dst, "\ndnsDirect="...)
	dst = appendBool(dst, r.DNSDirect)
	dst = append(dst, "\nnewOwner="...)
	if r.NewOwner != nil {
		dst = appendID(dst, *r.NewOwner)
	}
	dst = append(dst, "\ntxt="...)
	dst = append(dst, r.TXT...)
	dst = append(dst, "\nts="...)
	dst = strconv.AppendInt(dst, r.Timestamp, 10)
	dst = append(dst, "\nnonce="...)
	dst = append(dst, r.Nonce...)
	return append(dst, '\n')
}

func appendID(dst []byte, id identity.ID) []byte { return append(dst, id.String()...) }

func appendBool(dst []byte, b bool) []byte {
	if b {
		return append(dst, '1')
	}
	return append(dst, '0')
}

// Canonical returns the signed bytes.
func (r *Request) Canonical() []byte { return r.AppendCanonical(make([]byte, 0, 512)) }

// Sign sets ID to kp's id and Sig to its signature.
func (r *Request) Sign(kp *identity.KeyPair) {
	r.ID = kp.ID()
	r.Sig = hex.EncodeToString(kp.Sign(r.Canonical()))
}

// CoSign sets CoSig to kp's signature; kp must be the NewOwner's key.
func (r *Request) CoSign(kp *identity.KeyPair) error {
	if r.NewOwner == nil || *r.NewOwner != kp.ID() {
		return errors.New("co-signing key is not the new owner's")
	}
	r.CoSig = hex.EncodeToString(kp.Sign(r.Canonical()))
	return nil
}

// ErrSignature means a signature does not verify.
var ErrSignature = errors.New("bad signature")

// Verify checks Sig against ID and, for a transfer, CoSig against
// NewOwner. Run Check first.
func (r *Request) Verify() error {
	msg := r.AppendCanonical(make([]byte, 0, 512))
	if !verifyHex(r.ID, msg, r.Sig) {
		return ErrSignature
	}
	if r.Op == OpTransfer && (r.NewOwner == nil || !verifyHex(*r.NewOwner, msg, r.CoSig)) {
		return fmt.Errorf("%w: new owner's co-signature", ErrSignature)
	}
	return nil
}

func verifyHex(id identity.ID, msg []byte, sigHex string) bool {
	var sig [64]byte
	if n, err := hex.Decode(sig[:], []byte(sigHex)); err != nil || n != len(sig) {
		return false
	}
	return identity.Verify(id, msg, sig[:])
}
