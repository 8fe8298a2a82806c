package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/lookup"
	"github.com/elacity/pc2/dht/message"
	"github.com/elacity/pc2/dht/record"
	"github.com/elacity/pc2/dht/routing"
	"github.com/elacity/pc2/dht/storage"
)

// Contact is a DHT node: its id and one address.
type Contact = routing.Contact

// ErrNotFound means a lookup ended without finding the value or peer.
var ErrNotFound = errors.New("dht: not found")

// lookupConfig is the lookup configuration of the instance.
func (in *instance) lookupConfig(wantToken bool) lookup.Config {
	return lookup.Config{
		Self:          in.n.self.ID(),
		K:             in.n.cfg.K,
		Alpha:         in.n.cfg.Alpha,
		DeveloperMode: in.n.cfg.DeveloperMode,
		WantToken:     wantToken,
		Timeout:       in.timeouts.Timeout,
	}
}

// seeds returns where a lookup for target starts: the table's closest
// contacts (unverified ones too: the lookup itself checks them), plus
// extra contacts (bootstrap nodes).
func (in *instance) seeds(target identity.ID, extra ...routing.Contact) []routing.Contact {
	in.tmu.RLock()
	s := in.table.Closest(nil, target, in.n.cfg.K, false)
	in.tmu.RUnlock()
	for _, c := range extra {
		if !slices.ContainsFunc(s, func(x routing.Contact) bool { return x.ID == c.ID }) {
			s = append(s, c)
		}
	}
	if len(s) == 0 {
		// An empty table: fall back to the bootstrap nodes.
		s = in.resolveBootstrap(in.n.ctx)
	}
	return s
}

// lookupNodes runs an iterative FIND_NODE for target.
func (in *instance) lookupNodes(ctx context.Context, target identity.ID, wantToken bool, extra ...routing.Contact) (lookup.Result, error) {
	res, err := lookup.Run(ctx, nodeRPC{in}, in.lookupConfig(wantToken), target, in.seeds(target, extra...))
	in.tmu.Lock()
	in.table.Touch(target, time.Now())
	in.tmu.Unlock()
	return res, err
}

// nodeRPC is the FIND_NODE face of an instance for package lookup.
type nodeRPC struct{ in *instance }

func (r nodeRPC) FindNode(ctx context.Context, to routing.Contact, target identity.ID, wantToken bool) (lookup.Response, error) {
	m := message.Message{Method: message.MethodFindNode, Target: target, Want: r.in.want()}
	if wantToken {
		m.Want |= message.WantToken
	}
	resp, err := r.in.call(ctx, to, &m, awaitDeadline)
	if err != nil {
		return lookup.Response{}, err
	}
	nodes, _ := r.in.contactsOf(resp)
	return lookup.Response{Nodes: nodes, Token: resp.Token}, nil
}

// eachInstance runs fn on every family concurrently.
func (n *Node) eachInstance(fn func(in *instance)) {
	var wg sync.WaitGroup
	for _, in := range n.inst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(in)
		}()
	}
	wg.Wait()
}

// Ping sends a PING to c and returns the round-trip time.
func (n *Node) Ping(ctx context.Context, c Contact) (time.Duration, error) {
	in := n.instanceFor(c.Addr)
	if in == nil {
		return 0, fmt.Errorf("dht: no %s socket for %s", familyName(c), c.Addr)
	}
	var m message.Message
	m.Method = message.MethodPing
	start := time.Now()
	if _, err := in.call(ctx, c, &m, 1); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func familyName(c Contact) string {
	if c.Addr.Addr().Unmap().Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// FindNode looks up target iteratively on every family and returns the
// closest nodes that answered, nearest first.
func (n *Node) FindNode(ctx context.Context, target identity.ID) ([]Contact, error) {
	var mu sync.Mutex
	var out []Contact
	var errs []error
	n.eachInstance(func(in *instance) {
		res, err := in.lookupNodes(ctx, target, false)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			errs = append(errs, err)
		}
		for _, f := range res.Closest {
			if f.Answered {
				out = append(out, f.Contact)
			}
		}
	})
	sortByDistance(out, target)
	if len(out) == 0 && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func sortByDistance(cs []Contact, target identity.ID) {
	slices.SortFunc(cs, func(a, b Contact) int {
		switch {
		case identity.CloserTo(target, a.ID, b.ID):
			return -1
		case identity.CloserTo(target, b.ID, a.ID):
			return 1
		}
		return 0
	})
}

// FindNodeFrom asks one node for the nodes it knows closest to target
// (no iteration).
func (n *Node) FindNodeFrom(ctx context.Context, c Contact, target identity.ID) ([]Contact, error) {
	in := n.instanceFor(c.Addr)
	if in == nil {
		return nil, fmt.Errorf("dht: no %s socket for %s", familyName(c), c.Addr)
	}
	m := message.Message{Method: message.MethodFindNode, Target: target, Want: in.want()}
	resp, err := in.call(ctx, c, &m, 1)
	if err != nil {
		return nil, err
	}
	nodes, ok := in.contactsOf(resp)
	if !ok {
		return nil, fmt.Errorf("dht: %s answered a node list that breaks the per-response limits", c)
	}
	return nodes, nil
}

// GetOptions tune GetValue.
type GetOptions struct {
	// HasCAS asks only for a mutable value whose seq is at least CAS.
	HasCAS bool
	CAS    int32
	// First ends the lookup at the first valid mutable value instead of
	// asking all k closest nodes for the highest sequence number.
	First bool
}

func (o *GetOptions) cas() int32 {
	if o.HasCAS && o.CAS >= 0 {
		return o.CAS
	}
	return -1
}

// valueOK checks a value received for id: valid signature and size,
// the id it is asked under, and the cas condition.
func valueOK(v *record.Value, id identity.ID, cas int32) bool {
	return v.Validate() == nil && v.ID() == id && (cas < 0 || !v.Mutable() || v.Seq >= cas)
}

var errFound = errors.New("found")

// valueRPC sends FIND_VALUE instead of FIND_NODE during a lookup and
// keeps the best valid value seen.
type valueRPC struct {
	in     *instance
	opt    GetOptions
	cancel context.CancelCauseFunc
	mu     sync.Mutex
	best   *record.Value
}

func (r *valueRPC) FindNode(ctx context.Context, to routing.Contact, target identity.ID, _ bool) (lookup.Response, error) {
	m := message.Message{Method: message.MethodFindValue, Target: target, Want: r.in.want()}
	if cas := r.opt.cas(); cas >= 0 {
		m.CAS, m.HasCAS = cas, true
	}
	resp, err := r.in.call(ctx, to, &m, awaitDeadline)
	if err != nil {
		return lookup.Response{}, err
	}
	if resp.HasValue {
		v := resp.Value
		if valueOK(&v, target, r.opt.cas()) {
			r.offer(v)
		}
		return lookup.Response{}, nil
	}
	nodes, _ := r.in.contactsOf(resp)
	return lookup.Response{Nodes: nodes}, nil
}

func (r *valueRPC) offer(v record.Value) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.best == nil || v.Seq > r.best.Seq {
		r.best = &v
	}
	if !v.Mutable() || r.opt.First {
		r.cancel(errFound)
	}
}

// GetValue looks up the value stored under id: an immutable value is
// returned as soon as one valid copy arrives; for a mutable one the k
// closest nodes are asked and the highest sequence number wins (unless
// opt.First). Values are validated (signature, size, id) before they
// are considered. It returns ErrNotFound if none is found.
func (n *Node) GetValue(ctx context.Context, id identity.ID, opt GetOptions) (record.Value, error) {
	var mu sync.Mutex
	var best *record.Value
	consider := func(v *record.Value) {
		mu.Lock()
		defer mu.Unlock()
		if best == nil || v.Seq > best.Seq {
			c := v.Clone()
			best = &c
		}
	}
	if v, ok := n.store.Value(id, false, n.clock.Now()); ok && valueOK(&v, id, opt.cas()) {
		if !v.Mutable() {
			return v.Clone(), nil
		}
		consider(&v)
	}
	var errs []error
	n.eachInstance(func(in *instance) {
		lctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		rpc := &valueRPC{in: in, opt: opt, cancel: cancel}
		_, err := lookup.Run(lctx, rpc, in.lookupConfig(false), id, in.seeds(id))
		rpc.mu.Lock()
		if rpc.best != nil {
			consider(rpc.best)
		}
		rpc.mu.Unlock()
		if err != nil && !errors.Is(context.Cause(lctx), errFound) {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
	})
	if best != nil {
		return *best, nil
	}
	if ctx.Err() != nil {
		return record.Value{}, ctx.Err()
	}
	if len(errs) > 0 && !errors.Is(errors.Join(errs...), lookup.ErrNoSeeds) {
		return record.Value{}, fmt.Errorf("%w: %v", ErrNotFound, errors.Join(errs...))
	}
	return record.Value{}, ErrNotFound
}

// GetValueFrom asks one node for the value under id (no iteration). found
// is false when the node answered with nodes instead.
func (n *Node) GetValueFrom(ctx context.Context, c Contact, id identity.ID, opt GetOptions) (v record.Value, found bool, err error) {
	in := n.instanceFor(c.Addr)
	if in == nil {
		return v, false, fmt.Errorf("dht: no %s socket for %s", familyName(c), c.Addr)
	}
	m := message.Message{Method: message.MethodFindValue, Target: id, Want: in.want()}
	if cas := opt.cas(); cas >= 0 {
		m.CAS, m.HasCAS = cas, true
	}
	resp, err := in.call(ctx, c, &m, 1)
	var re *RemoteError
	if errors.As(err, &re) {
		return v, false, nil // e.g. 201: no value and no nodes to refer to
	}
	if err != nil {
		return v, false, err
	}
	if !resp.HasValue {
		return v, false, nil
	}
	if !valueOK(&resp.Value, id, opt.cas()) {
		return v, false, fmt.Errorf("dht: %s answered an invalid value for %s", c, id)
	}
	return resp.Value, true, nil
}

// FindPeerOptions tune FindPeer.
type FindPeerOptions struct {
	// Count ends the lookup once this many distinct records (fingerprints)
	// are found; 0 asks all k closest nodes.
	Count int
	// HasCAS asks only for records whose seq is at least CAS.
	HasCAS bool
	CAS    int32
}

const maxPeersCollected = 64

// peerRPC sends FIND_PEER during a lookup and collects valid records,
// one per fingerprint, the highest seq winning.
type peerRPC struct {
	in     *instance
	opt    FindPeerOptions
	cancel context.CancelCauseFunc
	mu     sync.Mutex
	found  map[int64]record.PeerInfo
}

func (r *peerRPC) FindNode(ctx context.Context, to routing.Contact, target identity.ID, _ bool) (lookup.Response, error) {
	m := message.Message{Method: message.MethodFindPeer, Target: target, Want: r.in.want()}
	if r.opt.HasCAS && r.opt.CAS >= 0 {
		m.CAS, m.HasCAS = r.opt.CAS, true
	}
	if r.opt.Count > 0 {
		m.Count = int32(min(r.opt.Count, message.MaxPeersPerResponse))
	}
	resp, err := r.in.call(ctx, to, &m, awaitDeadline)
	if err != nil {
		return lookup.Response{}, err
	}
	if len(resp.Peers) > 0 {
		r.offer(resp.Peers, target)
		return lookup.Response{}, nil
	}
	nodes, _ := r.in.contactsOf(resp)
	return lookup.Response{Nodes: nodes}, nil
}

func (r *peerRPC) offer(ps []record.PeerInfo, target identity.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range ps {
		p := &ps[i]
		if i >= message.MaxPeersPerResponse || p.ID != target || p.Validate() != nil {
			continue
		}
		if r.opt.HasCAS && p.Seq < r.opt.CAS {
			continue
		}
		if old, ok := r.found[p.Fingerprint]; ok && old.Seq >= p.Seq {
			continue
		}
		if _, ok := r.found[p.Fingerprint]; !ok && len(r.found) >= maxPeersCollected {
			continue
		}
		r.found[p.Fingerprint] = p.Clone()
	}
	if r.opt.Count > 0 && len(r.found) >= r.opt.Count {
		r.cancel(errFound)
	}
}

// FindPeer looks up the peer records of id (validated, one per
// fingerprint, highest seq first).
func (n *Node) FindPeer(ctx context.Context, id identity.ID, opt FindPeerOptions) ([]record.PeerInfo, error) {
	found := map[int64]record.PeerInfo{}
	var mu sync.Mutex
	merge := func(ps map[int64]record.PeerInfo) {
		mu.Lock()
		defer mu.Unlock()
		for f, p := range ps {
			if old, ok := found[f]; !ok || p.Seq > old.Seq {
				found[f] = p
			}
		}
	}
	cas := int32(-1)
	if opt.HasCAS && opt.CAS >= 0 {
		cas = opt.CAS
	}
	local := map[int64]record.PeerInfo{}
	for _, p := range n.store.Peers(nil, id, cas, maxPeersCollected, n.clock.Now()) {
		local[p.Fingerprint] = p.Clone()
	}
	merge(local)
	var errs []error
	if opt.Count <= 0 || len(found) < opt.Count {
		n.eachInstance(func(in *instance) {
			lctx, cancel := context.WithCancelCause(ctx)
			defer cancel(nil)
			rpc := &peerRPC{in: in, opt: opt, cancel: cancel, found: map[int64]record.PeerInfo{}}
			_, err := lookup.Run(lctx, rpc, in.lookupConfig(false), id, in.seeds(id))
			rpc.mu.Lock()
			merge(rpc.found)
			rpc.mu.Unlock()
			if err != nil && !errors.Is(context.Cause(lctx), errFound) {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	out := make([]record.PeerInfo, 0, len(found))
	for _, p := range found {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b record.PeerInfo) int {
		if a.Seq != b.Seq {
			return int(b.Seq) - int(a.Seq)
		}
		return int(a.Fingerprint>>32) - int(b.Fingerprint>>32)
	})
	if len(out) == 0 {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, ErrNotFound
	}
	return out, nil
}

// FindPeerFrom asks one node for the peer records of id (no iteration).
func (n *Node) FindPeerFrom(ctx context.Context, c Contact, id identity.ID) ([]record.PeerInfo, error) {
	in := n.instanceFor(c.Addr)
	if in == nil {
		return nil, fmt.Errorf("dht: no %s socket for %s", familyName(c), c.Addr)
	}
	m := message.Message{Method: message.MethodFindPeer, Target: id, Want: in.want()}
	resp, err := in.call(ctx, c, &m, 1)
	if err != nil {
		return nil, err
	}
	var out []record.PeerInfo
	for i := range resp.Peers {
		if p := &resp.Peers[i]; p.ID == id && p.Validate() == nil {
			out = append(out, *p)
		}
	}
	return out, nil
}

// PutOptions tune PutValue and AnnouncePeer.
type PutOptions struct {
	// HasCAS makes the store conditional: nodes holding a record with a
	// seq above CAS refuse it (error 301).
	HasCAS bool
	CAS    int32
	// Persistent keeps the record in the node's own items, re-announced
	// before it expires, across restarts.
	Persistent bool
}

func (o *PutOptions) cas() int32 {
	if o.HasCAS && o.CAS >= 0 {
		return o.CAS
	}
	return -1
}

// PutResult says where a record went.
type PutResult struct {
	ID     identity.ID
	Stored int     // nodes that acknowledged the store
	Failed int     // nodes that refused or did not answer
	Errors []error // the refusals (*RemoteError) and timeouts, at most 16
}

// ErrNotStored means no node acknowledged a store.
var ErrNotStored = errors.New("dht: no node stored the record")

// publish looks up target asking for tokens, then calls send on the k
// closest nodes that answered, on every family.
func (n *Node) publish(ctx context.Context, target identity.ID, send func(ctx context.Context, in *instance, to routing.Contact, tok int32) error) (PutResult, error) {
	res := PutResult{ID: target}
	var mu sync.Mutex
	n.eachInstance(func(in *instance) {
		pr, err := lookup.Publish(ctx, nodeRPC{in}, in.lookupConfig(true), target, in.seeds(target),
			func(ctx context.Context, to routing.Contact, tok int32) error {
				err := send(ctx, in, to, tok)
				if err != nil {
					mu.Lock()
					if len(res.Errors) < 16 {
						res.Errors = append(res.Errors, fmt.Errorf("%s: %w", to, err))
					}
					mu.Unlock()
				}
				return err
			})
		mu.Lock()
		defer mu.Unlock()
		res.Stored += pr.Stored
		res.Failed += pr.Failed
		if err != nil && pr.Stored == 0 && pr.Failed == 0 && !errors.Is(err, lookup.ErrNoSeeds) && len(res.Errors) < 16 {
			res.Errors = append(res.Errors, err)
		}
	})
	if res.Stored == 0 {
		if len(res.Errors) > 0 {
			return res, fmt.Errorf("%w: %v", ErrNotStored, errors.Join(res.Errors...))
		}
		return res, ErrNotStored
	}
	return res, nil
}

// PutValue stores a v3.1 value on the k closest nodes of its id (and on
// this node, unless it is a client). The value must be valid (signed,
// within its size limit).
func (n *Node) PutValue(ctx context.Context, v record.Value, opt PutOptions) (PutResult, error) {
	if err := v.Validate(); err != nil {
		return PutResult{}, fmt.Errorf("dht: put: %w", err)
	}
	e := storage.Entry{Kind: storage.KindValue, Value: v.Clone()}
	if !n.opts.Client {
		if err := n.store.Put(e, opt.cas()); err != nil {
			return PutResult{ID: v.ID()}, fmt.Errorf("dht: put: %w", err)
		}
	}
	res, err := n.publishValue(ctx, &e.Value, opt.cas())
	if opt.Persistent {
		e.Time = n.clock.Now()
		if perr := n.store.PutOwn(e); perr != nil {
			return res, fmt.Errorf("dht: keep own value: %w", perr)
		}
	}
	return res, err
}

func (n *Node) publishValue(ctx context.Context, v *record.Value, cas int32) (PutResult, error) {
	return n.publish(ctx, v.ID(), func(ctx context.Context, in *instance, to routing.Contact, tok int32) error {
		m := message.Message{Method: message.MethodStoreValue, Token: tok, Value: *v, HasValue: true}
		if cas >= 0 {
			m.CAS, m.HasCAS = cas, true
		}
		_, err := in.call(ctx, to, &m, 1)
		return err
	})
}

// AnnouncePeer stores a v3.1 peer record on the k closest nodes of its id
// (and on this node, unless it is a client).
func (n *Node) AnnouncePeer(ctx context.Context, p record.PeerInfo, opt PutOptions) (PutResult, error) {
	if err := p.Validate(); err != nil {
		return PutResult{}, fmt.Errorf("dht: announce: %w", err)
	}
	e := storage.Entry{Kind: storage.KindPeer, Peer: p.Clone()}
	if !n.opts.Client {
		if err := n.store.Put(e, opt.cas()); err != nil {
			return PutResult{ID: p.ID}, fmt.Errorf("dht: announce: %w", err)
		}
	}
	res, err := n.publishPeer(ctx, &e.Peer, opt.cas())
	if opt.Persistent {
		e.Time = n.clock.Now()
		if perr := n.store.PutOwn(e); perr != nil {
			return res, fmt.Errorf("dht: keep own peer: %w", perr)
		}
	}
	return res, err
}

func (n *Node) publishPeer(ctx context.Context, p *record.PeerInfo, cas int32) (PutResult, error) {
	return n.publish(ctx, p.ID, func(ctx context.Context, in *instance, to routing.Contact, tok int32) error {
		m := message.Message{Method: message.MethodAnnouncePeer, Token: tok, Peer: *p}
		if cas >= 0 {
			m.CAS, m.HasCAS = cas, true
		}
		_, err := in.call(ctx, to, &m, 1)
		return err
	})
}

// Reannounce publishes the node's own persistent items again: those last
// announced longer ago than the re-announce age, or all with force. It
// returns how many were announced.
func (n *Node) Reannounce(ctx context.Context, force bool) int {
	own, err := n.store.Own()
	if err != nil {
		n.log.Warn("cannot read own items", "err", err)
		return 0
	}
	now := n.clock.Now()
	done := 0
	for _, e := range own {
		if !force && now.Sub(e.Time) < n.opts.Timers.ReannounceAge {
			continue
		}
		var err error
		switch e.Kind {
		case storage.KindValue:
			_, err = n.publishValue(ctx, &e.Value, -1)
		case storage.KindPeer:
			_, err = n.publishPeer(ctx, &e.Peer, -1)
		default:
			continue
		}
		if err != nil {
			n.log.Debug("re-announce failed", "id", e.ID(), "kind", e.Kind, "err", err)
			continue
		}
		e.Time = now
		if err := n.store.PutOwn(e); err != nil {
			n.log.Warn("cannot update own item", "err", err)
		}
		done++
	}
	return done
}

// Forget stops re-announcing an own item (the record expires from the
// network on its own).
func (n *Node) Forget(kind storage.Kind, id identity.ID, fingerprint int64) error {
	e := storage.Entry{Kind: kind}
	switch kind {
	case storage.KindValue:
		// The key of a value is its id; an owner-less placeholder with
		// that id would hash the data, so build the key from the id.
		e.Value = record.Value{Owner: id}
	case storage.KindPeer:
		e.Peer = record.PeerInfo{ID: id, Fingerprint: fingerprint}
	default:
		return fmt.Errorf("dht: forget: unsupported kind %v", kind)
	}
	return n.store.DeleteOwn(e)
}
