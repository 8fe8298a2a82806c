package cryptobox

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/elacity/pc2/core/identity"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func seq(from, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(from + i)
	}
	return b
}

func nodes(t testing.TB) (a, b *identity.KeyPair) {
	a, _ = identity.FromSeed(seq(0, 32))
	b, _ = identity.FromSeed(seq(0x20, 32))
	return a, b
}

// The classic NaCl crypto_box known answer (also RFC 7748 §6.1 keys).
func TestNaClBeforenmVector(t *testing.T) {
	var aliceSK, bobPK [32]byte
	copy(aliceSK[:], mustHex(t, "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
	copy(bobPK[:], mustHex(t, "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"))
	k, err := PrecomputeX25519(&aliceSK, &bobPK)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(k[:]); got != "1b27556473e985d462cd51197a9a46c76009549eac6474f206c4ee0844f68389" {
		t.Fatalf("beforenm = %s", got)
	}
}

// Shared key and datagram bodies of boson.md §8.2.
func TestBosonVectors(t *testing.T) {
	a, b := nodes(t)
	kab, err := Precompute(a, b.ID())
	if err != nil {
		t.Fatal(err)
	}
	kba, err := Precompute(b, a.ID())
	if err != nil {
		t.Fatal(err)
	}
	if kab != kba {
		t.Fatal("shared key is not symmetric")
	}
	if got := hex.EncodeToString(kab[:]); got != "7b91597e6a0dbe2acd34f13f7fe345f782c93b043f275a80e5f810b60fa6ba12" {
		t.Fatalf("shared key = %s", got)
	}
	ping := mustHex(t, "bf6179182161740a61761a4f520001ff")
	for _, tc := range []struct{ name, nonce, sealed string }{
		{"v3 nonce 01..18", "0102030405060708090a0b0c0d0e0f101112131415161718", "1e1240dce109e48fe00f4b159984a9f75d194ff526bf817f97519520739778ac"},
		{"v2 fixed pair nonce", "1031508e3b05e3e5d6a58eab507e95da10f2cbeddb2b5dfb", "200b4e21738f54b327386ebbd8c27aa89b7aeb607946a03e000576a22ba63601"},
	} {
		var n Nonce
		copy(n[:], mustHex(t, tc.nonce))
		sealed := kab.Seal(nil, ping, &n)
		if got := hex.EncodeToString(sealed); got != tc.sealed {
			t.Errorf("%s: sealed = %s, want %s", tc.name, got, tc.sealed)
		}
		opened, err := kba.Open(nil, sealed, &n)
		if err != nil || !bytes.Equal(opened, ping) {
			t.Errorf("%s: open = %x, %v", tc.name, opened, err)
		}
	}
}

func TestOpenRejectsTampering(t *testing.T) {
	a, b := nodes(t)
	k, _ := Precompute(a, b.ID())
	var n Nonce
	sealed := k.Seal(nil, []byte("hello"), &n)
	for i := range sealed {
		bad := bytes.Clone(sealed)
		bad[i] ^= 1
		if _, err := k.Open(nil, bad, &n); !errors.Is(err, ErrOpen) {
			t.Fatalf("flip at %d accepted", i)
		}
	}
	n.Increment()
	if _, err := k.Open(nil, sealed, &n); !errors.Is(err, ErrOpen) {
		t.Fatal("wrong nonce accepted")
	}
	for _, short := range [][]byte{nil, sealed[:Overhead-1]} {
		if _, err := k.Open(nil, short, &n); !errors.Is(err, ErrOpen) {
			t.Fatal("short box accepted")
		}
	}
}

func TestPrecomputeRejectsLowOrder(t *testing.T) {
	a, _ := nodes(t)
	sk := a.X25519Private()
	var zero [32]byte // the identity point: shared secret is all zeros
	if _, err := PrecomputeX25519(&sk, &zero); err == nil {
		t.Fatal("low-order key accepted")
	}
}

func TestNonceIncrement(t *testing.T) {
	var n Nonce
	n[0], n[1] = 0xff, 0xff
	n.Increment()
	if n[0] != 0 || n[1] != 0 || n[2] != 1 {
		t.Fatalf("carry wrong: %x", n[:4])
	}
	for i := range n {
		n[i] = 0xff
	}
	n.Increment()
	if n != (Nonce{}) {
		t.Fatal("wrap-around wrong")
	}
}

func BenchmarkSeal1200(b *testing.B) {
	a, p := nodes(b)
	k, _ := Precompute(a, p.ID())
	msg := make([]byte, 1200)
	out := make([]byte, 0, 1200+Overhead)
	var n Nonce
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		n.Increment()
		out = k.Seal(out[:0], msg, &n)
	}
}

func BenchmarkOpen1200(b *testing.B) {
	a, p := nodes(b)
	k, _ := Precompute(a, p.ID())
	var n Nonce
	sealed := k.Seal(nil, make([]byte, 1200), &n)
	out := make([]byte, 0, 1200)
	b.SetBytes(1200)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if out, err = k.Open(out[:0], sealed, &n); err != nil {
			b.Fatal(err)
		}
	}
}

// Precompute is the per-new-peer cost (X25519 + point decompression).
func BenchmarkPrecompute(b *testing.B) {
	a, p := nodes(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Precompute(a, p.ID()); err != nil {
			b.Fatal(err)
		}
	}
}
