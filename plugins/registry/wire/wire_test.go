package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/elacity/pc2/core/identity"
)

func key(t testing.TB, b byte) *identity.KeyPair {
	kp, err := identity.FromSeed(bytes.Repeat([]byte{b}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func sample(t testing.TB) *Request {
	r := &Request{
		Op: OpRegister, Name: "alice.ela.city", Target: "203.0.113.7:443", HTTP: "203.0.113.7:80",
		RedirectHTTPS: true, Timestamp: 1700000000, Nonce: "000102030405060708090a0b0c0d0e0f",
	}
	r.Sign(key(t, 1))
	return r
}

// The canonical form is a protocol: this vector is in the README, and other
// implementations test against it. Changing it breaks every client.
func TestCanonicalVector(t *testing.T) {
	r := sample(t)
	want := "pc2-registry-v1\nop=register\nname=alice.ela.city\nid=" + key(t, 1).ID().String() +
		"\ntarget=203.0.113.7:443\nhttp=203.0.113.7:80\nredirectHTTPS=1\ndnsDirect=0\nnewOwner=\ntxt=\nts=1700000000\nnonce=000102030405060708090a0b0c0d0e0f\n"
	if got := string(r.Canonical()); got != want {
		t.Fatalf("canonical:\n%s\nwant:\n%s", got, want)
	}
	if r.ID.String() != "AKnL4NNf3DGWZJS6cPknBuEGnVsV4A4m5tgebLHaRSZ9" {
		t.Fatalf("id of seed 0x01*32 = %s", r.ID)
	}
	// Cross-checked with Python's cryptography package (Ed25519PrivateKey
	// from seed 0x01*32 signing the bytes above).
	const sig = "c004b518bb1ca71c05522bce5c6a888deeb2c8426d7d8847816603fece36be7d82fdd3e60255e2bf16d9d31f3e9ef0523125a846160b9bd57021a85306755a04"
	if r.Sig != sig {
		t.Fatalf("sig = %s", r.Sig)
	}
	if err := r.Verify(); err != nil {
		t.Fatal(err)
	}
}

func TestEveryFieldIsSigned(t *testing.T) {
	newOwner := key(t, 2).ID()
	mutations := map[string]func(r *Request){
		"op":       func(r *Request) { r.Op = OpUpdate },
		"name":     func(r *Request) { r.Name = "alicf.ela.city" },
		"id":       func(r *Request) { r.ID = key(t, 3).ID() },
		"target":   func(r *Request) { r.Target = "203.0.113.8:443" },
		"http":     func(r *Request) { r.HTTP = "" },
		"redirect": func(r *Request) { r.RedirectHTTPS = false },
		"direct":   func(r *Request) { r.DNSDirect = true },
		"newOwner": func(r *Request) { r.NewOwner = &newOwner },
		"txt":      func(r *Request) { r.TXT = "x" },
		"ts":       func(r *Request) { r.Timestamp++ },
		"nonce":    func(r *Request) { r.Nonce = "100102030405060708090a0b0c0d0e0f" },
		"sig":      func(r *Request) { r.Sig = strings.Repeat("0", 128) },
	}
	for name, mut := range mutations {
		r := sample(t)
		mut(r)
		if err := r.Verify(); !errors.Is(err, ErrSignature) {
			t.Errorf("%s changed, Verify = %v", name, err)
		}
	}
}

func TestTransferNeedsCoSignature(t *testing.T) {
	alice, bob := key(t, 1), key(t, 2)
	bobID := bob.ID()
	r := &Request{Op: OpTransfer, Name: "alice.ela.city", Target: "198.51.100.1:443", NewOwner: &bobID,
		Timestamp: 1700000000, Nonce: "000102030405060708090a0b0c0d0e0f"}
	r.Sign(alice)
	if err := r.Check(); err == nil {
		t.Fatal("transfer without coSig passed Check")
	}
	if err := r.CoSign(alice); err == nil {
		t.Fatal("owner co-signed as new owner")
	}
	if err := r.CoSign(bob); err != nil {
		t.Fatal(err)
	}
	if err := r.Check(); err != nil {
		t.Fatal(err)
	}
	if err := r.Verify(); err != nil {
		t.Fatal(err)
	}
	r.CoSig = r.Sig // alice's signature in bob's place
	if err := r.Verify(); !errors.Is(err, ErrSignature) {
		t.Fatalf("forged coSig: %v", err)
	}
}

func TestDecodeRoundTripAndErrors(t *testing.T) {
	r := sample(t)
	b, _ := json.Marshal(r)
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Canonical(), r.Canonical()) || got.Sig != r.Sig || got.Verify() != nil {
		t.Fatal("round trip changed the request")
	}
	valid := string(b)
	for name, body := range map[string]string{
		"empty":         "",
		"not json":      "{",
		"unknown field": strings.Replace(valid, `"op"`, `"extra":1,"op"`, 1),
		"trailing":      valid + "{}",
		"too large":     valid + strings.Repeat(" ", MaxRequestSize),
		"uppercase":     strings.Replace(valid, "alice.ela.city", "Alice.ela.city", 1),
		"trailing dot":  strings.Replace(valid, "alice.ela.city", "alice.ela.city.", 1),
		"hostname":      strings.Replace(valid, "203.0.113.7:443", "example.com:443", 1),
		"port zero":     strings.Replace(valid, "203.0.113.7:443", "203.0.113.7:0", 1),
		"unspecified":   strings.Replace(valid, "203.0.113.7:443", "0.0.0.0:443", 1),
		"not normal":    strings.Replace(valid, "203.0.113.7:443", "203.0.113.07:443", 1),
		"bad op":        strings.Replace(valid, `"register"`, `"steal"`, 1),
		"short nonce":   strings.Replace(valid, "000102030405060708090a0b0c0d0e0f", "0001", 1),
		"upper nonce":   strings.Replace(valid, "0a0b0c0d0e0f", "0A0B0C0D0E0F", 1),
		"zero ts":       strings.Replace(valid, "1700000000", "0", 1),
		"sig short":     strings.Replace(valid, r.Sig, r.Sig[:10], 1),
		"txt on reg":    strings.Replace(valid, `"ts"`, `"txt":"x","ts"`, 1),
		"newOwner":      strings.Replace(valid, `"ts"`, `"newOwner":"`+key(t, 2).ID().String()+`","ts"`, 1),
	} {
		if _, err := Decode([]byte(body)); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s: untyped error %v", name, err)
		}
	}
}

func TestOpFieldRules(t *testing.T) {
	base := func(op Op) *Request {
		return &Request{Op: op, Name: "alice.ela.city", ID: key(t, 1).ID(), Timestamp: 1, Nonce: strings.Repeat("ab", 16), Sig: strings.Repeat("0", 128)}
	}
	ok := []*Request{
		func() *Request { r := base(OpDelete); return r }(),
		func() *Request { r := base(OpACMESet); r.TXT = "abc-DEF_123"; return r }(),
		func() *Request { r := base(OpACMEDelete); return r }(),
		func() *Request { r := base(OpUpdate); r.Target = "[2001:db8::1]:443"; return r }(),
	}
	for _, r := range ok {
		if err := r.Check(); err != nil {
			t.Errorf("%s: %v", r.Op, err)
		}
	}
	bad := []*Request{
		func() *Request { r := base(OpDelete); r.Target = "192.0.2.1:1"; return r }(),
		func() *Request { r := base(OpACMESet); return r }(),
		func() *Request { r := base(OpACMESet); r.TXT = "has space"; return r }(),
		func() *Request { r := base(OpACMESet); r.TXT = strings.Repeat("a", MaxTXT+1); return r }(),
		func() *Request { r := base(OpRegister); return r }(),
		func() *Request { r := base(OpRegister); r.Target = "192.0.2.1:1"; r.HTTP = "224.0.0.1:80"; return r }(),
		func() *Request { r := base(OpRegister); r.Target = "[fe80::1%eth0]:443"; return r }(),
	}
	for i, r := range bad {
		if err := r.Check(); !errors.Is(err, ErrMalformed) {
			t.Errorf("bad[%d] %s: %v", i, r.Op, err)
		}
	}
}

func TestRecordProof(t *testing.T) {
	r := sample(t)
	rec := &Record{Name: r.Name, Owner: r.ID, Target: r.Target, HTTP: r.HTTP, RedirectHTTPS: r.RedirectHTTPS,
		Proof: Proof{Op: r.Op, ID: r.ID, Timestamp: r.Timestamp, Nonce: r.Nonce, Sig: r.Sig}}
	if err := rec.VerifyProof(); err != nil {
		t.Fatal(err)
	}
	rec.Target = "203.0.113.9:443"
	if err := rec.VerifyProof(); err == nil {
		t.Fatal("a record whose target was changed still verifies")
	}
	rec.Target = r.Target
	rec.Owner = key(t, 2).ID()
	if err := rec.VerifyProof(); err == nil {
		t.Fatal("a record with another owner verifies")
	}
}

func BenchmarkDecodeVerify(b *testing.B) {
	body, _ := json.Marshal(sample(b))
	b.ReportAllocs()
	for b.Loop() {
		r, err := Decode(body)
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Verify(); err != nil {
			b.Fatal(err)
		}
	}
}
