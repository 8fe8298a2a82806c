// Package storage keeps the records a DHT node stores for others (values
// and peer records, v3.1 and v2) and the node's own persistent items: in
// memory for serving, and in the node's bbolt namespace for restarts.
//
// It exists apart from the RPC layer because storing is where the DHT's
// promises are kept: a STORE_VALUE or ANNOUNCE_PEER is answered only after
// the record is on disk (fsynced), the Boson store rules (sequence numbers,
// CAS, no mutable/immutable substitution, authenticated peers stay
// authenticated) decide what is kept, records expire two hours after their
// last store, and the count of records is bounded.
//
// Writes go through one writer goroutine that commits everything queued
// at that moment in one transaction (group commit): one fsync for a burst
// of stores instead of one each, and the UDP workers never wait for the
// disk. Readers see a record once it is durable.
package storage

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/store"
	"github.com/elacity/pc2/dht/record"
)

// Defaults.
const (
	// DefaultTTL is how long a record lives after its last store (Boson's
	// MAX_VALUE_AGE and MAX_PEER_AGE).
	DefaultTTL = 2 * time.Hour
	// DefaultMaxRecords bounds values plus peer records.
	DefaultMaxRecords = 100_000
	// DefaultMaxPerPeerID bounds the records of one peer id (fingerprints,
	// or v2 node/origin pairs); the oldest is replaced beyond it.
	DefaultMaxPerPeerID = 32
	// queueLen bounds the writes waiting for the writer.
	queueLen = 1024
	// maxBatch bounds the writes committed in one transaction.
	maxBatch = 256
)

// Errors.
var (
	// ErrFull means the record limit is reached (the node answers 202).
	ErrFull = errors.New("storage: record limit reached")
	// ErrBusy means the write queue is full.
	ErrBusy = errors.New("storage: write queue full")
	// ErrClosed means the store is closed.
	ErrClosed = errors.New("storage: closed")
)

// Config sets a Store's limits. Zero fields take the defaults.
type Config struct {
	TTL          time.Duration
	MaxRecords   int
	MaxPerPeerID int
	// Now is the time source (default time.Now).
	Now func() time.Time
}

// Store holds records. It is safe for concurrent use.
type Store struct {
	cfg Config
	ns  *store.Namespace // nil: memory only (a short-lived client node)

	mu     sync.RWMutex
	values map[valueKey]*valueRec
	peers  map[identity.ID]*peerSet
	nvals  int
	npeers int

	ops       chan *Op
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

type valueKey struct {
	id identity.ID
	v2 bool
}

// The in-memory forms hold only the record and its time (unix ns): an
// Entry carries all three record types and would double the memory of a
// node holding 10,000 records.
type valueRec struct {
	v record.Value
	t int64
}

type peerRec struct {
	p record.PeerInfo
	t int64
}

type peerRecV2 struct {
	p record.PeerInfoV2
	t int64
}

type peerSet struct {
	v3 []*peerRec // at most MaxPerPeerID
	v2 []*peerRecV2
}

// Sub-bucket names in the namespace.
const (
	bucketRecords = "records"
	bucketOwn     = "own"
)

// LoadStats says what Open found in the database.
type LoadStats struct {
	Loaded  int // records kept
	Expired int // records past their TTL, deleted
	Bad     int // entries that did not parse, skipped (left in place)
}

// Open returns a store backed by ns (nil for memory only), loading the
// records ns holds. Expired records are deleted; entries that do not parse
// are skipped and counted, not deleted, so a newer pc2 can still read them.
func Open(ns *store.Namespace, cfg Config) (*Store, LoadStats, error) {
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.MaxRecords <= 0 {
		cfg.MaxRecords = DefaultMaxRecords
	}
	if cfg.MaxPerPeerID <= 0 {
		cfg.MaxPerPeerID = DefaultMaxPerPeerID
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Store{
		cfg:    cfg,
		ns:     ns,
		values: map[valueKey]*valueRec{},
		peers:  map[identity.ID]*peerSet{},
		ops:    make(chan *Op, queueLen),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	var st LoadStats
	if ns != nil {
		var err error
		if st, err = s.load(); err != nil {
			return nil, st, err
		}
	}
	go s.writer()
	return s, st, nil
}

func (s *Store) load() (LoadStats, error) {
	var st LoadStats
	now := s.cfg.Now()
	var expired [][]byte
	err := s.ns.View(func(tx *store.Tx) error {
		sub, err := tx.Sub(bucketRecords)
		if err != nil {
			return err
		}
		return sub.ForEach(nil, func(k, v []byte) error {
			e, err := ParseEntry(k, v)
			if err != nil {
				st.Bad++
				return nil
			}
			if s.expired(&e, now) {
				expired = append(expired, slices.Clone(k))
				return nil
			}
			if s.nvals+s.npeers >= s.cfg.MaxRecords {
				st.Bad++
				return nil
			}
			s.insertLocked(&e)
			st.Loaded++
			return nil
		})
	})
	if err != nil {
		return st, fmt.Errorf("storage: load: %w", err)
	}
	if len(expired) > 0 {
		err = s.ns.Update(func(tx *store.Tx) error {
			sub, err := tx.Sub(bucketRecords)
			if err != nil {
				return err
			}
			for _, k := range expired {
				if err := sub.Delete(k); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return st, fmt.Errorf("storage: delete expired: %w", err)
		}
		st.Expired = len(expired)
	}
	return st, nil
}

func (s *Store) expired(e *Entry, now time.Time) bool { return now.Sub(e.Time) >= s.cfg.TTL }

func (s *Store) expiredAt(t int64, now time.Time) bool { return now.UnixNano()-t >= int64(s.cfg.TTL) }

// Close stops the writer after the queued writes are done.
func (s *Store) Close() {
	s.closeOnce.Do(func() { close(s.stop) })
	<-s.done
}

// Len returns the number of values and peer records held (expired ones
// included until the next Expire).
func (s *Store) Len() (values, peers int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.nvals, s.npeers
}

// Value returns the live value stored under id in the v3 or v2 key space.
// The returned value's Data must not be modified.
func (s *Store) Value(id identity.ID, v2 bool, now time.Time) (record.Value, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r := s.values[valueKey{id, v2}]
	if r == nil || s.expiredAt(r.t, now) {
		return record.Value{}, false
	}
	return r.v, true
}

// Peers appends to dst[:0] at most max live v3.1 peer records of id whose
// seq is at least cas (cas < 0: all), highest seq first.
func (s *Store) Peers(dst []record.PeerInfo, id identity.ID, cas int32, max int, now time.Time) []record.PeerInfo {
	dst = dst[:0]
	s.mu.RLock()
	if ps := s.peers[id]; ps != nil {
		for _, r := range ps.v3 {
			if !s.expiredAt(r.t, now) && (cas < 0 || r.p.Seq >= cas) {
				dst = append(dst, r.p)
			}
		}
	}
	s.mu.RUnlock()
	slices.SortStableFunc(dst, func(a, b record.PeerInfo) int { return int(b.Seq) - int(a.Seq) })
	if len(dst) > max {
		dst = dst[:max]
	}
	return dst
}

// PeersV2 appends to dst[:0] at most max live v2 peer records of id, most
// recently stored first.
func (s *Store) PeersV2(dst []record.PeerInfoV2, id identity.ID, max int, now time.Time) []record.PeerInfoV2 {
	dst = dst[:0]
	s.mu.RLock()
	if ps := s.peers[id]; ps != nil {
		for i := len(ps.v2) - 1; i >= 0 && len(dst) < max; i-- {
			if r := ps.v2[i]; !s.expiredAt(r.t, now) {
				dst = append(dst, r.p)
			}
		}
	}
	s.mu.RUnlock()
	return dst
}

// Op is one write for the writer: store Entry (whose Time the writer sets)
// under the store rules with cas (< 0: none). Done is called from the
// writer goroutine once the outcome is durable: nil when the record is
// stored or refreshed, else why not (record.ErrCASFail and friends,
// ErrFull, a database error). Entry must not alias caller buffers (Clone).
type Op struct {
	Entry Entry
	CAS   int32
	Done  func(error)

	expire  bool // internal: a sweep
	expired int  // internal: what the sweep deleted
	result  chan error
}

// Submit queues op without waiting. It returns ErrBusy when the queue is
// full and ErrClosed after Close; Done is not called then.
func (s *Store) Submit(op *Op) error {
	select {
	case <-s.stop:
		return ErrClosed
	default:
	}
	select {
	case s.ops <- op:
		return nil
	default:
		return ErrBusy
	}
}

// Put stores e and waits for the outcome (see Op).
func (s *Store) Put(e Entry, cas int32) error {
	op := &Op{Entry: e.Clone(), CAS: cas, result: make(chan error, 1)}
	if err := s.submitWait(op); err != nil {
		return err
	}
	return <-op.result
}

func (s *Store) submitWait(op *Op) error {
	select {
	case s.ops <- op:
		return nil
	case <-s.stop:
		return ErrClosed
	}
}

// Expire deletes the records past their TTL at the writer's current time
// and returns how many.
func (s *Store) Expire() (int, error) {
	op := &Op{expire: true, result: make(chan error, 1)}
	if err := s.submitWait(op); err != nil {
		return 0, err
	}
	err := <-op.result
	return op.expired, err
}

func (s *Store) writer() {
	defer close(s.done)
	batch := make([]*Op, 0, maxBatch)
	for {
		var op *Op
		select {
		case op = <-s.ops:
		case <-s.stop:
			// Finish what is queued, then stop.
			for {
				select {
				case op := <-s.ops:
					s.apply([]*Op{op})
				default:
					return
				}
			}
		}
		batch = append(batch[:0], op)
	drain:
		for len(batch) < maxBatch {
			select {
			case op := <-s.ops:
				batch = append(batch, op)
			default:
				break drain
			}
		}
		s.apply(batch)
	}
}

// write is one database change of a batch; val nil deletes.
type write struct {
	key []byte
	val []byte
}

// apply runs the store rules for a batch against the committed state plus
// the batch's own earlier changes, commits all changes in one transaction,
// then publishes them to readers and reports.
func (s *Store) apply(batch []*Op) {
	now := s.cfg.Now()
	results := make([]error, len(batch))
	pending := map[string]*Entry{} // key -> new state (nil: deleted) within the batch
	var writes []write
	added := 0
	s.mu.RLock()
	for i, op := range batch {
		if op.expire {
			n := 0
			for _, k := range s.expiredKeysLocked(now) {
				if _, seen := pending[string(k)]; !seen {
					pending[string(k)] = nil
					writes = append(writes, write{key: k})
					n++
				}
			}
			op.expired = n
			continue
		}
		e := &op.Entry
		key := string(AppendKey(nil, e))
		existing, inBatch := pending[key]
		if !inBatch {
			existing = s.getLocked(e)
			if existing != nil && s.expired(existing, now) {
				existing = nil
			}
		}
		keep, err := s.rule(existing, e, op.CAS)
		if err != nil {
			results[i] = err
			continue
		}
		var next Entry
		if keep {
			next = *existing
		} else {
			next = *e
		}
		next.Time = now
		if existing == nil && s.getLocked(e) == nil {
			if s.nvals+s.npeers+added >= s.cfg.MaxRecords {
				results[i] = ErrFull
				continue
			}
			added++
		}
		pending[key] = &next
		writes = append(writes, write{key: []byte(key), val: AppendValue(nil, &next)})
	}
	s.mu.RUnlock()

	var err error
	if s.ns != nil && len(writes) > 0 {
		err = s.ns.Update(func(tx *store.Tx) error {
			sub, err := tx.Sub(bucketRecords)
			if err != nil {
				return err
			}
			for _, w := range writes {
				if w.val == nil {
					err = sub.Delete(w.key)
				} else {
					err = sub.Put(w.key, w.val)
				}
				if err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err == nil {
		s.mu.Lock()
		for k, e := range pending {
			if e == nil {
				s.deleteLocked([]byte(k))
			} else {
				s.insertLocked(e)
			}
		}
		s.mu.Unlock()
	} else {
		err = fmt.Errorf("storage: commit: %w", err)
	}
	for i, op := range batch {
		r := results[i]
		if r == nil {
			r = err
		}
		if op.result != nil {
			op.result <- r
		}
		if op.Done != nil {
			op.Done(r)
		}
	}
}

// rule applies the store rules of e's kind; keep means the existing
// content stays and is only refreshed.
func (s *Store) rule(existing, e *Entry, cas int32) (keep bool, err error) {
	if existing == nil {
		return false, nil
	}
	var a record.StoreAction
	switch e.Kind {
	case KindValue:
		a, err = record.CheckValueStore(&existing.Value, &e.Value, cas)
	case KindValueV2:
		a, err = record.CheckValueStoreV2(&existing.Value, &e.Value, cas)
	case KindPeer:
		a, err = record.CheckPeerStore(&existing.Peer, &e.Peer, cas)
	case KindPeerV2:
		a = record.Replace // v2 peers carry no sequence number
	}
	return a == record.Keep, err
}

// getLocked returns a copy of the stored record in e's slot, or nil.
func (s *Store) getLocked(e *Entry) *Entry {
	switch e.Kind {
	case KindValue, KindValueV2:
		r := s.values[valueKey{e.ID(), e.Kind == KindValueV2}]
		if r == nil {
			return nil
		}
		return &Entry{Kind: e.Kind, Time: time.Unix(0, r.t), Value: r.v}
	}
	ps := s.peers[e.ID()]
	if ps == nil {
		return nil
	}
	if e.Kind == KindPeerV2 {
		for _, r := range ps.v2 {
			if r.p.NodeID == e.PeerV2.NodeID && r.p.Origin == e.PeerV2.Origin {
				return &Entry{Kind: e.Kind, Time: time.Unix(0, r.t), PeerV2: r.p}
			}
		}
		return nil
	}
	for _, r := range ps.v3 {
		if r.p.Fingerprint == e.Peer.Fingerprint {
			return &Entry{Kind: e.Kind, Time: time.Unix(0, r.t), Peer: r.p}
		}
	}
	return nil
}

// insertLocked adds or replaces e. A peer set at MaxPerPeerID loses its
// oldest record, in memory only: the database copy expires on its own,
// and a restart that loads it back applies the same bound.
func (s *Store) insertLocked(e *Entry) {
	t := e.Time.UnixNano()
	switch e.Kind {
	case KindValue, KindValueV2:
		k := valueKey{e.ID(), e.Kind == KindValueV2}
		if s.values[k] == nil {
			s.nvals++
		}
		s.values[k] = &valueRec{v: e.Value, t: t}
		return
	}
	id := e.ID()
	ps := s.peers[id]
	if ps == nil {
		ps = &peerSet{}
		s.peers[id] = ps
	}
	if e.Kind == KindPeerV2 {
		ps.v2 = insertBounded(ps.v2, &peerRecV2{p: e.PeerV2, t: t}, s.cfg.MaxPerPeerID,
			func(r *peerRecV2) bool { return r.p.NodeID == e.PeerV2.NodeID && r.p.Origin == e.PeerV2.Origin },
			func(r *peerRecV2) int64 { return r.t }, &s.npeers)
		return
	}
	ps.v3 = insertBounded(ps.v3, &peerRec{p: e.Peer, t: t}, s.cfg.MaxPerPeerID,
		func(r *peerRec) bool { return r.p.Fingerprint == e.Peer.Fingerprint },
		func(r *peerRec) int64 { return r.t }, &s.npeers)
}

// insertBounded replaces the element same() matches, or appends r,
// dropping the oldest element first when the list holds max.
func insertBounded[T any](list []T, r T, max int, same func(T) bool, at func(T) int64, count *int) []T {
	for i, x := range list {
		if same(x) {
			list[i] = r
			return list
		}
	}
	if len(list) >= max {
		oldest := 0
		for i, x := range list {
			if at(x) < at(list[oldest]) {
				oldest = i
			}
		}
		list = slices.Delete(list, oldest, oldest+1)
		*count--
	}
	*count++
	return append(list, r)
}

func (s *Store) deleteLocked(key []byte) {
	if len(key) < keyValue {
		return
	}
	var id identity.ID
	copy(id[:], key[1:])
	switch Kind(key[0]) {
	case KindValue, KindValueV2:
		k := valueKey{id, Kind(key[0]) == KindValueV2}
		if s.values[k] != nil {
			delete(s.values, k)
			s.nvals--
		}
		return
	}
	ps := s.peers[id]
	if ps == nil {
		return
	}
	var buf [MaxKey]byte
	switch Kind(key[0]) {
	case KindPeer:
		for i, r := range ps.v3 {
			e := Entry{Kind: KindPeer, Peer: r.p}
			if string(AppendKey(buf[:0], &e)) == string(key) {
				ps.v3 = slices.Delete(ps.v3, i, i+1)
				s.npeers--
				break
			}
		}
	case KindPeerV2:
		for i, r := range ps.v2 {
			e := Entry{Kind: KindPeerV2, PeerV2: r.p}
			if string(AppendKey(buf[:0], &e)) == string(key) {
				ps.v2 = slices.Delete(ps.v2, i, i+1)
				s.npeers--
				break
			}
		}
	}
	if len(ps.v2) == 0 && len(ps.v3) == 0 {
		delete(s.peers, id)
	}
}

// expiredKeysLocked returns the keys of the records past their TTL.
func (s *Store) expiredKeysLocked(now time.Time) [][]byte {
	var out [][]byte
	for k, r := range s.values {
		if s.expiredAt(r.t, now) {
			kind := KindValue
			if k.v2 {
				kind = KindValueV2
			}
			out = append(out, append([]byte{byte(kind)}, k.id[:]...))
		}
	}
	for _, ps := range s.peers {
		for _, r := range ps.v3 {
			if s.expiredAt(r.t, now) {
				e := Entry{Kind: KindPeer, Peer: r.p}
				out = append(out, AppendKey(nil, &e))
			}
		}
		for _, r := range ps.v2 {
			if s.expiredAt(r.t, now) {
				e := Entry{Kind: KindPeerV2, PeerV2: r.p}
				out = append(out, AppendKey(nil, &e))
			}
		}
	}
	return out
}

// PutOwn records one of the node's own persistent items (to re-announce
// until DeleteOwn), with e.Time as its last announce. It is durable when
// PutOwn returns.
func (s *Store) PutOwn(e Entry) error {
	if s.ns == nil {
		return nil
	}
	return s.ns.Update(func(tx *store.Tx) error {
		sub, err := tx.Sub(bucketOwn)
		if err != nil {
			return err
		}
		return sub.Put(AppendKey(nil, &e), AppendValue(nil, &e))
	})
}

// DeleteOwn forgets an own item.
func (s *Store) DeleteOwn(e Entry) error {
	if s.ns == nil {
		return nil
	}
	return s.ns.Update(func(tx *store.Tx) error {
		sub, err := tx.Sub(bucketOwn)
		if err != nil {
			return err
		}
		return sub.Delete(AppendKey(nil, &e))
	})
}

// Own returns the node's own persistent items.
func (s *Store) Own() ([]Entry, error) {
	if s.ns == nil {
		return nil, nil
	}
	var out []Entry
	err := s.ns.View(func(tx *store.Tx) error {
		sub, err := tx.Sub(bucketOwn)
		if err != nil {
			return err
		}
		return sub.ForEach(nil, func(k, v []byte) error {
			if e, err := ParseEntry(k, v); err == nil {
				out = append(out, e)
			}
			return nil
		})
	})
	return out, err
}
