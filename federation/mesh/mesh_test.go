package mesh

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/gateway/httproute"
	"github.com/elacity/pc2/plugins/registry/dhtpub"
	"github.com/elacity/pc2/plugins/registry/wire"
	"github.com/elacity/pc2/relay/tunnel"
)

// memRegistry is a Registry in memory.
type memRegistry struct {
	mu   sync.Mutex
	recs map[string]*wire.Record
}

func newMemRegistry() *memRegistry { return &memRegistry{recs: map[string]*wire.Record{}} }

func (r *memRegistry) get(name string) *wire.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.recs[normal(name)]
}
func (r *memRegistry) Owner(name string) (identity.ID, bool) {
	if rec := r.get(name); rec != nil {
		return rec.Owner, true
	}
	return identity.ID{}, false
}
func (r *memRegistry) TLSTarget(name string) (string, bool) {
	if rec := r.get(name); rec != nil {
		return rec.Target, true
	}
	return "", false
}
func (r *memRegistry) HTTPBackend(host []byte) (httproute.Backend, bool) {
	if rec := r.get(string(host)); rec != nil {
		return httproute.Backend{Addr: rec.HTTP}, true
	}
	return httproute.Backend{}, false
}
func (r *memRegistry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.recs)
}
func (r *memRegistry) Zones() []string { return []string{"ela.city"} }
func (r *memRegistry) LookupName(name string) ([]netip.Addr, bool) {
	return nil, r.get(name) != nil
}
func (r *memRegistry) ACMEChallenge(name string) ([]string, bool) { return nil, r.get(name) != nil }
func (r *memRegistry) Registered(id identity.ID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.recs {
		if rec.Owner == id {
			return true
		}
	}
	return false
}
func (r *memRegistry) Get(name string) (*wire.Record, error) {
	if rec := r.get(name); rec != nil {
		return rec, nil
	}
	return nil, errors.New("not found")
}
func (r *memRegistry) Records(fn func(*wire.Record)) error {
	r.mu.Lock()
	var all []*wire.Record
	for _, rec := range r.recs {
		all = append(all, rec)
	}
	r.mu.Unlock()
	for _, rec := range all {
		fn(rec)
	}
	return nil
}
func (r *memRegistry) Evict(_ context.Context, name string, owner identity.ID) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rec := r.recs[name]; rec != nil && rec.Owner == owner {
		delete(r.recs, name)
		return true, nil
	}
	return false, nil
}

// signedRecord returns a record of name owned by kp, with a valid proof.
func signedRecord(t testing.TB, kp *identity.KeyPair, name, target string, created int64) *wire.Record {
	t.Helper()
	var nonce [wire.NonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		t.Fatal(err)
	}
	q := &wire.Request{Op: wire.OpRegister, Name: name, ID: kp.ID(), Target: target, Timestamp: created, Nonce: hex.EncodeToString(nonce[:])}
	q.Sign(kp)
	return &wire.Record{Name: name, Owner: kp.ID(), Target: target, Created: created, Updated: created,
		Expires: time.Now().Add(time.Hour).Unix(),
		Proof:   wire.Proof{Op: q.Op, ID: q.ID, Timestamp: q.Timestamp, Nonce: q.Nonce, Sig: q.Sig}}
}

func key(t testing.TB) *identity.KeyPair {
	kp, err := identity.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func waitUntil(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestBetterIsATotalOrderOnDistinctClaims(t *testing.T) {
	a, b := key(t), key(t)
	ra := signedRecord(t, a, "carol.ela.city", "192.0.2.1:443", 100)
	rb := signedRecord(t, b, "carol.ela.city", "192.0.2.2:443", 101)
	if !Better(ra, rb) || Better(rb, ra) {
		t.Fatal("the earlier claim must win")
	}
	rb.Created = 100 // a tie: the claim hash decides, the same both ways
	if Better(ra, rb) == Better(rb, ra) {
		t.Fatal("a tie must be broken one way")
	}
	ha, hb := claimHash(ra), claimHash(rb)
	if Better(ra, rb) != (bytes.Compare(ha[:], hb[:]) < 0) {
		t.Fatal("the tie is broken by the lower claim hash")
	}
	if got := pick(pick(nil, ra), rb); got != pick(pick(nil, rb), ra) {
		t.Fatal("pick depends on the order claims arrive in")
	}
}

func TestTableSetDelPrune(t *testing.T) {
	tb := newTable(2)
	p1, p2 := key(t).ID(), key(t).ID()
	o1, o2 := key(t), key(t)
	r1 := signedRecord(t, o1, "alice.ela.city", "192.0.2.1:443", 10)
	r2 := signedRecord(t, o2, "alice.ela.city", "192.0.2.2:443", 5)
	if !tb.set(p1, r1, 1) || !tb.set(p2, r2, 1) {
		t.Fatal("set refused below the cap")
	}
	if tb.set(p1, signedRecord(t, o1, "bob.ela.city", "192.0.2.1:443", 10), 1) {
		t.Fatal("set above the cap accepted")
	}
	now := time.Now().Unix()
	if got := tb.best("alice.ela.city", now); got.Owner != o2.ID() {
		t.Fatalf("best %v, want the earlier claim", got.Owner)
	}
	if !tb.owns(o1.ID()) || !tb.owns(o2.ID()) {
		t.Fatal("owners not counted")
	}
	tb.del(p2, "alice.ela.city")
	if got := tb.best("alice.ela.city", now); got.Owner != o1.ID() || tb.owns(o2.ID()) {
		t.Fatal("del did not forget the claim")
	}
	if n := tb.prune(p1, 2); n != 1 || tb.best("alice.ela.city", now) != nil {
		t.Fatalf("prune forgot %d claims", n)
	}
	if names, claims := tb.counts(); names != 0 || claims != 0 {
		t.Fatalf("counts %d %d after all were removed", names, claims)
	}
	exp := signedRecord(t, o1, "dave.ela.city", "192.0.2.1:443", 10)
	exp.Expires = now - 1
	tb.set(p1, exp, 3)
	if tb.best("dave.ela.city", now) != nil {
		t.Fatal("an expired claim is routed")
	}
}

func TestFrameRoundTripAndBounds(t *testing.T) {
	f, err := AppendFrame(nil, frameRecord, []byte(`{"x":1}`))
	if err != nil {
		t.Fatal(err)
	}
	typ, p, err := ReadFrame(bytes.NewReader(f), MaxFrame)
	if err != nil || typ != frameRecord || string(p) != `{"x":1}` {
		t.Fatalf("round trip: %c %q %v", typ, p, err)
	}
	if _, _, err := ReadFrame(bytes.NewReader(f), 3); !errors.Is(err, ErrFrame) {
		t.Fatalf("frame above max: %v", err)
	}
	bad := append([]byte{'Z'}, f[1:]...)
	if _, _, err := ReadFrame(bytes.NewReader(bad), MaxFrame); !errors.Is(err, ErrFrame) {
		t.Fatalf("unknown type: %v", err)
	}
	if _, _, err := ReadFrame(bytes.NewReader(f[:len(f)-1]), MaxFrame); err == nil {
		t.Fatal("truncated frame accepted")
	}
}

func TestAnnounceRecordRoundTrip(t *testing.T) {
	kp := key(t)
	a := Announcement{Mesh: "192.0.2.1:39003", Tunnel: "192.0.2.1:8090", Addresses: []string{"192.0.2.1"}, Domains: []string{"ela.city"}}
	rec, err := AnnounceRecord(kp, a, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	id, got, err := ParseAnnounceRecord(&rec)
	if err != nil || id != kp.ID() || got.Mesh != a.Mesh || got.Tunnel != a.Tunnel {
		t.Fatalf("parse: %v %+v %v", id, got, err)
	}
	rec.Fingerprint++ // another supernode's slot
	if _, _, err := ParseAnnounceRecord(&rec); err == nil {
		t.Fatal("a record in another slot was accepted")
	}
}

// lab is two supernodes (A holds the node's tunnel, C does not) and a
// node whose "https" service is svc.
type lab struct {
	a, c   *Mesh
	srv    *tunnel.Server
	node   identity.ID
	regA   *memRegistry
	regC   *memRegistry
	client *tunnel.Client
}

func newLab(t testing.TB, svc string) *lab {
	t.Helper()
	ka, kc, kn := key(t), key(t), key(t)
	srv := tunnel.NewServer(ka, tunnel.ServerConfig{})
	tunAddr, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	cli := tunnel.NewClient(kn, tunnel.ClientConfig{Supernode: tunAddr.String(), SupernodeID: ka.ID(),
		Services: map[string]tunnel.Local{"https": {Addr: svc}}})
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	l := &lab{srv: srv, node: kn.ID(), regA: newMemRegistry(), regC: newMemRegistry(), client: cli}
	l.a, err = New(Options{Key: ka, Registry: l.regA, Tunnels: srv, Peers: map[identity.ID]string{kc.ID(): ""}, Heartbeat: 200 * time.Millisecond, DeadAfter: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.a.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.a.Close() })
	l.c, _ = New(Options{Key: kc, Registry: l.regC, Peers: map[identity.ID]string{ka.ID(): l.a.Addr().String()}, Heartbeat: 200 * time.Millisecond, DeadAfter: time.Second})
	if err := l.c.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.c.Close() })
	waitUntil(t, "C learns that A holds the node's tunnel", 10*time.Second, func() bool { return l.c.Has(l.node) })
	return l
}

// echoServer echoes every connection until EOF.
func echoServer(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
				c.Close()
			}()
		}
	}()
	return ln.Addr().String()
}

func TestForwardOverMesh(t *testing.T) {
	l := newLab(t, echoServer(t))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := l.c.Dial(ctx, l.node, "https", &net.TCPAddr{IP: net.IPv4(192, 0, 2, 9), Port: 1234})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msg := bytes.Repeat([]byte("through C, A and the tunnel "), 10000)
	go func() {
		conn.Write(msg)
		conn.(interface{ CloseWrite() error }).CloseWrite()
	}()
	got, err := io.ReadAll(conn) // EOF arrives only through the half-close
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo over the mesh: %d bytes of %d, %v", len(got), len(msg), err)
	}
	if l.c.Forwarded.Load() != 1 || l.a.Served.Load() != 1 {
		t.Fatalf("forwarded %d, served %d", l.c.Forwarded.Load(), l.a.Served.Load())
	}
	if _, err := l.c.Dial(ctx, key(t).ID(), "https", nil); !errors.Is(err, ErrNoHolder) {
		t.Fatalf("dial of a node nobody holds: %v", err)
	}
}

func TestRegistrationsShareAndConflictSettles(t *testing.T) {
	l := newLab(t, echoServer(t))
	o1, o2 := key(t), key(t)
	// The same name accepted at A and C: C's claim is earlier and wins.
	ra := signedRecord(t, o1, "carol.ela.city", "192.0.2.1:443", 200)
	rc := signedRecord(t, o2, "carol.ela.city", "192.0.2.2:443", 100)
	l.regA.mu.Lock()
	l.regA.recs[ra.Name] = ra
	l.regA.mu.Unlock()
	l.regC.mu.Lock()
	l.regC.recs[rc.Name] = rc
	l.regC.mu.Unlock()
	l.a.Publish(ra)
	l.c.Publish(rc)
	waitUntil(t, "A evicts its losing claim", 5*time.Second, func() bool { return l.regA.get("carol.ela.city") == nil })
	for _, m := range []*Mesh{l.a, l.c} {
		if id, ok := m.Owner("carol.ela.city"); !ok || id != o2.ID() {
			t.Fatalf("owner at %v: %v %v, want the earlier claim", m.ID(), id, ok)
		}
		if tgt, _ := m.TLSTarget("carol.ela.city"); tgt != "192.0.2.2:443" {
			t.Fatalf("target %s", tgt)
		}
	}
	if !l.a.ClaimedElsewhere("carol.ela.city", o1.ID()) || l.a.ClaimedElsewhere("carol.ela.city", o2.ID()) {
		t.Fatal("ClaimedElsewhere does not refuse the loser")
	}
	if !l.a.Registered(o2.ID()) {
		t.Fatal("a node owning a name at C may not hold a tunnel at A")
	}
	// A record whose proof does not verify is refused; the valid record
	// sent after it on the same ordered stream shows it was read.
	forged := signedRecord(t, o1, "erin.ela.city", "192.0.2.1:443", 50)
	forged.Target = "192.0.2.66:443"
	l.c.Publish(forged)
	l.c.Publish(signedRecord(t, o1, "frank.ela.city", "192.0.2.1:443", 50))
	waitUntil(t, "frank routed at A", 5*time.Second, func() bool { _, ok := l.a.Owner("frank.ela.city"); return ok })
	if _, ok := l.a.Owner("erin.ela.city"); ok {
		t.Fatal("a record with a bad proof is routed")
	}
}

// TestDeadPeerNoticed: A's socket vanishes without a word (as with kill
// -9); C notices within DeadAfter and stops forwarding to it.
func TestDeadPeerNoticed(t *testing.T) {
	l := newLab(t, echoServer(t))
	start := time.Now()
	l.a.tr.Conn.Close()
	waitUntil(t, "C notices A is gone", 2*l.c.o.DeadAfter, func() bool { return !l.c.Has(l.node) })
	t.Logf("silent peer noticed after %v (deadAfter %v)", time.Since(start).Round(time.Millisecond), l.c.o.DeadAfter)
	if st := l.c.Status(); len(st.Peers) != 1 || st.Peers[0].Alive || st.Peers[0].Downs != 1 {
		t.Fatalf("status after the death: %+v", st.Peers)
	}
}

// fakeResolver answers from a fixed set of claims and counts lookups.
type fakeResolver struct {
	mu     sync.Mutex
	claims map[string][]dhtpub.Claim
	calls  int
}

func (f *fakeResolver) Resolve(_ context.Context, name string, trusted func(identity.ID) bool) ([]dhtpub.Claim, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	var out []dhtpub.Claim
	for _, c := range f.claims[name] {
		if trusted(c.Supernode) {
			out = append(out, c)
		}
	}
	return out, nil
}

// TestUnknownNameFoundInDHT: a name no connected peer announced is looked
// up in the DHT once, taken only from a trusted supernode, and a name not
// found is not looked up again at once.
func TestUnknownNameFoundInDHT(t *testing.T) {
	peer, stranger, owner := key(t), key(t), key(t)
	res := &fakeResolver{claims: map[string][]dhtpub.Claim{
		"gina.ela.city": {{Supernode: peer.ID(), Record: signedRecord(t, owner, "gina.ela.city", "192.0.2.5:443", 10)}},
		"hank.ela.city": {{Supernode: stranger.ID(), Record: signedRecord(t, owner, "hank.ela.city", "192.0.2.5:443", 10)}},
	}}
	m, err := New(Options{Key: key(t), Registry: newMemRegistry(), Resolver: res, Peers: map[identity.ID]string{peer.ID(): ""}})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if tgt, ok := m.TLSTarget("gina.ela.city"); !ok || tgt != "192.0.2.5:443" {
		t.Fatalf("gina: %q %v", tgt, ok)
	}
	if _, ok := m.Owner("hank.ela.city"); ok {
		t.Fatal("a claim announced by an untrusted supernode is routed")
	}
	for range 3 {
		m.Owner("nobody.ela.city")
		m.Owner("x.y.ela.city") // not a name: never looked up
		m.Owner("other.example")
	}
	m.Owner("gina.ela.city") // known now: no lookup
	if res.calls != 3 {
		t.Fatalf("%d DHT lookups, want 3 (gina, hank, nobody once)", res.calls)
	}
}

// TestDiscoveryAdmission: with a peers list only listed supernodes are
// taken from the DHT (their address learnt); with none, discovered ones
// are admitted, up to a bound.
func TestDiscoveryAdmission(t *testing.T) {
	listed, stranger := key(t), key(t)
	m, _ := New(Options{Key: key(t), Registry: newMemRegistry(), Peers: map[identity.ID]string{listed.ID(): ""}})
	if err := m.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.Discovered(stranger.ID(), Announcement{Mesh: "127.0.0.1:9"})
	m.Discovered(listed.ID(), Announcement{Mesh: "127.0.0.2:9"})
	if m.admit(stranger.ID()) == nil {
		t.Fatal("a supernode not on the list was admitted")
	}
	if m.admit(listed.ID()) != nil || m.Status().Peers[0].Addr != "127.0.0.2:9" {
		t.Fatalf("listed peer: %+v", m.Status().Peers)
	}

	open, _ := New(Options{Key: key(t), Registry: newMemRegistry()})
	if err := open.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if open.admit(stranger.ID()) == nil {
		t.Fatal("admitted before it was discovered")
	}
	open.Discovered(stranger.ID(), Announcement{Mesh: "127.0.0.1:9"})
	if open.admit(stranger.ID()) != nil {
		t.Fatal("a discovered supernode was not admitted")
	}
	for range maxDiscovered + 10 {
		open.Discovered(key(t).ID(), Announcement{Mesh: "127.0.0.1:9"})
	}
	if n := len(open.Status().Peers); n != maxDiscovered {
		t.Fatalf("%d supernodes admitted, bound %d", n, maxDiscovered)
	}
}
