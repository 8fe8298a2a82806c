package directory_test

import (
	"context"
	"crypto/rand"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	dhtnode "github.com/elacity/pc2/dht/node"
	"github.com/elacity/pc2/dht/record"
	"github.com/elacity/pc2/transport/peer/directory"
)

func newKey(t testing.TB) *identity.KeyPair {
	t.Helper()
	kp, err := identity.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func sample(t testing.TB) directory.Record {
	return directory.Record{
		Issued: time.Now().Unix(),
		NAT:    "endpoint-independent",
		UDP:    []netip.AddrPort{netip.MustParseAddrPort("203.0.113.7:4000"), netip.MustParseAddrPort("192.168.1.7:4000")},
		Relays: []directory.Relay{{ID: newKey(t).ID(), Addr: netip.MustParseAddrPort("198.51.100.1:39004")}},
	}
}

func TestSignAndVerify(t *testing.T) {
	kp := newKey(t)
	r := sample(t)
	v, err := directory.Value(kp, r)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	got, err := directory.FromValue(kp.ID(), &v, now)
	if err != nil || got.ID != kp.ID() || got.UDP[0] != r.UDP[0] || got.Relays[0] != r.Relays[0] {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	// Another id's slot, a changed payload, a stranger's signature.
	if _, err := directory.FromValue(newKey(t).ID(), &v, now); !errors.Is(err, directory.ErrForged) {
		t.Errorf("record under another id: %v", err)
	}
	bad := v.Clone()
	bad.Data = []byte(strings.Replace(string(bad.Data), "203.0.113.7", "203.0.113.8", 1))
	if _, err := directory.FromValue(kp.ID(), &bad, now); !errors.Is(err, directory.ErrForged) {
		t.Errorf("tampered payload: %v", err)
	}
	// Age.
	if _, err := directory.FromValue(kp.ID(), &v, now.Add(directory.MaxAge+time.Minute)); !errors.Is(err, directory.ErrExpired) {
		t.Errorf("old record: %v", err)
	}
	if _, err := directory.FromValue(kp.ID(), &v, now.Add(-directory.MaxSkew-time.Minute)); !errors.Is(err, directory.ErrExpired) {
		t.Errorf("future record: %v", err)
	}
	// A seq that is not the issued time.
	r2 := r
	r2.Issued++
	b, _ := r2.Marshal()
	odd, _ := record.NewSigned(kp, v.Seq, b)
	if _, err := directory.FromValue(kp.ID(), &odd, now); !errors.Is(err, directory.ErrMalformed) {
		t.Errorf("seq ≠ issued: %v", err)
	}
}

func TestStrictDecoding(t *testing.T) {
	id := newKey(t).ID()
	ok := `{"t":1800000000,"udp":["203.0.113.7:4000"]}`
	if _, err := directory.Unmarshal(id, []byte(ok)); err != nil {
		t.Fatalf("valid payload refused: %v", err)
	}
	for name, p := range map[string]string{
		"unknown field": `{"t":1800000000,"x":1}`,
		"trailing":      `{"t":1800000000} {}`,
		"bad address":   `{"t":1800000000,"udp":["203.0.113.7"]}`,
		"port zero":     `{"t":1800000000,"udp":["203.0.113.7:0"]}`,
		"unspecified":   `{"t":1800000000,"udp":["0.0.0.0:4000"]}`,
		"too many":      `{"t":1800000000,"udp":["1.1.1.1:1","1.1.1.1:2","1.1.1.1:3","1.1.1.1:4","1.1.1.1:5","1.1.1.1:6","1.1.1.1:7","1.1.1.1:8","1.1.1.1:9"]}`,
		"relay no id":   `{"t":1800000000,"relays":[{"addr":"198.51.100.1:1"}]}`,
		"old":           `{"t":100}`,
		"not json":      `t=1800000000`,
		"oversize":      `{"t":1800000000,"nat":"` + strings.Repeat("x", 3000) + `"}`,
	} {
		if _, err := directory.Unmarshal(id, []byte(p)); !errors.Is(err, directory.ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

func startNode(t *testing.T, boot *dhtnode.Node) *dhtnode.Node {
	t.Helper()
	cfg := dhtnode.DefaultConfig(true)
	cfg.Bind6 = "off"
	if boot != nil {
		cfg.Bootstrap = []string{boot.ID().String() + "@" + boot.Addrs()[0].String()}
	}
	n, err := dhtnode.New(cfg, dhtnode.Options{Identity: newKey(t), Timers: dhtnode.Timers{Tick: 50 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// TestPublishAndLookup runs real DHT nodes on loopback: one publishes,
// another finds the record, a newer record replaces it, and a record for
// the same id signed by another key is never returned.
func TestPublishAndLookup(t *testing.T) {
	boot := startNode(t, nil)
	nodes := []*dhtnode.Node{boot}
	for range 5 {
		nodes = append(nodes, startNode(t, boot))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range nodes[1:] {
		if err := n.Bootstrap(ctx); err != nil {
			t.Fatal(err)
		}
	}
	a, b := nodes[1], nodes[4]
	kp := newKey(t)
	r := sample(t)
	r.Issued = time.Now().Unix() - 10
	if err := directory.Publish(ctx, a, kp, r); err != nil {
		t.Fatal(err)
	}
	got, err := directory.Lookup(ctx, b, kp.ID(), time.Now())
	if err != nil || got.UDP[0] != r.UDP[0] {
		t.Fatalf("lookup: %+v, %v", got, err)
	}
	r2 := r
	r2.Issued++
	r2.UDP = []netip.AddrPort{netip.MustParseAddrPort("203.0.113.9:5000")}
	if err := directory.Publish(ctx, a, kp, r2); err != nil {
		t.Fatal(err)
	}
	got, err = directory.Lookup(ctx, nodes[5], kp.ID(), time.Now())
	if err != nil || got.UDP[0] != r2.UDP[0] {
		t.Fatalf("lookup after republish: %+v, %v", got, err)
	}
	// A forger cannot write under kp's id: its value's id is its own key.
	forger := newKey(t)
	fr := r2
	fr.Issued += 100
	fr.UDP = []netip.AddrPort{netip.MustParseAddrPort("203.0.113.66:6666")}
	fv, _ := directory.Value(forger, fr)
	fv.Owner = kp.ID() // claim kp's slot: the signature no longer verifies
	if _, err := a.PutValue(ctx, fv, dhtnode.PutOptions{}); err == nil {
		t.Fatal("the DHT stored a forged value")
	}
	got, err = directory.Lookup(ctx, b, kp.ID(), time.Now())
	if err != nil || got.UDP[0] != r2.UDP[0] {
		t.Fatalf("after the forgery: %+v, %v", got, err)
	}
	if _, err := directory.Lookup(ctx, b, newKey(t).ID(), time.Now()); !errors.Is(err, directory.ErrNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
	// The publisher republishes on change.
	d := directory.New(func() *dhtnode.Node { return b }, nil)
	udp := netip.MustParseAddrPort("203.0.113.10:7000")
	published := make(chan directory.Record, 4)
	pub := &directory.Publisher{
		Node: func() *dhtnode.Node { return a }, Key: kp, MinGap: 50 * time.Millisecond,
		Fields:    func() directory.Record { return directory.Record{UDP: []netip.AddrPort{udp}} },
		Published: func(r directory.Record) { published <- r },
	}
	pctx, pcancel := context.WithCancel(ctx)
	defer pcancel()
	go pub.Run(pctx)
	select {
	case <-published:
	case <-ctx.Done():
		t.Fatal("publisher did not publish")
	}
	got, err = d.Resolve(ctx, kp.ID())
	if err != nil || got.UDP[0] != udp {
		t.Fatalf("resolve: %+v, %v", got, err)
	}
}
