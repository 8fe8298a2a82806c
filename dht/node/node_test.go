package node

import (
	"context"
	"crypto/rand"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/store"
	"github.com/elacity/pc2/dht/message"
	"github.com/elacity/pc2/dht/packet"
	"github.com/elacity/pc2/dht/record"
)

// testNet is a set of in-process nodes on loopback.
type testNet struct {
	t     *testing.T
	nodes []*Node
}

type nodeOpt func(*Config, *Options)

func newKey(t testing.TB) *identity.KeyPair {
	t.Helper()
	kp, err := identity.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

// openDB opens a database in dir; the caller closes it.
func openDB(t testing.TB, dir string) *store.DB {
	t.Helper()
	db, err := store.Open(filepath.Join(dir, "pc2.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// startNode starts a node with a database in dir (a temp dir when empty).
func startNode(t testing.TB, kp *identity.KeyPair, dir string, opts ...nodeOpt) (*Node, func()) {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	db := openDB(t, dir)
	cfg := DefaultConfig(true)
	cfg.Bind6 = "off"
	o := Options{Identity: kp, Storage: db.Namespace(ServiceName), Timers: Timers{Tick: 50 * time.Millisecond}}
	for _, f := range opts {
		f(&cfg, &o)
	}
	n, err := New(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	stop := func() {
		n.Close()
		db.Close()
	}
	return n, stop
}

func bootOf(n *Node) string { return n.ID().String() + "@" + n.Addrs()[0].String() }

func withBoot(boot ...*Node) nodeOpt {
	return func(c *Config, _ *Options) {
		for _, b := range boot {
			c.Bootstrap = append(c.Bootstrap, bootOf(b))
		}
	}
}

// newTestNet starts count nodes that join through the first and waits
// until each has bootstrapped.
func newTestNet(t *testing.T, count int, opts ...nodeOpt) *testNet {
	t.Helper()
	tn := &testNet{t: t}
	first, stop := startNode(t, newKey(t), "", opts...)
	t.Cleanup(stop)
	tn.nodes = append(tn.nodes, first)
	for range count - 1 {
		n, stop := startNode(t, newKey(t), "", append(opts, withBoot(first))...)
		t.Cleanup(stop)
		tn.nodes = append(tn.nodes, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, n := range tn.nodes[1:] {
		if err := n.Bootstrap(ctx); err != nil {
			t.Fatalf("bootstrap %s: %v", n.ID(), err)
		}
	}
	// A second round lets early joiners learn of later ones.
	for _, n := range tn.nodes[1:] {
		if err := n.Bootstrap(ctx); err != nil {
			t.Fatalf("bootstrap %s: %v", n.ID(), err)
		}
	}
	return tn
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestPutGetAcrossNodes(t *testing.T) {
	tn := newTestNet(t, 8)
	ctx := ctxT(t, 60*time.Second)
	owner := newKey(t)

	imm, err := record.NewImmutable([]byte("hello from an immutable value"))
	if err != nil {
		t.Fatal(err)
	}
	signed, err := record.NewSigned(owner, 3, []byte("signed value, seq 3"))
	if err != nil {
		t.Fatal(err)
	}
	peer, err := record.NewPeer(owner, nil, 1, 0, "tcp://203.0.113.7:9090", nil)
	if err != nil {
		t.Fatal(err)
	}
	src := tn.nodes[3]
	for _, v := range []record.Value{imm, signed} {
		res, err := src.PutValue(ctx, v, PutOptions{})
		if err != nil {
			t.Fatalf("put %v: %v (%+v)", v.Kind(), err, res)
		}
		t.Logf("put %v: stored %d failed %d", v.Kind(), res.Stored, res.Failed)
		if res.Stored < 4 {
			t.Fatalf("put %v stored on %d nodes, want >= 4 of 7", v.Kind(), res.Stored)
		}
	}
	if res, err := src.AnnouncePeer(ctx, peer, PutOptions{}); err != nil || res.Stored < 4 {
		t.Fatalf("announce: %v (%+v)", err, res)
	}
	for i, n := range tn.nodes {
		for _, want := range []record.Value{imm, signed} {
			got, err := n.GetValue(ctx, want.ID(), GetOptions{})
			if err != nil {
				t.Fatalf("node %d get %v: %v", i, want.Kind(), err)
			}
			if !got.Equal(&want) {
				t.Fatalf("node %d got %+v, want %+v", i, got, want)
			}
		}
		ps, err := n.FindPeer(ctx, peer.ID, FindPeerOptions{})
		if err != nil || len(ps) != 1 || !ps[0].Equal(&peer) {
			t.Fatalf("node %d find peer: %v %+v", i, err, ps)
		}
	}
	// A newer signed value replaces the old one everywhere it is stored.
	newer, _ := record.NewSigned(owner, 4, []byte("signed value, seq 4"))
	if _, err := src.PutValue(ctx, newer, PutOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := tn.nodes[6].GetValue(ctx, owner.ID(), GetOptions{})
	if err != nil || got.Seq != 4 {
		t.Fatalf("after update: %v seq %d", err, got.Seq)
	}
	// Unknown ids are not found.
	if _, err := tn.nodes[2].GetValue(ctx, newKey(t).ID(), GetOptions{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing value: %v", err)
	}
}

// TestClientStaysOutOfTables: a short-lived client (the pc2 dht query
// commands) that looks up, stores and answers challenges is in no
// routing table afterwards.
func TestClientStaysOutOfTables(t *testing.T) {
	tn := newTestNet(t, 5)
	ctx := ctxT(t, 30*time.Second)
	client, stop := startNode(t, newKey(t), "", withBoot(tn.nodes[0]), func(_ *Config, o *Options) { o.Client = true })
	defer stop()
	if err := client.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	v, _ := record.NewImmutable([]byte("from a client"))
	if _, err := client.PutValue(ctx, v, PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.GetValue(ctx, v.ID(), GetOptions{}); err != nil {
		t.Fatal(err)
	}
	if vs, _ := client.store.Len(); vs != 0 {
		t.Fatal("a client kept a record")
	}
	time.Sleep(200 * time.Millisecond) // let liveness checks run; nothing may add it
	for i, n := range tn.nodes {
		for _, in := range n.inst {
			in.tmu.RLock()
			_, found := in.table.Get(client.ID())
			in.tmu.RUnlock()
			if found {
				t.Fatalf("node %d holds the client in its routing table", i)
			}
		}
	}
}

// TestIPv6 runs a small network on ::1 only, and a dual-stack node that
// answers FIND_NODE with both families when asked.
func TestIPv6(t *testing.T) {
	v6 := func(c *Config, _ *Options) { c.Bind4, c.Bind6 = "off", "::1" }
	ln, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	ln.Close()
	tn := newTestNet(t, 4, v6)
	ctx := ctxT(t, 30*time.Second)
	v, _ := record.NewImmutable([]byte("over IPv6"))
	if res, err := tn.nodes[1].PutValue(ctx, v, PutOptions{}); err != nil || res.Stored < 3 {
		t.Fatalf("put over IPv6: %v %+v", err, res)
	}
	got, err := tn.nodes[3].GetValue(ctx, v.ID(), GetOptions{})
	if err != nil || !got.Equal(&v) {
		t.Fatalf("get over IPv6: %v", err)
	}
	if !tn.nodes[2].Addrs()[0].Addr().Is6() {
		t.Fatal("not on IPv6")
	}

	// Dual stack: one table per family, both in one answer.
	dual := func(c *Config, _ *Options) { c.Bind4, c.Bind6 = "127.0.0.1", "::1" }
	a, stopA := startNode(t, newKey(t), "", dual)
	defer stopA()
	b, stopB := startNode(t, newKey(t), "", dual)
	defer stopB()
	for _, addr := range b.Addrs() {
		if _, err := a.Ping(ctx, Contact{ID: b.ID(), Addr: addr}); err != nil {
			t.Fatal(err)
		}
	}
	if l := a.TableLen(); len(l) != 2 || l[0] != 1 || l[1] != 1 {
		t.Fatalf("tables per family: %v", l)
	}
	p := newRawPeer(t, "127.0.0.1:0")
	in := p.call(Contact{ID: a.ID(), Addr: a.Addrs()[0]}, &message.Message{Method: message.MethodFindNode,
		Target: randomID(), Want: message.WantIPv4 | message.WantIPv6}, packet.FramingV3)
	// n4 also holds p itself: it answered the node's challenge ping.
	has := func(list []message.NodeInfo, v6 bool) bool {
		for _, ni := range list {
			if ni.ID == b.ID() && ni.Addr(v6) == b.Addrs()[map[bool]int{false: 0, true: 1}[v6]] {
				return true
			}
		}
		return false
	}
	if !has(in.msg.Nodes4, false) || len(in.msg.Nodes6) != 1 || !has(in.msg.Nodes6, true) {
		t.Fatalf("dual-stack answer: n4 %v n6 %v", in.msg.Nodes4, in.msg.Nodes6)
	}
}
