package storage

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/elacity/pc2/core/cryptobox"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/store"
	"github.com/elacity/pc2/dht/record"
)

func key(t testing.TB) *identity.KeyPair {
	t.Helper()
	kp, err := identity.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

type clockT struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clockT) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clockT) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func openAt(t testing.TB, path string, cfg Config) (*Store, LoadStats, *store.DB) {
	t.Helper()
	db, err := store.Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s, st, err := Open(db.Namespace("dht"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, st, db
}

func sampleEntries(t testing.TB) []Entry {
	owner, node := key(t), key(t)
	imm, _ := record.NewImmutable([]byte("immutable"))
	signed, _ := record.NewSigned(owner, 3, []byte("signed"))
	enc, err := record.NewEncrypted(key(t), node.ID(), 1, []byte("secret"), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var nonce cryptobox.Nonce
	nonce[5] = 1
	v2, _ := record.NewSignedV2(owner, nonce, 2, []byte("v2 value"))
	peer, _ := record.NewPeer(owner, node, 4, 99, "https://example.com/", []byte(`{"a":1}`))
	peer2, _ := record.NewPeerV2(owner, node.ID(), identity.ID{}, 8090, "alice.pc2.net")
	now := time.Unix(1_700_000_000, 123)
	return []Entry{
		{Kind: KindValue, Time: now, Value: imm},
		{Kind: KindValue, Time: now, Value: signed},
		{Kind: KindValue, Time: now, Value: enc},
		{Kind: KindValueV2, Time: now, Value: v2},
		{Kind: KindPeer, Time: now, Peer: peer},
		{Kind: KindPeerV2, Time: now, PeerV2: peer2},
	}
}

func TestEntryRoundTrip(t *testing.T) {
	for _, e := range sampleEntries(t) {
		k := AppendKey(nil, &e)
		v := AppendValue(nil, &e)
		got, err := ParseEntry(k, v)
		if err != nil {
			t.Fatalf("%v: %v", e.Kind, err)
		}
		if got.Kind != e.Kind || !got.Time.Equal(e.Time) || !got.Value.Equal(&e.Value) ||
			!got.Peer.Equal(&e.Peer) || got.PeerV2 != e.PeerV2 {
			t.Fatalf("%v: round trip changed the entry:\n%+v\n%+v", e.Kind, got, e)
		}
		if !bytes.Equal(AppendKey(nil, &got), k) || !bytes.Equal(AppendValue(nil, &got), v) {
			t.Fatalf("%v: re-encoding differs", e.Kind)
		}
		// The parsed entry owns its bytes.
		clear(v)
		if !got.Value.Equal(&e.Value) || !got.Peer.Equal(&e.Peer) {
			t.Fatalf("%v: parsed entry aliases the input", e.Kind)
		}
	}
}

func TestParseEntryRejects(t *testing.T) {
	es := sampleEntries(t)
	good := func(i int) ([]byte, []byte) { return AppendKey(nil, &es[i]), AppendValue(nil, &es[i]) }
	k, v := good(1)
	other := append([]byte(nil), k...)
	other[5] ^= 1
	cases := map[string][2][]byte{
		"empty key":          {nil, v},
		"short value":        {k, v[:7]},
		"zero time":          {k, append(make([]byte, 8), v[8:]...)},
		"key names another":  {other, v},
		"unknown kind":       {append([]byte{'z'}, k[1:]...), v},
		"truncated record":   {k, v[:len(v)-3]},
		"peer key too short": {func() []byte { k, _ := good(4); return k[:len(k)-1] }(), func() []byte { _, v := good(4); return v }()},
		"v2 peer bad utf8": {func() []byte { k, _ := good(5); return k }(), func() []byte {
			_, v := good(5)
			return append(v, 0xff)
		}()},
		"v2 value without nonce": {func() []byte {
			e := es[1]
			e.Kind = KindValueV2
			return AppendKey(nil, &e)
		}(), v},
	}
	for name, kv := range cases {
		if _, err := ParseEntry(kv[0], kv[1]); !errors.Is(err, ErrEntry) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestStoreRules(t *testing.T) {
	clk := &clockT{now: time.Unix(1_700_000_000, 0)}
	s, _, db := openAt(t, filepath.Join(t.TempDir(), "db"), Config{Now: clk.Now})
	defer db.Close()
	defer s.Close()
	owner := key(t)
	v3, _ := record.NewSigned(owner, 3, []byte("three"))
	v2, _ := record.NewSigned(owner, 2, []byte("two"))
	v5, _ := record.NewSigned(owner, 5, []byte("five"))
	put := func(v record.Value, cas int32) error { return s.Put(Entry{Kind: KindValue, Value: v}, cas) }
	if err := put(v3, -1); err != nil {
		t.Fatal(err)
	}
	if err := put(v2, -1); err != nil { // 3.1: a lower seq is kept out silently
		t.Fatal(err)
	}
	if got, _ := s.Value(owner.ID(), false, clk.Now()); got.Seq != 3 {
		t.Fatalf("stale seq replaced: %d", got.Seq)
	}
	if err := put(v5, 2); !errors.Is(err, record.ErrCASFail) {
		t.Fatalf("cas below stored: %v", err)
	}
	if err := put(v5, 3); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Value(owner.ID(), false, clk.Now()); got.Seq != 5 {
		t.Fatalf("seq %d", got.Seq)
	}
	// Immutable substitution: an immutable value whose hash is a mutable
	// value's id (constructed here; storage does not check signatures).
	data := []byte("collide")
	fake := record.Value{Owner: sha256.Sum256(data), Seq: 1, Data: []byte("m")}
	if err := put(fake, -1); err != nil {
		t.Fatal(err)
	}
	if err := put(record.Value{Data: data}, -1); !errors.Is(err, record.ErrImmutableSubstitution) {
		t.Fatalf("substitution: %v", err)
	}
	// v2: lower seq is an error, cas must equal.
	var nonce cryptobox.Nonce
	w3, _ := record.NewSignedV2(owner, nonce, 3, []byte("w3"))
	w1, _ := record.NewSignedV2(owner, nonce, 1, []byte("w1"))
	w4, _ := record.NewSignedV2(owner, nonce, 4, []byte("w4"))
	putV2 := func(v record.Value, cas int32) error { return s.Put(Entry{Kind: KindValueV2, Value: v}, cas) }
	if err := putV2(w3, -1); err != nil {
		t.Fatal(err)
	}
	if err := putV2(w1, -1); !errors.Is(err, record.ErrSeqNotMonotonic) {
		t.Fatalf("v2 lower seq: %v", err)
	}
	if err := putV2(w4, 2); !errors.Is(err, record.ErrCASFail) {
		t.Fatalf("v2 cas: %v", err)
	}
	if _, ok := s.Value(w3.IDV2(), false, clk.Now()); ok {
		t.Fatal("v2 value visible in the v3 key space")
	}
	if got, ok := s.Value(w3.IDV2(), true, clk.Now()); !ok || got.Seq != 3 {
		t.Fatal("v2 value lost")
	}
}

func TestPeersAndBounds(t *testing.T) {
	clk := &clockT{now: time.Unix(1_700_000_000, 0)}
	s, _, db := openAt(t, filepath.Join(t.TempDir(), "db"), Config{Now: clk.Now, MaxPerPeerID: 4, MaxRecords: 6})
	defer db.Close()
	defer s.Close()
	owner, node := key(t), key(t)
	for f := int64(1); f <= 6; f++ {
		p, _ := record.NewPeer(owner, nil, int32(f), f, "tcp://203.0.113.1:1", nil)
		if err := s.Put(Entry{Kind: KindPeer, Peer: p}, -1); err != nil {
			t.Fatal(err)
		}
		clk.add(time.Second)
	}
	ps := s.Peers(nil, owner.ID(), -1, 10, clk.Now())
	if len(ps) != 4 || ps[0].Seq != 6 || ps[3].Seq != 3 {
		t.Fatalf("peer set bound: %d, first seq %d", len(ps), ps[0].Seq)
	}
	if ps := s.Peers(nil, owner.ID(), 5, 10, clk.Now()); len(ps) != 2 {
		t.Fatalf("cas filter: %d", len(ps))
	}
	// Authenticated records stay authenticated by the same node.
	auth, _ := record.NewPeer(owner, node, 10, 6, "tcp://203.0.113.1:2", nil)
	if err := s.Put(Entry{Kind: KindPeer, Peer: auth}, -1); err != nil {
		t.Fatal(err)
	}
	down, _ := record.NewPeer(owner, nil, 11, 6, "tcp://203.0.113.1:3", nil)
	if err := s.Put(Entry{Kind: KindPeer, Peer: down}, -1); !errors.Is(err, record.ErrAuthDowngrade) {
		t.Fatalf("downgrade: %v", err)
	}
	// The record limit counts values and peers.
	for i := range 3 {
		v, _ := record.NewImmutable([]byte{byte(i)})
		err := s.Put(Entry{Kind: KindValue, Value: v}, -1)
		if i < 2 && err != nil {
			t.Fatal(err)
		}
		if i == 2 && !errors.Is(err, ErrFull) {
			t.Fatalf("over the limit: %v", err)
		}
	}
}

func TestDurableAndExpiry(t *testing.T) {
	clk := &clockT{now: time.Unix(1_700_000_000, 0)}
	path := filepath.Join(t.TempDir(), "db")
	s, st, db := openAt(t, path, Config{Now: clk.Now})
	if st != (LoadStats{}) {
		t.Fatalf("fresh store: %+v", st)
	}
	es := sampleEntries(t)
	for _, e := range es {
		if err := s.Put(e, -1); err != nil {
			t.Fatalf("%v: %v", e.Kind, err)
		}
	}
	// Own items live apart from stored records.
	if err := s.PutOwn(es[1]); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// A damaged entry in the file is skipped, not fatal.
	db.Namespace("dht").Update(func(tx *store.Tx) error {
		sub, _ := tx.Sub(bucketRecords)
		return sub.Put([]byte("v-garbage"), []byte("not a record"))
	})
	db.Close()

	clk.add(time.Hour)
	s, st, db = openAt(t, path, Config{Now: clk.Now})
	if st.Loaded != len(es) || st.Bad != 1 || st.Expired != 0 {
		t.Fatalf("reload: %+v", st)
	}
	for _, e := range es {
		id := e.ID()
		switch e.Kind {
		case KindValue, KindValueV2:
			got, ok := s.Value(id, e.Kind == KindValueV2, clk.Now())
			if !ok || !got.Equal(&e.Value) {
				t.Fatalf("%v lost", e.Kind)
			}
		case KindPeer:
			if ps := s.Peers(nil, id, -1, 8, clk.Now()); len(ps) != 1 || !ps[0].Equal(&e.Peer) {
				t.Fatal("peer lost")
			}
		case KindPeerV2:
			if ps := s.PeersV2(nil, id, 8, clk.Now()); len(ps) != 1 || ps[0] != e.PeerV2 {
				t.Fatal("v2 peer lost")
			}
		}
	}
	own, err := s.Own()
	if err != nil || len(own) != 1 || !own[0].Value.Equal(&es[1].Value) {
		t.Fatalf("own items: %v %d", err, len(own))
	}
	// Refresh one, then let the others pass two hours.
	if err := s.Put(es[0], -1); err != nil {
		t.Fatal(err)
	}
	clk.add(61 * time.Minute)
	if _, ok := s.Value(es[1].ID(), false, clk.Now()); ok {
		t.Fatal("served after two hours")
	}
	if n, err := s.Expire(); err != nil || n != len(es)-1 {
		t.Fatalf("expire: %d %v", n, err)
	}
	s.Close()
	db.Close()
	s, st, db = openAt(t, path, Config{Now: clk.Now})
	defer db.Close()
	defer s.Close()
	if st.Loaded != 1 {
		t.Fatalf("after expiry: %+v", st)
	}
}

// TestGroupCommit: concurrent submitters all get an answer after their
// write is durable, in fewer transactions than writes.
func TestGroupCommit(t *testing.T) {
	s, _, db := openAt(t, filepath.Join(t.TempDir(), "db"), Config{})
	defer db.Close()
	defer s.Close()
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := time.Now()
	for i := range n {
		v, _ := record.NewImmutable([]byte{byte(i), byte(i >> 8), 1})
		wg.Add(1)
		op := &Op{Entry: Entry{Kind: KindValue, Value: v}, CAS: -1, Done: func(err error) { errs <- err; wg.Done() }}
		for s.Submit(op) != nil {
			time.Sleep(time.Millisecond)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if v, _ := s.Len(); v != n {
		t.Fatalf("%d values", v)
	}
	t.Logf("%d durable stores in %v", n, time.Since(start))
}

// BenchmarkHeap10k reports the live heap a memory-only store holds for
// 10,000 records (5,000 signed values of 512 bytes, 5,000 peer records
// with a 200-byte extra), measured after a GC.
func BenchmarkHeap10k(b *testing.B) {
	extra := bytes.Repeat([]byte{'x'}, 200)
	var es []Entry
	for i := range 10_000 {
		owner := key(b)
		if i < 5000 {
			v, _ := record.NewSigned(owner, 1, bytes.Repeat([]byte{byte(i)}, 512))
			es = append(es, Entry{Kind: KindValue, Value: v})
		} else {
			p, _ := record.NewPeer(owner, nil, 1, int64(i), "tcp://203.0.113.7:4000", extra)
			es = append(es, Entry{Kind: KindPeer, Peer: p})
		}
	}
	var ms runtime.MemStats
	for range b.N {
		runtime.GC()
		runtime.ReadMemStats(&ms)
		before := ms.HeapAlloc
		s, _, err := Open(nil, Config{})
		if err != nil {
			b.Fatal(err)
		}
		for _, e := range es {
			if err := s.Put(e, -1); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(ms.HeapAlloc-before)/(1<<20), "live-MiB")
		b.ReportMetric(float64(ms.HeapAlloc-before)/float64(len(es)), "B/record")
		s.Close()
	}
}
