package node

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/store"
	"github.com/elacity/pc2/dht/lookup"
	"github.com/elacity/pc2/dht/message"
	"github.com/elacity/pc2/dht/packet"
	"github.com/elacity/pc2/dht/routing"
)

const (
	bucketRouting = "routing"
	// maxSnapshot bounds the contacts read back from a snapshot.
	maxSnapshot = 4096
)

func (in *instance) snapshotKey() []byte {
	if in.fam == packet.IPv6 {
		return []byte("ipv6")
	}
	return []byte("ipv4")
}

// restore offers the persisted routing table to the table, unverified:
// each contact is pinged before it is handed out again.
func (in *instance) restore() {
	ns := in.n.opts.Storage
	if ns == nil {
		return
	}
	var snap []byte
	err := ns.View(func(tx *store.Tx) error {
		sub, err := tx.Sub(bucketRouting)
		if err != nil {
			return err
		}
		if b := sub.Get(in.snapshotKey()); b != nil {
			snap = append([]byte(nil), b...)
		}
		return nil
	})
	if err != nil || snap == nil {
		return
	}
	cs, err := routing.ParseSnapshot(snap, maxSnapshot)
	if err != nil {
		in.n.log.Warn("routing table snapshot unreadable; starting empty", "family", in.fam, "err", err)
		return
	}
	in.tmu.Lock()
	got := in.table.Restore(cs, time.Now())
	in.tmu.Unlock()
	in.n.log.Info("routing table restored", "family", in.fam, "contacts", got)
}

// persist writes the verified contacts of the table to the database.
func (in *instance) persist() {
	ns := in.n.opts.Storage
	if ns == nil {
		return
	}
	in.tmu.RLock()
	cs := in.table.Snapshot(nil)
	in.tmu.RUnlock()
	if len(cs) == 0 {
		return // never overwrite a useful snapshot with an empty one
	}
	b := routing.AppendSnapshot(nil, cs)
	err := ns.Update(func(tx *store.Tx) error {
		sub, err := tx.Sub(bucketRouting)
		if err != nil {
			return err
		}
		return sub.Put(in.snapshotKey(), b)
	})
	if err != nil {
		in.n.log.Warn("cannot save the routing table", "family", in.fam, "err", err)
	}
}

// maintain runs the instance's schedule: liveness checks as they fall
// due, bootstrap while the table is small, bucket refreshes and table
// snapshots.
func (in *instance) maintain(ctx context.Context) {
	n := in.n
	t := n.opts.Timers
	tick := time.NewTicker(t.Tick)
	defer tick.Stop()
	now := time.Now()
	nextBoot := now
	nextRefresh := now.Add(t.Refresh)
	nextPersist := now.Add(min(2*time.Minute, t.Persist))
	var busy atomic.Bool // a bootstrap or refresh round is running
	threshold := min(3*n.cfg.K, 64)
	firstBoot := true
	for {
		// A client joins through Bootstrap, called by its owner.
		if !now.Before(nextBoot) && len(n.boot) > 0 && !n.opts.Client && !busy.Load() && in.tableLen() < threshold {
			busy.Store(true)
			first := firstBoot
			firstBoot = false
			n.spawn(func() {
				defer busy.Store(false)
				if err := in.bootstrap(ctx); err != nil && ctx.Err() == nil {
					n.log.Debug("bootstrap", "family", in.fam, "err", err)
				}
				if first {
					in.refresh(ctx, time.Now(), 0)
				}
				in.persist()
			})
		}
		if !now.Before(nextBoot) {
			// Boson: every 4 min ±10% while below the threshold.
			jitter := time.Duration(rand.Int64N(int64(t.Bootstrap)/5+1)) - t.Bootstrap/10
			nextBoot = now.Add(t.Bootstrap + jitter)
		}
		in.checkDue(ctx, now)
		if !now.Before(nextRefresh) {
			nextRefresh = now.Add(t.Refresh)
			if !busy.Load() && !n.opts.Client {
				busy.Store(true)
				n.spawn(func() {
					defer busy.Store(false)
					in.refresh(ctx, time.Now(), t.Refresh)
				})
			}
		}
		if !now.Before(nextPersist) {
			nextPersist = now.Add(t.Persist)
			in.persist()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-in.wake:
		}
		now = time.Now()
	}
}

func (in *instance) tableLen() int {
	in.tmu.RLock()
	defer in.tmu.RUnlock()
	return in.table.Len()
}

// checkDue pings the contacts whose liveness check is due.
func (in *instance) checkDue(ctx context.Context, now time.Time) {
	in.tmu.Lock()
	due := in.table.Due(now, nil, maxBackground)
	in.tmu.Unlock()
	for _, c := range due {
		in.background(func() {
			cctx, cancel := context.WithTimeout(ctx, in.timeouts.Timeout(c)+time.Second)
			defer cancel()
			var ping message.Message
			ping.Type, ping.Method = message.TypeRequest, message.MethodPing
			in.call(cctx, c, &ping, 0)
		})
	}
}

// refresh looks up a random id in every bucket not refreshed within
// every (all buckets when every is 0).
func (in *instance) refresh(ctx context.Context, now time.Time, every time.Duration) {
	in.tmu.Lock()
	targets := in.table.RefreshTargets(now, every, randomID, nil)
	in.tmu.Unlock()
	for _, target := range targets {
		if ctx.Err() != nil {
			return
		}
		in.lookupNodes(ctx, target, false)
	}
}

func randomID() identity.ID {
	var id identity.ID
	for i := 0; i < len(id); i += 8 {
		v := rand.Uint64()
		for j := range 8 {
			id[i+j] = byte(v >> (8 * j))
		}
	}
	return id
}

// resolveBootstrap returns the bootstrap nodes of the instance's family,
// resolving host names. Addresses the routing rules refuse (loopback
// outside developer mode) are skipped.
func (in *instance) resolveBootstrap(ctx context.Context) []routing.Contact {
	var out []routing.Contact
	for _, b := range in.n.boot {
		var addrs []netip.Addr
		if ip, err := netip.ParseAddr(b.Host); err == nil {
			addrs = []netip.Addr{ip}
		} else {
			network := "ip4"
			if in.fam == packet.IPv6 {
				network = "ip6"
			}
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			addrs, _ = net.DefaultResolver.LookupNetIP(rctx, network, b.Host)
			cancel()
		}
		for _, a := range addrs {
			a = a.Unmap()
			if packet.NetworkOf(a) != in.fam {
				continue
			}
			ap := netip.AddrPortFrom(a, b.Port)
			if err := routing.Routable(ap, in.n.cfg.DeveloperMode); err != nil {
				in.n.log.Warn("bootstrap node skipped", "node", b, "err", err)
				continue
			}
			out = append(out, routing.Contact{ID: b.ID, Addr: ap})
			break
		}
	}
	return out
}

// errNoBootstrap means no bootstrap node answered and the table is empty.
var errNoBootstrap = errors.New("dht: no bootstrap node answered")

// bootstrap pings the bootstrap nodes (learning their dialect) and,
// unless the node is a client, looks up its own id, which fills the table
// around it.
func (in *instance) bootstrap(ctx context.Context) error {
	boot := in.resolveBootstrap(ctx)
	var wg sync.WaitGroup
	var answered atomic.Int32
	for _, c := range boot {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ping message.Message
			ping.Type, ping.Method = message.TypeRequest, message.MethodPing
			// Long enough for a v3 attempt and the v2 fallback.
			cctx, cancel := context.WithTimeout(ctx, 2*in.timeouts.Timeout(c)+2*time.Second)
			defer cancel()
			if _, err := in.call(cctx, c, &ping, 1); err == nil {
				answered.Add(1)
			}
		}()
	}
	wg.Wait()
	// A client does not look up its own id: nobody will ask it for
	// anything, and its lookups start from the bootstrap nodes anyway.
	if !in.n.opts.Client {
		if _, err := in.lookupNodes(ctx, in.n.self.ID(), false, boot...); err != nil && !errors.Is(err, lookup.ErrNoSeeds) {
			return err
		}
	}
	if answered.Load() == 0 && in.tableLen() == 0 {
		return errNoBootstrap
	}
	return nil
}

// Bootstrap joins the network through the configured bootstrap nodes on
// every family and returns when the node's own id has been looked up. It
// fails only if no family found any contact.
func (n *Node) Bootstrap(ctx context.Context) error {
	if len(n.inst) == 0 {
		return ErrClosed
	}
	errs := make([]error, len(n.inst))
	var wg sync.WaitGroup
	for i, in := range n.inst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = in.bootstrap(ctx)
		}()
	}
	wg.Wait()
	for i, in := range n.inst {
		if errs[i] == nil && in.tableLen() > 0 {
			return nil
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return fmt.Errorf("%w", errNoBootstrap)
}

// upkeep runs the node-wide schedule: the expiry sweep of stored records
// and the re-announcing of the node's own persistent items.
func (n *Node) upkeep(ctx context.Context) {
	t := n.opts.Timers
	expire := time.NewTicker(t.Expire)
	defer expire.Stop()
	reannounce := time.NewTimer(min(time.Minute, t.Reannounce))
	defer reannounce.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-expire.C:
			if k, err := n.store.Expire(); err != nil {
				n.log.Warn("expiry sweep", "err", err)
			} else if k > 0 {
				n.log.Debug("records expired", "count", k)
			}
		case <-reannounce.C:
			n.Reannounce(ctx, false)
			reannounce.Reset(t.Reannounce)
		}
	}
}
