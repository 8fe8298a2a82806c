// Package cryptobox seals datagrams and frames between two PC2 identities
// with NaCl crypto_box (Curve25519, XSalsa20, Poly1305), the construction
// Boson's DHT and Active Proxy use on the wire.
//
// It exists to keep the expensive part, the Curve25519 agreement, out of the
// per-packet path: a SharedKey is computed once per peer pair (the
// crypto_box_beforenm step) and every packet after that costs only the
// symmetric cipher. Ciphertexts use the "easy" layout MAC(16) ‖ ciphertext,
// byte for byte what libsodium and Boson produce.
package cryptobox

import (
	"errors"
	"fmt"

	"github.com/elacity/pc2/core/identity"
	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/nacl/box"
	//lint:ignore SA1019 HSalsa20 is libsodium's crypto_box_beforenm step; only this package exposes it, and it runs once per peer, not per packet.
	"golang.org/x/crypto/salsa20/salsa"
)

// Overhead is the number of bytes a sealed message is longer than its plaintext.
const Overhead = box.Overhead

// NonceSize is the length of a nonce.
const NonceSize = 24

// ErrOpen is returned when a box does not authenticate: wrong key, wrong
// nonce or altered bytes. Callers of the network drop such packets.
var ErrOpen = errors.New("cryptobox: message authentication failed")

// SharedKey is the precomputed key of one pair of identities. It is
// symmetric: both sides compute the same key.
type SharedKey [32]byte

// Nonce is a 24-byte box nonce.
type Nonce [NonceSize]byte

// Increment adds one to n as a little-endian number, carrying from byte 0,
// as sodium_increment and Boson's per-peer nonce counters do.
func (n *Nonce) Increment() {
	for i := range n {
		n[i]++
		if n[i] != 0 {
			return
		}
	}
}

// Precompute derives the shared key between local and the peer with id
// remote. It fails when remote is not a valid Ed25519 public key, which can
// happen for any id read from the network.
func Precompute(local *identity.KeyPair, remote identity.ID) (SharedKey, error) {
	peerPub, err := remote.X25519Public()
	if err != nil {
		return SharedKey{}, err
	}
	sk := local.X25519Private()
	return PrecomputeX25519(&sk, &peerPub)
}

// PrecomputeX25519 derives the shared key from raw Curve25519 keys:
// HSalsa20(X25519(privateKey, peerPublic), 0), the crypto_box_beforenm of
// libsodium. Like libsodium it refuses a low-order peer key, whose all-zero
// agreement would make every box readable to anyone.
func PrecomputeX25519(privateKey, peerPublic *[32]byte) (SharedKey, error) {
	var k SharedKey
	dh, err := curve25519.X25519(privateKey[:], peerPublic[:])
	if err != nil {
		return k, fmt.Errorf("cryptobox: %w", err)
	}
	var in [32]byte
	copy(in[:], dh)
	var zero [16]byte
	salsa.HSalsa20((*[32]byte)(&k), &zero, &in, &salsa.Sigma)
	return k, nil
}

// Seal appends MAC ‖ ciphertext of msg to out and returns the result.
// A nonce must never be used twice with the same key.
func (k *SharedKey) Seal(out, msg []byte, nonce *Nonce) []byte {
	return box.SealAfterPrecomputation(out, msg, (*[24]byte)(nonce), (*[32]byte)(k))
}

// Open authenticates and decrypts sealed (MAC ‖ ciphertext), appending the
// plaintext to out.
func (k *SharedKey) Open(out, sealed []byte, nonce *Nonce) ([]byte, error) {
	if len(sealed) < Overhead {
		return nil, ErrOpen
	}
	msg, ok := box.OpenAfterPrecomputation(out, sealed, (*[24]byte)(nonce), (*[32]byte)(k))
	if !ok {
		return nil, ErrOpen
	}
	return msg, nil
}
