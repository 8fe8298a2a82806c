package directory

import (
	"context"
	"crypto/rand"
	"errors"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/store"
	"github.com/elacity/pc2/dht/node"
)

func startDHT(t *testing.T, boot *node.Node) *node.Node {
	t.Helper()
	kp, _ := identity.Generate(rand.Reader)
	db, err := store.Open(filepath.Join(t.TempDir(), "pc2.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cfg := node.DefaultConfig(true)
	cfg.Bind6 = "off"
	if boot != nil {
		cfg.Bootstrap = []string{boot.ID().String() + "@" + boot.Addrs()[0].String()}
	}
	n, err := node.New(cfg, node.Options{Identity: kp, Storage: db.Namespace(node.ServiceName), Timers: node.Timers{Tick: 50 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close(); db.Close() })
	return n
}

// TestDHTPublishLookup runs real DHT nodes on loopback.
func TestDHTPublishLookup(t *testing.T) {
	first := startDHT(t, nil)
	nodes := []*node.Node{first}
	for range 3 {
		nodes = append(nodes, startDHT(t, first))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 2 {
		for _, n := range nodes[1:] {
			if err := n.Bootstrap(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	a, b := nodes[1], nodes[3]
	kp, _ := identity.Generate(rand.Reader)
	forger, _ := identity.Generate(rand.Reader)
	now := time.Now().Truncate(time.Second)

	if _, err := Lookup(ctx, b, kp.ID(), now, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("before publish: %v", err)
	}
	rec := testRecord()
	rec.Issued = now
	if err := Publish(ctx, a, kp, rec); err != nil {
		t.Fatal(err)
	}
	got, err := Lookup(ctx, b, kp.ID(), now, 0)
	if err != nil || got.UDP[0] != rec.UDP[0] {
		t.Fatalf("lookup: %+v %v", got, err)
	}

	rec.Issued = now.Add(time.Second)
	rec.UDP = []netip.AddrPort{netip.MustParseAddrPort("198.51.100.9:5000")}
	if err := Publish(ctx, a, kp, rec); err != nil {
		t.Fatal(err)
	}
	got, err = Lookup(ctx, b, kp.ID(), now, 0)
	if err != nil || got.UDP[0] != rec.UDP[0] {
		t.Fatalf("lookup after republish: %+v %v", got, err)
	}

	// A record signed by another key lives under the forger's id, never kp's.
	forged := rec
	forged.Issued = now.Add(3 * time.Second)
	forged.UDP = []netip.AddrPort{netip.MustParseAddrPort("198.51.100.66:6666")}
	if err := Publish(ctx, a, forger, forged); err != nil {
		t.Fatal(err)
	}
	got, err = Lookup(ctx, b, kp.ID(), now, 0)
	if err != nil || got.UDP[0] != rec.UDP[0] || got.ID != kp.ID() {
		t.Fatalf("after forgery: %+v %v", got, err)
	}
}
