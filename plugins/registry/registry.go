package registry

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/elacity/pc2/core/clock"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/metrics"
	"github.com/elacity/pc2/core/ratelimit"
	"github.com/elacity/pc2/core/store"
	"github.com/elacity/pc2/gateway/names"
	"github.com/elacity/pc2/plugins/registry/wire"
)

// Publisher announces name records beyond this supernode (the DHT, so
// that every supernode sees every registration). Implementations must not
// block: queue and return. Errors are logged and counted; the registration
// stands, since it is already durable here and is published again when it
// is renewed.
type Publisher interface {
	Publish(ctx context.Context, rec *wire.Record) error
	Unpublish(ctx context.Context, name string) error
}

// NopPublisher publishes nothing.
type NopPublisher struct{}

func (NopPublisher) Publish(context.Context, *wire.Record) error { return nil }
func (NopPublisher) Unpublish(context.Context, string) error     { return nil }

// MemPublisher keeps the last published record of every name, for tests
// and for a single supernode that has no DHT yet.
type MemPublisher struct {
	mu      sync.Mutex
	records map[string]wire.Record
}

func (p *MemPublisher) Publish(_ context.Context, rec *wire.Record) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.records == nil {
		p.records = map[string]wire.Record{}
	}
	p.records[rec.Name] = *rec
	return nil
}

func (p *MemPublisher) Unpublish(_ context.Context, name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.records, name)
	return nil
}

// Get returns the published record of name.
func (p *MemPublisher) Get(name string) (wire.Record, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.records[name]
	return r, ok
}

// Options configure a Registry. Zero values take the defaults shown.
type Options struct {
	Rules               *names.Rules      // required
	Storage             *store.Namespace  // required
	Clock               clock.Clock       // clock.Real
	Publisher           Publisher         // NopPublisher
	Claims              Claims            // nil: this supernode alone decides
	Logger              *slog.Logger      // discard
	Metrics             *metrics.Registry // a private registry
	Lifetime            time.Duration     // 30 days: a name expires unless renewed
	MaxSkew             time.Duration     // 2 minutes either way
	ACMELifetime        time.Duration     // 1 hour: ACME TXT values vanish by themselves
	MaxNames            int               // 1,000,000 names in total
	MaxNamesPerOwner    int               // 10 names per id
	MaxACMEValues       int               // 4 TXT values per name
	MaxNonces           int               // 100,000 remembered nonces in total
	MaxNoncesPerID      int               // 64 per id within the skew window
	AllowPrivateTargets bool              // accept loopback and private endpoints (devnet, tests)
	// Writes per id: RatePerID per second with a burst of BurstPerID
	// (0.2/s, 10), counted after the signature verifies so that nobody
	// can spend another id's budget.
	RatePerID  float64
	BurstPerID int
}

func (o *Options) defaults() error {
	if o.Rules == nil || o.Storage == nil {
		return errors.New("registry: options need Rules and Storage")
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Publisher == nil {
		o.Publisher = NopPublisher{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.Lifetime, 30*24*time.Hour)
	def(&o.MaxSkew, 2*time.Minute)
	def(&o.ACMELifetime, time.Hour)
	defInt := func(d *int, v int) {
		if *d <= 0 {
			*d = v
		}
	}
	defInt(&o.MaxNames, 1_000_000)
	defInt(&o.MaxNamesPerOwner, 10)
	defInt(&o.MaxACMEValues, 4)
	defInt(&o.MaxNonces, 100_000)
	defInt(&o.MaxNoncesPerID, 64)
	defInt(&o.BurstPerID, 10)
	if o.RatePerID <= 0 {
		o.RatePerID = 0.2
	}
	return nil
}

// Error is a refused request. Code says why, for the API and for clients.
type Error struct {
	Code wire.Code
	Msg  string
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Msg }

func refuse(code wire.Code, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// entry is what the routers need of a name. Entries are never modified
// once in the index: a change replaces the pointer, so readers may keep
// one without a lock.
type entry struct {
	owner    identity.ID
	target   string
	http     string
	redirect bool
	direct   []netip.Addr // the node's own address, when it asked for direct DNS
	acme     []string     // live ACME TXT values
	acmeExp  []int64      // their expiries, same order
	expires  int64        // Unix seconds
}

// Registry holds names: the durable store, an in-memory index for
// lookups, the replay cache and the expiry sweeper.
type Registry struct {
	o Options

	// writeMu serialises every change: check, write to disk (fsync), then
	// publish to the index. Registrations are rare (a renewal per name
	// per few weeks), so one writer at a time is plenty and keeps the
	// first-come-first-served decision trivially correct.
	writeMu sync.Mutex
	nonces  nonceCache
	idLimit *ratelimit.Limiter[identity.ID]

	mu     sync.RWMutex // guards index and owners
	index  map[string]*entry
	owners map[identity.ID]int

	m *regMetrics
}

const (
	bucketNames  = "names"
	bucketNonces = "nonces"
)

// Open loads the registry from storage: every name still served by the
// rules and every nonce still inside the skew window.
func Open(o Options) (*Registry, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	r := &Registry{o: o, index: map[string]*entry{}, owners: map[identity.ID]int{}, nonces: newNonceCache(o.MaxNonces, o.MaxNoncesPerID)}
	r.m = newRegMetrics(o.Metrics, r)
	r.idLimit = ratelimit.New[identity.ID](o.RatePerID, o.BurstPerID, 100_000)
	now := o.Clock.Now().Unix()
	skipped := 0
	err := o.Storage.View(func(tx *store.Tx) error {
		nt, err := tx.Sub(bucketNames)
		if err != nil {
			return err
		}
		if err := nt.ForEach(nil, func(k, v []byte) error {
			var rec wire.Record
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("name %q: %w", k, err)
			}
			if n, err := o.Rules.Parse(rec.Name); err != nil || n.String() != rec.Name {
				skipped++ // its suffix is no longer served; kept on disk
				return nil
			}
			r.index[rec.Name] = newEntry(&rec)
			r.owners[rec.Owner]++
			return nil
		}); err != nil {
			return err
		}
		ot, err := tx.Sub(bucketNonces)
		if err != nil {
			return err
		}
		return ot.ForEach(nil, func(k, v []byte) error {
			var key nonceKey
			if len(k) != len(key) || len(v) != 8 {
				return nil
			}
			copy(key[:], k)
			ts := int64(binary.BigEndian.Uint64(v))
			if exp := ts + int64(o.MaxSkew/time.Second) + 1; exp > now {
				r.nonces.add(key, exp)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("registry: load: %w", err)
	}
	if skipped > 0 {
		o.Logger.Warn("registry: names under suffixes no longer served are kept on disk but not served", "count", skipped)
	}
	return r, nil
}

func newEntry(rec *wire.Record) *entry {
	e := &entry{owner: rec.Owner, target: rec.Target, http: rec.HTTP, redirect: rec.RedirectHTTPS, expires: rec.Expires}
	if rec.DNSDirect {
		if ap, err := netip.ParseAddrPort(rec.Target); err == nil {
			e.direct = []netip.Addr{ap.Addr().Unmap()}
		}
	}
	for _, t := range rec.ACME {
		e.acme = append(e.acme, t.Value)
		e.acmeExp = append(e.acmeExp, t.Expires)
	}
	return e
}

// Len returns the number of names in the index (expired ones included
// until the sweeper removes them).
func (r *Registry) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.index)
}

// live returns the unexpired entry of name (normalised).
func (r *Registry) live(name string, now int64) *entry {
	r.mu.RLock()
	e := r.index[name]
	r.mu.RUnlock()
	if e == nil || e.expires <= now {
		return nil
	}
	return e
}

// Get returns the stored record of a live name.
func (r *Registry) Get(name string) (*wire.Record, error) {
	n, err := r.o.Rules.Parse(name)
	if err != nil {
		return nil, refuse(wire.CodeBadRequest, "%v", err)
	}
	name = n.String()
	if r.live(name, r.o.Clock.Now().Unix()) == nil {
		return nil, refuse(wire.CodeNotFound, "%s is not registered", name)
	}
	var rec *wire.Record
	err = r.o.Storage.View(func(tx *store.Tx) error {
		nt, err := tx.Sub(bucketNames)
		if err != nil {
			return err
		}
		v := nt.Get([]byte(name))
		if v == nil {
			return nil
		}
		rec = new(wire.Record)
		return json.Unmarshal(v, rec)
	})
	if err != nil {
		return nil, refuse(wire.CodeInternal, "read %s: %v", name, err)
	}
	if rec == nil {
		return nil, refuse(wire.CodeNotFound, "%s is not registered", name)
	}
	return rec, nil
}

// List returns the live records owned by id, sorted by name.
func (r *Registry) List(id identity.ID) ([]wire.Record, error) {
	now := r.o.Clock.Now().Unix()
	var owned []string
	r.mu.RLock()
	if r.owners[id] > 0 {
		for name, e := range r.index {
			if e.owner == id && e.expires > now {
				owned = append(owned, name)
			}
		}
	}
	r.mu.RUnlock()
	slices.Sort(owned)
	out := make([]wire.Record, 0, len(owned))
	for _, name := range owned {
		rec, err := r.Get(name)
		if err != nil {
			continue // expired or deleted meanwhile
		}
		out = append(out, *rec)
	}
	return out, nil
}

// Apply checks a request and carries it out. When it returns a record, the change is on disk. A refusal is
// an *Error and changes nothing.
func (r *Registry) Apply(ctx context.Context, q *wire.Request) (*wire.Record, error) {
	now := r.o.Clock.Now()
	rec, err := r.apply(q, now)
	r.m.outcome(q.Op, err)
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var perr error
	if rec.Owner.IsZero() { // deleted
		perr = r.o.Publisher.Unpublish(pctx, q.Name)
		rec = nil
	} else {
		perr = r.o.Publisher.Publish(pctx, rec)
	}
	if perr != nil {
		r.m.publishErrors.Inc()
		r.o.Logger.Warn("registry: publish failed", "name", q.Name, "err", perr)
	}
	return rec, nil
}

func (r *Registry) apply(q *wire.Request, now time.Time) (*wire.Record, error) {
	if err := q.Check(); err != nil { // done by wire.Decode; repeated for direct callers
		return nil, refuse(wire.CodeBadRequest, "%v", err)
	}
	n, err := r.o.Rules.Parse(q.Name)
	if err != nil {
		return nil, refuse(wire.CodeBadRequest, "%v", err)
	}
	if n.String() != q.Name {
		return nil, refuse(wire.CodeBadRequest, "name %q is not in normal form %q", q.Name, n.String())
	}
	ts := time.Unix(q.Timestamp, 0)
	if d := now.Sub(ts); d > r.o.MaxSkew || d < -r.o.MaxSkew {
		return nil, refuse(wire.CodeStale, "timestamp is %v away from the server's clock (allowed ±%v)", d.Round(time.Second), r.o.MaxSkew)
	}
	if err := r.checkEndpoints(q); err != nil {
		return nil, err
	}
	if err := q.Verify(); err != nil {
		return nil, refuse(wire.CodeBadSignature, "%v", err)
	}
	if !r.idLimit.Allow(q.ID, now) {
		return nil, refuse(wire.CodeRateLimited, "too many requests from this id")
	}

	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	nowSec := now.Unix()
	key := makeNonceKey(q.ID, q.Nonce)
	if r.nonces.seen(key, nowSec) {
		return nil, refuse(wire.CodeReplay, "nonce already used")
	}
	if err := r.nonces.room(q.ID, nowSec); err != nil {
		return nil, err
	}
	cur := r.live(q.Name, nowSec)
	rec, err := r.change(q, cur, nowSec)
	if err != nil {
		return nil, err
	}
	deleted := rec == nil
	err = r.o.Storage.Update(func(tx *store.Tx) error {
		nt, err := tx.Sub(bucketNames)
		if err != nil {
			return err
		}
		if deleted {
			err = nt.Delete([]byte(q.Name))
		} else {
			var v []byte
			if v, err = json.Marshal(rec); err == nil {
				err = nt.Put([]byte(q.Name), v)
			}
		}
		if err != nil {
			return err
		}
		ot, err := tx.Sub(bucketNonces)
		if err != nil {
			return err
		}
		var ts [8]byte
		binary.BigEndian.PutUint64(ts[:], uint64(q.Timestamp))
		return ot.Put(key[:], ts[:])
	})
	if err != nil {
		r.o.Logger.Error("registry: write failed", "name", q.Name, "err", err)
		return nil, refuse(wire.CodeInternal, "storage: %v", err)
	}
	r.nonces.add(key, q.Timestamp+int64(r.o.MaxSkew/time.Second)+1)

	r.mu.Lock()
	old := r.index[q.Name] // may be an expired entry a new owner replaces
	if old != nil {
		r.dropOwner(old.owner)
	}
	if deleted {
		delete(r.index, q.Name)
	} else {
		r.index[q.Name] = newEntry(rec)
		r.owners[rec.Owner]++
	}
	r.mu.Unlock()
	if deleted {
		return &wire.Record{Name: q.Name}, nil
	}
	return rec, nil
}

func (r *Registry) dropOwner(id identity.ID) {
	if r.owners[id]--; r.owners[id] <= 0 {
		delete(r.owners, id)
	}
}

// checkEndpoints applies the address policy to the endpoints of q.
func (r *Registry) checkEndpoints(q *wire.Request) error {
	for _, ep := range []string{q.Target, q.HTTP} {
		if ep == "" || ep == wire.TargetTunnel || r.o.AllowPrivateTargets {
			continue
		}
		a := netip.MustParseAddrPort(ep).Addr().Unmap() // wire.Check parsed it
		if a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || !a.IsGlobalUnicast() || cgnat.Contains(a) {
			return refuse(wire.CodeBadRequest, "endpoint %s is not a public address; the gateway forwards only to public addresses", ep)
		}
	}
	return nil
}

// cgnat is the shared address space of RFC 6598, not reachable from the
// Internet and not covered by netip's IsPrivate.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// change computes the record after q, or nil for a deletion. cur is the
// live entry of the name, nil when the name is free.
func (r *Registry) change(q *wire.Request, cur *entry, now int64) (*wire.Record, error) {
	if cur != nil && cur.owner != q.ID {
		if q.Op == wire.OpRegister {
			return nil, refuse(wire.CodeTaken, "%s belongs to another id", q.Name)
		}
		return nil, refuse(wire.CodeForbidden, "%s belongs to another id", q.Name)
	}
	if cur == nil && q.Op == wire.OpRegister && r.o.Claims != nil && r.o.Claims.ClaimedElsewhere(q.Name, q.ID) {
		return nil, refuse(wire.CodeTaken, "%s belongs to another id (registered at another supernode)", q.Name)
	}
	if cur == nil && q.Op != wire.OpRegister {
		return nil, refuse(wire.CodeNotFound, "%s is not registered", q.Name)
	}
	var rec *wire.Record
	if cur != nil {
		old, err := r.readRecord(q.Name)
		if err != nil {
			return nil, refuse(wire.CodeInternal, "read %s: %v", q.Name, err)
		}
		rec = old
	}
	proof := wire.Proof{Op: q.Op, ID: q.ID, Timestamp: q.Timestamp, Nonce: q.Nonce, Sig: q.Sig, CoSig: q.CoSig}
	setBinding := func(owner identity.ID) {
		rec.Owner, rec.Target, rec.HTTP = owner, q.Target, q.HTTP
		rec.RedirectHTTPS, rec.DNSDirect = q.RedirectHTTPS, q.DNSDirect
		rec.Updated, rec.Proof = now, proof
	}
	lifetime := int64(r.o.Lifetime / time.Second)
	switch q.Op {
	case wire.OpRegister:
		if rec == nil {
			if err := r.quota(q.ID); err != nil {
				return nil, err
			}
			rec = &wire.Record{Name: q.Name, Created: now}
		}
		setBinding(q.ID)
		rec.Expires = now + lifetime
	case wire.OpUpdate:
		setBinding(q.ID)
	case wire.OpDelete:
		return nil, nil
	case wire.OpTransfer:
		if err := r.quota(*q.NewOwner); err != nil {
			return nil, err
		}
		setBinding(*q.NewOwner)
		rec.Expires = now + lifetime
		rec.ACME = nil // the old owner's challenges are not the new owner's
	case wire.OpACMESet:
		acme := liveTXT(rec.ACME, now)
		i := slices.IndexFunc(acme, func(t wire.TXT) bool { return t.Value == q.TXT })
		switch {
		case i >= 0:
			acme[i].Expires = now + int64(r.o.ACMELifetime/time.Second)
		case len(acme) >= r.o.MaxACMEValues:
			return nil, refuse(wire.CodeQuota, "%s already has %d ACME values", q.Name, len(acme))
		default:
			acme = append(acme, wire.TXT{Value: q.TXT, Expires: now + int64(r.o.ACMELifetime/time.Second)})
		}
		rec.ACME, rec.Updated = acme, now
	case wire.OpACMEDelete:
		acme := liveTXT(rec.ACME, now)
		if q.TXT == "" {
			acme = nil
		} else {
			acme = slices.DeleteFunc(acme, func(t wire.TXT) bool { return t.Value == q.TXT })
		}
		rec.ACME, rec.Updated = acme, now
	}
	return rec, nil
}

// quota refuses a new name for id when it, or the registry, is full.
func (r *Registry) quota(id identity.ID) error {
	r.mu.RLock()
	owned, total := r.owners[id], len(r.index)
	r.mu.RUnlock()
	if owned >= r.o.MaxNamesPerOwner {
		return refuse(wire.CodeQuota, "this id already has %d names", owned)
	}
	if total >= r.o.MaxNames {
		return refuse(wire.CodeQuota, "the registry is full")
	}
	return nil
}

func liveTXT(in []wire.TXT, now int64) []wire.TXT {
	out := make([]wire.TXT, 0, len(in)+1)
	for _, t := range in {
		if t.Expires > now {
			out = append(out, t)
		}
	}
	return out
}

func (r *Registry) readRecord(name string) (*wire.Record, error) {
	var rec *wire.Record
	err := r.o.Storage.View(func(tx *store.Tx) error {
		nt, err := tx.Sub(bucketNames)
		if err != nil {
			return err
		}
		v := nt.Get([]byte(name))
		if v == nil {
			return errors.New("in the index but not on disk")
		}
		rec = new(wire.Record)
		return json.Unmarshal(v, rec)
	})
	return rec, err
}

// sweepBatch bounds the work of one sweep transaction.
const sweepBatch = 10_000

// Sweep removes expired names, ACME values and nonces from disk and
// index. It returns the number of names removed. The service runs it on
// a timer of the host clock.
func (r *Registry) Sweep() (int, error) {
	total := 0
	for {
		n, more, err := r.sweepOnce()
		total += n
		if err != nil || !more {
			return total, err
		}
	}
}

func (r *Registry) sweepOnce() (removed int, more bool, err error) {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	now := r.o.Clock.Now().Unix()
	var expired, stale []string
	r.mu.RLock()
	for name, e := range r.index {
		if len(expired)+len(stale) >= sweepBatch {
			more = true
			break
		}
		switch {
		case e.expires <= now:
			expired = append(expired, name)
		case len(e.acmeExp) > 0 && slices.Min(e.acmeExp) <= now:
			stale = append(stale, name)
		}
	}
	r.mu.RUnlock()
	r.nonces.remove(r.nonces.expired(now, len(r.nonces.exp)))
	nonces, err := r.deadNonces(now)
	if err != nil {
		return 0, false, fmt.Errorf("registry: sweep: %w", err)
	}
	if len(nonces) == sweepBatch {
		more = true
	}
	if len(expired)+len(stale)+len(nonces) == 0 {
		return 0, false, nil
	}
	updated := map[string]*wire.Record{}
	err = r.o.Storage.Update(func(tx *store.Tx) error {
		nt, err := tx.Sub(bucketNames)
		if err != nil {
			return err
		}
		for _, name := range expired {
			if err := nt.Delete([]byte(name)); err != nil {
				return err
			}
		}
		for _, name := range stale {
			v := nt.Get([]byte(name))
			if v == nil {
				continue
			}
			var rec wire.Record
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			rec.ACME = liveTXT(rec.ACME, now)
			b, err := json.Marshal(&rec)
			if err != nil {
				return err
			}
			if err := nt.Put([]byte(name), b); err != nil {
				return err
			}
			updated[name] = &rec
		}
		ot, err := tx.Sub(bucketNonces)
		if err != nil {
			return err
		}
		for _, k := range nonces {
			if err := ot.Delete(k[:]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, false, fmt.Errorf("registry: sweep: %w", err)
	}
	r.mu.Lock()
	for _, name := range expired {
		if e := r.index[name]; e != nil {
			r.dropOwner(e.owner)
			delete(r.index, name)
		}
	}
	for name, rec := range updated {
		r.index[name] = newEntry(rec)
	}
	r.mu.Unlock()
	r.m.expired.Add(float64(len(expired)))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, name := range expired {
		if err := r.o.Publisher.Unpublish(ctx, name); err != nil {
			r.m.publishErrors.Inc()
		}
	}
	return len(expired), more, nil
}

// deadNonces lists up to sweepBatch nonces on disk whose window has passed.
func (r *Registry) deadNonces(now int64) ([]nonceKey, error) {
	var out []nonceKey
	skew := int64(r.o.MaxSkew / time.Second)
	err := r.o.Storage.View(func(tx *store.Tx) error {
		ot, err := tx.Sub(bucketNonces)
		if err != nil {
			return err
		}
		return ot.ForEach(nil, func(k, v []byte) error {
			var key nonceKey
			if len(out) >= sweepBatch {
				return errStop
			}
			if len(k) != len(key) || len(v) != 8 || int64(binary.BigEndian.Uint64(v))+skew+1 <= now {
				copy(key[:], k)
				out = append(out, key)
			}
			return nil
		})
	})
	if errors.Is(err, errStop) {
		err = nil
	}
	return out, err
}

var errStop = errors.New("stop")

// nonceKey is id ‖ nonce.
type nonceKey [identity.IDSize + wire.NonceSize]byte

func makeNonceKey(id identity.ID, nonceHex string) nonceKey {
	var k nonceKey
	copy(k[:], id[:])
	hex.Decode(k[identity.IDSize:], []byte(nonceHex)) // wire.Check validated it
	return k
}
