package record

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/elacity/pc2/core/cryptobox"
	"github.com/elacity/pc2/core/identity"
)

// Keys of boson.md §8.2: node A has seed 00..1f, node B seed 20..3f.
func seedKey(t testing.TB, first byte) *identity.KeyPair {
	t.Helper()
	seed := make([]byte, 32)
	for i := range seed {
		seed[i] = first + byte(i)
	}
	kp, err := identity.FromSeed(seed)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func keyA(t testing.TB) *identity.KeyPair { return seedKey(t, 0x00) }
func keyB(t testing.TB) *identity.KeyPair { return seedKey(t, 0x20) }

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestKeysOfVectors(t *testing.T) {
	if got := keyA(t).ID().String(); got != "FAe4sisG95oZ42w7buUn5qEE4TAnfTTFPiguZUHmhiF" {
		t.Fatalf("A = %s", got)
	}
	if got := keyB(t).ID().String(); got != "3ogUn1GNXoASaRbxPNeVJnVv5rG4EPBtmQmX61jVorUe" {
		t.Fatalf("B = %s", got)
	}
}

func TestPeerInfoV31Vector(t *testing.T) {
	a := keyA(t)
	p, err := NewPeer(a, nil, 0, 4660, "tcp://203.0.113.10:9090", nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := p.Digest(); hex.EncodeToString(d[:]) != "fca820a3f54e0c50f465a1074bbb6dc8a2e307c78e21df4b384bf37fa33b2a1f" {
		t.Fatalf("digest %x", d)
	}
	if hex.EncodeToString(p.Sig[:]) != "70afef4855264dc90b402a47ecfca79adeb57ecf316b82284d5584ffd6adb64d4d039773f59d849af9bacfa5b3da0abe4de7cf2ba961cefc6e4c783c82e32007" {
		t.Fatalf("sig %x", p.Sig)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	p.Fingerprint++
	if err := p.Validate(); !errors.Is(err, ErrSignature) {
		t.Fatalf("tampered fingerprint: %v", err)
	}
}

func TestAuthenticatedPeerInfoVector(t *testing.T) {
	a, b := keyA(t), keyB(t)
	p, err := NewPeer(a, b, 1, 4660, "https://example.com/", nil)
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, got []byte, want string) {
		t.Helper()
		if hex.EncodeToString(got) != want {
			t.Errorf("%s = %x, want %s", name, got, want)
		}
	}
	nd := p.NodeDigest()
	check("node digest", nd[:], "8687a884e23372d677b4df3c6c12a67f290e184c87f8b902f582999dd4742424")
	check("os", p.NodeSig[:], "91b035c949e0bde70c1efed220da3a60ff29f5188bd8e43d846ceaf8e04ef8189c5cf265fcb0aa6fbc48395c7e6cd58dbf5cd9ca7f69ba6c9805342a8478c200")
	pd := p.Digest()
	check("peer digest", pd[:], "cbc95b6502113f014b3ca4b4de1d1db8649f890146a1d8e6b1af42014f16d1a6")
	check("sig", p.Sig[:], "a704adab198cc704b746e34d58a989a9d79de8230c9daff6ed6143fb655e33b92164552486c147446068d9ddb509a915c820d776a6c5e627edb6ef702c84a30a")
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	// A node signature that does not cover this seq must fail even though
	// the peer re-signs everything else.
	q := p
	q.Seq = 2
	d := q.Digest()
	copy(q.Sig[:], a.Sign(d[:]))
	if err := q.Validate(); !errors.Is(err, ErrSignature) {
		t.Fatalf("stale node signature accepted: %v", err)
	}
}

func TestSignedValueVector(t *testing.T) {
	a := keyA(t)
	v, err := NewSigned(a, 3, []byte("hello boson"))
	if err != nil {
		t.Fatal(err)
	}
	if v.ID() != a.ID() {
		t.Fatal("signed value id is not the owner key")
	}
	if d := v.Digest(); hex.EncodeToString(d[:]) != "afc17067d5a25317f50bf4032755823ff4c3f13dc7da9beb5ad78f2649920b69" {
		t.Fatalf("digest %x", d)
	}
	if hex.EncodeToString(v.Sig[:]) != "7fa505d95977936c3cfbf236af7750856505dfe1ee7396683e5b89bb49260e27e2232aa823d3624c2b5b3494867006a3bdac6ee867602902e8821e278731b407" {
		t.Fatalf("sig %x", v.Sig)
	}
	if err := v.Validate(); err != nil {
		t.Fatal(err)
	}
	v.Seq = 4
	if err := v.Validate(); !errors.Is(err, ErrSignature) {
		t.Fatalf("seq bump without re-signing accepted: %v", err)
	}
	im, err := NewImmutable([]byte("hello boson"))
	if err != nil {
		t.Fatal(err)
	}
	if id := im.ID(); hex.EncodeToString(id[:]) != "d744fcccaa0f740ae9c5679bbaa676046430f235a95916d1d34a519557d4fb1c" {
		t.Fatalf("immutable id %x", id)
	}
	if err := im.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestV2ValueVector(t *testing.T) {
	a := keyA(t)
	var nonce cryptobox.Nonce
	for i := range nonce {
		nonce[i] = byte(i)
	}
	v, err := NewSignedV2(a, nonce, 3, []byte("hello boson"))
	if err != nil {
		t.Fatal(err)
	}
	if id := v.IDV2(); hex.EncodeToString(id[:]) != "5a0fa365d0887937a30b26bf9208341a5ad4288ff8ef387c3079967b198f9759" {
		t.Fatalf("v2 id %x", id)
	}
	want := "000102030405060708090a0b0c0d0e0f1011121314151617" + "00000003" + "68656c6c6f20626f736f6e"
	if got := hex.EncodeToString(v.AppendSignedBytesV2(nil)); got != want {
		t.Fatalf("signed bytes %s", got)
	}
	if hex.EncodeToString(v.Sig[:]) != "7ec6f0f3974e9ca292280d6215b7c24e26a2bc94605ff797155d5b3006773b0ff956a0915c5127a061c3faaa2004ef13dfb0ef6082fea33b6c95990fc9f08f05" {
		t.Fatalf("sig %x", v.Sig)
	}
	if err := v.ValidateV2(); err != nil {
		t.Fatal(err)
	}
	// The v2 value is not a valid v3.1 value: signed values carry no nonce
	// there, and the signature covers different bytes.
	if err := v.Validate(); err == nil {
		t.Fatal("v2 value accepted as v3.1")
	}
}

func TestV2PeerVectors(t *testing.T) {
	a, b := keyA(t), keyB(t)
	p, err := NewPeerV2(a, b.ID(), identity.ID{}, 8090, "")
	if err != nil {
		t.Fatal(err)
	}
	want := hex.EncodeToString(b.ID().Bytes()) + hex.EncodeToString(b.ID().Bytes()) + "1f9a"
	if got := hex.EncodeToString(p.AppendSignedBytes(nil)); got != want {
		t.Fatalf("signed bytes %s", got)
	}
	if hex.EncodeToString(p.Sig[:]) != "51924e4bf136aeca325542f5e1202db939b3bf2eeb6bf3b28269f29b9f21810a0e6fc9009a86b75621ba4a162e070b40523cae65b5f08703b499997ffa1c790f" {
		t.Fatalf("sig %x", p.Sig)
	}
	if p.Delegated() {
		t.Fatal("non-delegated record reports delegated")
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	d, err := NewPeerV2(a, b.ID(), a.ID(), 20000, "abc.pc2.net")
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(d.Sig[:]) != "479c9229b4f55d713cab1920ca50ec5b2f3afb22e176bc4662f4a2874fea3a18ccef3d6cfeee2a94096e825027e4e8d217d992977ff3dbc96117c11b8d7b5302" {
		t.Fatalf("delegated sig %x", d.Sig)
	}
	if !d.Delegated() {
		t.Fatal("delegated record reports non-delegated")
	}
	d.Port++
	if err := d.Validate(); !errors.Is(err, ErrSignature) {
		t.Fatalf("tampered port accepted: %v", err)
	}
}

func TestEncryptedValueRoundTrip(t *testing.T) {
	a, b := keyA(t), keyB(t)
	plain := []byte("for B only")
	v, err := NewEncrypted(a, b.ID(), 7, plain, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if v.Kind() != Encrypted || len(v.Data) != len(plain)+cryptobox.Overhead {
		t.Fatalf("kind %v, %d data bytes", v.Kind(), len(v.Data))
	}
	if err := v.Validate(); err != nil {
		t.Fatal(err)
	}
	got, err := v.Decrypt(nil, b)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("decrypt = %q, %v", got, err)
	}
	if _, err := v.Decrypt(nil, a); !errors.Is(err, ErrKey) {
		t.Fatalf("owner decrypted a value for B: %v", err)
	}
	// Changing the nonce breaks the signature: the nonce is signed.
	w := v.Clone()
	w.Nonce[0] ^= 1
	if err := w.Validate(); !errors.Is(err, ErrSignature) {
		t.Fatalf("unsigned nonce change accepted: %v", err)
	}
	// v2 flavour with the same nonce decrypts the same way.
	v2, err := NewEncryptedV2(a, b.ID(), v.Nonce, 7, plain)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(v2.Data, v.Data) {
		t.Fatal("v2 and v3.1 ciphertexts of the same box differ")
	}
	if err := v2.ValidateV2(); err != nil {
		t.Fatal(err)
	}
}

func TestValueLimits(t *testing.T) {
	a, b := keyA(t), keyB(t)
	if _, err := NewImmutable(make([]byte, MaxImmutableData+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("immutable over limit: %v", err)
	}
	if _, err := NewImmutable(make([]byte, MaxImmutableData)); err != nil {
		t.Fatal(err)
	}
	if _, err := NewImmutable(nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("empty immutable: %v", err)
	}
	if _, err := NewSigned(a, 0, make([]byte, MaxSignedData+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("signed over limit: %v", err)
	}
	if _, err := NewSigned(a, -1, []byte("x")); !errors.Is(err, ErrMalformed) {
		t.Fatalf("negative seq: %v", err)
	}
	if _, err := NewEncrypted(a, b.ID(), 0, make([]byte, MaxEncryptedPlain+1), rand.Reader); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("encrypted over limit: %v", err)
	}
	v, err := NewEncrypted(a, b.ID(), 0, make([]byte, MaxEncryptedPlain), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Data) != MaxEncryptedData {
		t.Fatalf("max ciphertext %d", len(v.Data))
	}
	// A validly signed value that breaks the limit (another implementation
	// may sign anything) must still fail Validate.
	big := Value{Owner: a.ID(), Seq: 1, Data: make([]byte, MaxSignedData+1)}
	d := big.Digest()
	copy(big.Sig[:], a.Sign(d[:]))
	if err := big.Validate(); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized signed value: %v", err)
	}
	// Immutable value with a stray owner field is malformed.
	im := Value{Seq: 2, Data: []byte("x")}
	if err := im.Validate(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("immutable with seq: %v", err)
	}
}

func TestPeerLimits(t *testing.T) {
	a := keyA(t)
	if _, err := NewPeer(a, nil, 0, 1, "", nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("empty endpoint: %v", err)
	}
	ep := "tcp://203.0.113.1:1"
	if _, err := NewPeer(a, nil, 0, 1, ep, make([]byte, MaxPeerPayload-len(ep)+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("payload over limit: %v", err)
	}
	p, err := NewPeer(a, nil, 0, 0, ep, make([]byte, MaxPeerPayload-len(ep)))
	if err != nil {
		t.Fatal(err)
	}
	if p.Fingerprint == 0 {
		t.Fatal("zero fingerprint not replaced")
	}
	// NFC: "é" as e + combining acute is normalised to U+00E9 before signing.
	q, err := NewPeer(a, nil, 0, 5, "https://caf\u0065\u0301.example/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if q.Endpoint != "https://caf\u00e9.example/" {
		t.Fatalf("endpoint not NFC: %q", q.Endpoint)
	}
}

func TestValueCBORRoundTrip(t *testing.T) {
	a, b := keyA(t), keyB(t)
	im, _ := NewImmutable([]byte("This is a immutable value"))
	sv, _ := NewSigned(a, 3, []byte("hello boson"))
	ev, _ := NewEncrypted(a, b.ID(), 9, []byte("secret"), rand.Reader)
	for _, v := range []Value{im, sv, ev} {
		enc := v.AppendCBOR(nil)
		var got Value
		if err := got.DecodeCBOR(enc); err != nil {
			t.Fatalf("%v: %v", v.Kind(), err)
		}
		if !got.Equal(&v) {
			t.Fatalf("%v: round trip changed the value", v.Kind())
		}
		if err := got.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	// The immutable map is exactly {v: data}, as Boson writes it.
	if got := hex.EncodeToString(im.AppendCBOR(nil)); got != "bf6176581954686973206973206120696d6d757461626c652076616c7565ff" {
		t.Fatalf("immutable map %s", got)
	}
}

func TestValueCBORRejects(t *testing.T) {
	a := keyA(t)
	sv, _ := NewSigned(a, 3, []byte("hello"))
	good := sv.AppendCBOR(nil)
	cases := map[string][]byte{
		"not a map":         {0x80},
		"empty map":         {0xa0},
		"trailing bytes":    append(append([]byte{}, good...), 0x00),
		"truncated":         good[:len(good)-3],
		"short owner":       unhex(t, "a2616b4101617641ff"),
		"zero owner":        append(append(unhex(t, "a3616b5820"), make([]byte, 32)...), unhex(t, "637369675840")...),
		"no data":           unhex(t, "a1617380"),
		"empty data":        unhex(t, "a1617640"),
		"immutable with n":  append(append(unhex(t, "a2616e5818"), make([]byte, 24)...), unhex(t, "617641ff")...),
		"duplicate v":       unhex(t, "a2617641ff617641ff"),
		"mutable no sig":    append(append(unhex(t, "a2616b5820"), a.ID().Bytes()...), unhex(t, "617641ff")...),
		"seq out of int32":  append(append(unhex(t, "a3616b5820"), a.ID().Bytes()...), unhex(t, "637365711b0000000100000000617641ff")...),
		"key is a byte str": unhex(t, "a1417641ff"),
	}
	for name, b := range cases {
		var v Value
		if err := v.DecodeCBOR(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestPeerCBORRoundTrip(t *testing.T) {
	a, b := keyA(t), keyB(t)
	p1, _ := NewPeer(a, nil, 0, 4660, "tcp://203.0.113.10:9090", nil)
	p2, _ := NewPeer(a, b, 5, -77, "https://example.com/", []byte(`{"altEndpoint":"tcp://203.0.113.1:1"}`))
	for _, p := range []PeerInfo{p1, p2} {
		var got PeerInfo
		if err := got.DecodeCBOR(p.AppendCBOR(nil)); err != nil {
			t.Fatal(err)
		}
		if !got.Equal(&p) {
			t.Fatalf("round trip changed %+v into %+v", p, got)
		}
		if err := got.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	// o without os is malformed.
	bad := append(unhex(t, "a3626964"), cborBytes(a.ID().Bytes())...)
	bad = append(bad, unhex(t, "616f")...)
	bad = append(bad, cborBytes(b.ID().Bytes())...)
	bad = append(bad, unhex(t, "61656178")...)
	var p PeerInfo
	if err := p.DecodeCBOR(bad); err == nil {
		t.Fatal("peer with o and no os accepted")
	}
}

func cborBytes(b []byte) []byte { return append([]byte{0x58, byte(len(b))}, b...) }

func TestStoreRules(t *testing.T) {
	a := keyA(t)
	v3, _ := NewSigned(a, 3, []byte("three"))
	v4, _ := NewSigned(a, 4, []byte("four"))
	v3b, _ := NewSigned(a, 3, []byte("other three"))
	im, _ := NewImmutable([]byte("x"))
	type tc struct {
		name     string
		old, new *Value
		cas      int32
		act      StoreAction
		err      error
	}
	for _, c := range []tc{
		{"first", nil, &v3, -1, Replace, nil},
		{"higher", &v3, &v4, -1, Replace, nil},
		{"equal keeps first", &v3, &v3b, -1, Keep, nil},
		{"lower keeps", &v4, &v3, -1, Keep, nil},
		{"cas equal", &v3, &v4, 3, Replace, nil},
		{"cas above", &v3, &v4, 7, Replace, nil},
		{"cas below stored", &v4, &v4, 3, Keep, ErrCASFail},
		{"mix", &v3, &im, -1, Keep, ErrImmutableSubstitution},
	} {
		act, err := CheckValueStore(c.old, c.new, c.cas)
		if act != c.act || !errors.Is(err, c.err) || (c.err == nil) != (err == nil) {
			t.Errorf("%s: got %v, %v; want %v, %v", c.name, act, err, c.act, c.err)
		}
	}
	if _, err := CheckValueStoreV2(&v4, &v3, -1); !errors.Is(err, ErrSeqNotMonotonic) {
		t.Errorf("v2 lower seq: %v", err)
	}
	if _, err := CheckValueStoreV2(&v3, &v4, 2); !errors.Is(err, ErrCASFail) {
		t.Errorf("v2 cas mismatch: %v", err)
	}
	if act, err := CheckValueStoreV2(&v3, &v3b, 3); act != Replace || err != nil {
		t.Errorf("v2 equal seq with matching cas: %v %v", act, err)
	}

	b := keyB(t)
	pa, _ := NewPeer(a, b, 1, 9, "tcp://203.0.113.1:1", nil)
	pu, _ := NewPeer(a, nil, 2, 9, "tcp://203.0.113.1:2", nil)
	pb, _ := NewPeer(a, b, 2, 9, "tcp://203.0.113.1:3", nil)
	if _, err := CheckPeerStore(&pa, &pu, -1); !errors.Is(err, ErrAuthDowngrade) {
		t.Errorf("authentication dropped: %v", err)
	}
	if act, err := CheckPeerStore(&pa, &pb, -1); act != Replace || err != nil {
		t.Errorf("authenticated update: %v %v", act, err)
	}
	if _, err := CheckPeerStore(&pb, &pb, 1); !errors.Is(err, ErrCASFail) {
		t.Errorf("peer cas: %v", err)
	}
}
