package dhtpub

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/record"
	"github.com/elacity/pc2/plugins/registry/wire"
)

func ownerRecord(t *testing.T, owner *identity.KeyPair, name string) *wire.Record {
	var nonce [wire.NonceSize]byte
	rand.Read(nonce[:])
	now := time.Now().Unix()
	q := &wire.Request{Op: wire.OpRegister, Name: name, ID: owner.ID(), Target: "192.0.2.7:443", Timestamp: now, Nonce: hex.EncodeToString(nonce[:])}
	q.Sign(owner)
	return &wire.Record{Name: name, Owner: owner.ID(), Target: q.Target, Created: now, Updated: now, Expires: now + 3600,
		Proof: wire.Proof{Op: q.Op, ID: q.ID, Timestamp: q.Timestamp, Nonce: q.Nonce, Sig: q.Sig}}
}

func announcement(t *testing.T, super *identity.KeyPair, name string, p payload, fp int64) record.PeerInfo {
	extra, _ := json.Marshal(p)
	rec, err := record.NewPeer(nameKey(name), super, 1, fp, super.ID().DID(), extra)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func TestParseClaim(t *testing.T) {
	super, _ := identity.Generate(rand.Reader)
	owner, _ := identity.Generate(rand.Reader)
	const name = "alice.ela.city"
	rec := ownerRecord(t, owner, name)
	good := announcement(t, super, name, payload{Record: rec}, fingerprint(super.ID()))
	c, err := ParseClaim(&good, name, nil)
	if err != nil || c.Supernode != super.ID() || c.Record.Owner != owner.ID() {
		t.Fatalf("good claim: %+v %v", c, err)
	}
	if _, err := ParseClaim(&good, name, func(identity.ID) bool { return false }); err == nil {
		t.Error("claim by an untrusted supernode accepted")
	}
	if _, err := ParseClaim(&good, "bob.ela.city", nil); err == nil {
		t.Error("claim under another name's id accepted")
	}
	freed := announcement(t, super, name, payload{Deleted: name}, fingerprint(super.ID()))
	if c, err := ParseClaim(&freed, name, nil); err != nil || c.Record != nil {
		t.Errorf("freed: %+v %v", c, err)
	}
	forged := *rec
	forged.Target = "192.0.2.66:443" // the owner never signed this
	bad := announcement(t, super, name, payload{Record: &forged}, fingerprint(super.ID()))
	if _, err := ParseClaim(&bad, name, nil); err == nil {
		t.Error("record with a bad proof accepted")
	}
	slot := announcement(t, super, name, payload{Record: rec}, fingerprint(super.ID())+1)
	if _, err := ParseClaim(&slot, name, nil); err == nil {
		t.Error("announcement in another supernode's slot accepted")
	}
}
