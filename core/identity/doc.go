// Package identity holds the one identity every PC2 party has: an Ed25519
// key pair whose raw 32-byte public key is the node id.
//
// It exists so that every layer (DHT, tunnels, relays, names, messages)
// agrees on how ids are written, compared and stored, and on how a key is
// recovered from words. The formats follow Boson (see shared/protocols/boson.md
// §1) so that ids and keys move between PC2 and Boson nodes unchanged:
//
//   - text form: Base58 with the Bitcoin alphabet; "0x" hex and
//     "did:boson:<base58>" are accepted on input;
//   - distance: XOR of the 32 bytes, compared as unsigned big-endian numbers;
//   - private key: the 64-byte libsodium form seed ‖ public key, the same as
//     Go's ed25519.PrivateKey.
//
// Mnemonic derivation (documented here because a user's identity depends on
// it never changing):
//
//	entropy   128 random bits
//	words     BIP-39 English mnemonic of the entropy (12 words, 4-bit checksum)
//	seed      BIP-39 seed = PBKDF2-HMAC-SHA512(words, "mnemonic", 2048 rounds, 64 bytes)
//	I         HMAC-SHA512(key = "ed25519 seed", data = seed)   (SLIP-0010 master key)
//	ed25519   private key seed = I[0:32]
//
// No passphrase is used. The same 12 words always give the same id.
package identity
