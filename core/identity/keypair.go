package identity

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"filippo.io/edwards25519"
	"github.com/mr-tron/base58"
)

// PrivateKeySize is the length of the stored private key: seed ‖ public key.
const PrivateKeySize = ed25519.PrivateKeySize

// ErrInvalidKey is wrapped by every error about malformed private key bytes.
var ErrInvalidKey = errors.New("invalid private key")

// KeyPair is an Ed25519 identity. Its zero value is not usable; build one
// with Generate, FromSeed, FromPrivateKey, ParsePrivateKey or FromMnemonic.
type KeyPair struct {
	priv ed25519.PrivateKey
	id   ID
}

// Generate makes a new random key pair reading 32 bytes from rand.
func Generate(rand io.Reader) (*KeyPair, error) {
	seed := make([]byte, ed25519.SeedSize)
	if _, err := io.ReadFull(rand, seed); err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return FromSeed(seed)
}

// FromSeed builds the key pair of a 32-byte Ed25519 seed.
func FromSeed(seed []byte) (*KeyPair, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("%w: seed is %d bytes, want %d", ErrInvalidKey, len(seed), ed25519.SeedSize)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	kp := &KeyPair{priv: priv}
	copy(kp.id[:], priv[ed25519.SeedSize:])
	return kp, nil
}

// FromPrivateKey builds a key pair from the 64-byte seed ‖ public key form.
// Unlike Boson's Java reader it checks that the public half belongs to the
// seed: a mismatch means the bytes are damaged, and using the seed alone
// would silently give a different identity from the one the file names.
func FromPrivateKey(b []byte) (*KeyPair, error) {
	if len(b) != PrivateKeySize {
		return nil, fmt.Errorf("%w: %d bytes, want %d (seed ‖ public key)", ErrInvalidKey, len(b), PrivateKeySize)
	}
	kp, err := FromSeed(b[:ed25519.SeedSize])
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(kp.id[:], b[ed25519.SeedSize:]) {
		return nil, fmt.Errorf("%w: public key half does not match the seed (damaged key?)", ErrInvalidKey)
	}
	return kp, nil
}

// ParsePrivateKey reads the 64-byte private key written as Base58 or as
// 0x-prefixed hex, the two forms Boson configuration files use.
func ParsePrivateKey(s string) (*KeyPair, error) {
	s = strings.TrimSpace(s)
	if len(s) > 2*PrivateKeySize+2 {
		return nil, fmt.Errorf("%w: %d characters is too long", ErrInvalidKey, len(s))
	}
	var (
		raw []byte
		err error
	)
	if strings.HasPrefix(s, "0x") || strings.HasPrefix(s, "0X") {
		raw, err = hex.DecodeString(s[2:])
	} else {
		raw, err = decodeBase58(s)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: not Base58 or 0x hex: %v", ErrInvalidKey, err)
	}
	return FromPrivateKey(raw)
}

// ID returns the node id, the raw public key.
func (kp *KeyPair) ID() ID { return kp.id }

// PublicKey returns the Ed25519 public key.
func (kp *KeyPair) PublicKey() ed25519.PublicKey { return ed25519.PublicKey(kp.id[:]) }

// PrivateKey returns the Ed25519 private key (seed ‖ public key). The caller
// must not modify it.
func (kp *KeyPair) PrivateKey() ed25519.PrivateKey { return kp.priv }

// Seed returns a copy of the 32-byte seed.
func (kp *KeyPair) Seed() []byte { return kp.priv.Seed() }

// Sign signs msg with pure Ed25519 (RFC 8032, no prehash).
func (kp *KeyPair) Sign(msg []byte) []byte { return ed25519.Sign(kp.priv, msg) }

// Base58 returns the private key as Base58 of the 64 bytes (Boson v3 config form).
func (kp *KeyPair) Base58() string { return base58.Encode(kp.priv) }

// Verify reports whether sig is id's signature of msg. A signature of the
// wrong length verifies as false.
func Verify(id ID, msg, sig []byte) bool {
	if len(sig) != ed25519.SignatureSize {
		return false
	}
	return ed25519.Verify(id[:], msg, sig)
}

// X25519Private returns the Curve25519 secret key derived from the Ed25519
// seed the libsodium way (crypto_sign_ed25519_sk_to_curve25519): the first 32
// bytes of SHA-512(seed), clamped.
func (kp *KeyPair) X25519Private() [32]byte {
	h := sha512.Sum512(kp.priv.Seed())
	var sk [32]byte
	copy(sk[:], h[:32])
	sk[0] &= 248
	sk[31] &= 127
	sk[31] |= 64
	return sk
}

// X25519Public returns the Curve25519 public key of id, the Montgomery u of
// its Edwards point (crypto_sign_ed25519_pk_to_curve25519). Ids come from
// the network, so a string of bytes that is not a curve point is an error.
func (id ID) X25519Public() ([32]byte, error) {
	var pk [32]byte
	p, err := new(edwards25519.Point).SetBytes(id[:])
	if err != nil {
		return pk, fmt.Errorf("id %s is not an Ed25519 public key: %w", id, err)
	}
	copy(pk[:], p.BytesMontgomery())
	return pk, nil
}
