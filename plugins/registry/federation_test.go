package registry_test

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/plugins/registry"
	"github.com/elacity/pc2/plugins/registry/client"
	"github.com/elacity/pc2/plugins/registry/wire"
)

type fixedClaims struct{ owner atomic.Pointer[identity.ID] }

func (c *fixedClaims) ClaimedElsewhere(_ string, id identity.ID) bool {
	o := c.owner.Load()
	return o != nil && *o != id
}

// TestEvictAndClaims: a name another id holds elsewhere is refused as
// taken; Evict removes only the named owner's record, durably, publishes
// the name freed, and Records lists what is left.
func TestEvictAndClaims(t *testing.T) {
	claims := &fixedClaims{}
	e := newEnv(t, func(o *registry.Options, _ *registry.APIOptions) { o.Claims = claims })
	ctx := context.Background()
	a, b := key(t, 1), key(t, 2)
	if _, err := e.client(a).Register(ctx, alice); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client(a).Register(ctx, wireReg("bob.ela.city")); err != nil {
		t.Fatal(err)
	}
	if ok, err := e.reg.Evict(ctx, alice.Name, b.ID()); ok || err != nil {
		t.Fatalf("evicting another owner's name: %v %v", ok, err)
	}
	if ok, err := e.reg.Evict(ctx, alice.Name, a.ID()); !ok || err != nil {
		t.Fatalf("evict: %v %v", ok, err)
	}
	if _, published := e.pub.Get(alice.Name); published {
		t.Error("the evicted name is still published")
	}
	e.reopen()
	if _, ok := e.reg.TLSTarget(alice.Name); ok {
		t.Fatal("the eviction did not survive a reopen")
	}
	var left []string
	e.reg.Records(func(r *wire.Record) { left = append(left, r.Name) })
	if len(left) != 1 || left[0] != "bob.ela.city" {
		t.Fatalf("Records after the eviction: %v", left)
	}
	id := b.ID()
	claims.owner.Store(&id)
	cl := e.client(a)
	cl.BaseURL = e.url
	_, err := cl.Register(ctx, alice)
	wantCode(t, err, wire.CodeTaken)
	// The winner itself may register it here.
	cb := e.client(b)
	if _, err := cb.Register(ctx, alice); err != nil {
		t.Fatalf("the claim's owner registering: %v", err)
	}
}

func wireReg(name string) client.Registration {
	return client.Registration{Name: name, Target: alice.Target}
}
