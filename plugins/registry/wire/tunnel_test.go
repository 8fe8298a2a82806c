package wire

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// TestTunnelTarget: "tunnel" is a valid target and http value, signed
// like any other; it cannot be combined with dnsDirect (no address to
// answer with); other words are still refused; and a record with an IP
// target (the only form before) still decodes and verifies.
func TestTunnelTarget(t *testing.T) {
	r := &Request{Op: OpRegister, Name: "alice.ela.city", Target: TargetTunnel, HTTP: TargetTunnel,
		Timestamp: 1700000000, Nonce: "000102030405060708090a0b0c0d0e0f"}
	r.Sign(key(t, 1))
	body, _ := json.Marshal(r)
	got, err := Decode(body)
	if err != nil {
		t.Fatal(err)
	}
	if err := got.Verify(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(got.Canonical()), "\ntarget=tunnel\nhttp=tunnel\n") {
		t.Fatalf("canonical bytes:\n%s", got.Canonical())
	}
	rec := &Record{Name: r.Name, Owner: r.ID, Target: r.Target, HTTP: r.HTTP,
		Proof: Proof{Op: r.Op, ID: r.ID, Timestamp: r.Timestamp, Nonce: r.Nonce, Sig: r.Sig}}
	if err := rec.VerifyProof(); err != nil {
		t.Fatalf("tunnel record proof: %v", err)
	}
	rec.Target = "203.0.113.7:443"
	if rec.VerifyProof() == nil {
		t.Fatal("a tunnel record turned into an IP target still verifies")
	}

	for _, bad := range []func(*Request){
		func(q *Request) { q.DNSDirect = true },
		func(q *Request) { q.Target = "Tunnel" },
		func(q *Request) { q.Target = "tunnel:443" },
		func(q *Request) { q.HTTP = "tunnels" },
	} {
		q := *r
		bad(&q)
		q.Sign(key(t, 1))
		body, _ := json.Marshal(&q)
		if _, err := Decode(body); !errors.Is(err, ErrMalformed) {
			t.Errorf("target %q http %q dnsDirect %v: err %v, want malformed", q.Target, q.HTTP, q.DNSDirect, err)
		}
	}

	// A record stored before tunnel targets existed.
	old := sample(t)
	oldRec := &Record{Name: old.Name, Owner: old.ID, Target: old.Target, HTTP: old.HTTP, RedirectHTTPS: old.RedirectHTTPS,
		Proof: Proof{Op: old.Op, ID: old.ID, Timestamp: old.Timestamp, Nonce: old.Nonce, Sig: old.Sig}}
	stored, _ := json.Marshal(oldRec)
	var back Record
	if err := json.Unmarshal(stored, &back); err != nil || back.VerifyProof() != nil {
		t.Fatalf("old record: %v / %v", err, back.VerifyProof())
	}
}
