package identity

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/mr-tron/base58"
)

// IDSize is the length of an id in bytes: a raw Ed25519 public key.
const IDSize = 32

// DIDPrefix is the scheme and method of a Boson DID.
const DIDPrefix = "did:boson:"

// maxIDText bounds the text accepted by ParseID before any decoding work:
// the longest valid form is a DID of a 44-character Base58 id.
const maxIDText = len(DIDPrefix) + 64

// ID is a node, peer or user id: the raw Ed25519 public key. The zero ID is
// not a valid key and is used as "no id".
type ID [IDSize]byte

// ErrInvalidID is wrapped by every error ParseID returns.
var ErrInvalidID = errors.New("invalid id")

// ParseID reads an id in any accepted text form: Base58, 0x-prefixed hex,
// or did:boson:<base58>.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) > maxIDText {
		return id, fmt.Errorf("%w: %d characters is too long", ErrInvalidID, len(s))
	}
	var (
		raw []byte
		err error
	)
	switch {
	case strings.HasPrefix(s, "0x") || strings.HasPrefix(s, "0X"):
		raw, err = hex.DecodeString(s[2:])
	case strings.HasPrefix(s, DIDPrefix):
		raw, err = decodeBase58(s[len(DIDPrefix):])
	default:
		raw, err = decodeBase58(s)
	}
	if err != nil {
		return id, fmt.Errorf("%w %q: %v", ErrInvalidID, s, err)
	}
	if len(raw) != IDSize {
		return id, fmt.Errorf("%w %q: %d bytes, want %d", ErrInvalidID, s, len(raw), IDSize)
	}
	copy(id[:], raw)
	return id, nil
}

// IDFromBytes copies a 32-byte slice into an ID.
func IDFromBytes(b []byte) (ID, error) {
	var id ID
	if len(b) != IDSize {
		return id, fmt.Errorf("%w: %d bytes, want %d", ErrInvalidID, len(b), IDSize)
	}
	copy(id[:], b)
	return id, nil
}

func decodeBase58(s string) ([]byte, error) {
	if s == "" {
		return nil, errors.New("empty")
	}
	return base58.Decode(s)
}

// String returns the canonical Base58 form.
func (id ID) String() string { return base58.Encode(id[:]) }

// DID returns did:boson:<base58>.
func (id ID) DID() string { return DIDPrefix + id.String() }

// Hex returns the 0x-prefixed hex form.
func (id ID) Hex() string { return "0x" + hex.EncodeToString(id[:]) }

// IsZero reports whether id is the zero value.
func (id ID) IsZero() bool { return id == ID{} }

// MarshalText writes the Base58 form, so ids read well in JSON and YAML.
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText accepts every form ParseID accepts.
func (id *ID) UnmarshalText(b []byte) error {
	v, err := ParseID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// Distance returns the XOR distance between a and b.
func Distance(a, b ID) ID {
	var d ID
	for i := range d {
		d[i] = a[i] ^ b[i]
	}
	return d
}

// Compare orders ids as unsigned big-endian numbers: -1, 0 or +1.
func Compare(a, b ID) int { return bytes.Compare(a[:], b[:]) }

// CloserTo reports whether a is strictly closer to target than b is.
// It compares the distances byte by byte without building them.
func CloserTo(target, a, b ID) bool {
	for i := range target {
		da, db := a[i]^target[i], b[i]^target[i]
		if da != db {
			return da < db
		}
	}
	return false
}

// Bytes returns a copy of the id's 32 bytes.
func (id ID) Bytes() []byte { return id[:] }
