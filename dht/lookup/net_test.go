package lookup

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/routing"
)

var t0 = time.Unix(1_800_000_000, 0)

func randID(r *rand.Rand) identity.ID {
	var id identity.ID
	for i := range id {
		id[i] = byte(r.Uint32())
	}
	return id
}

func pubAddr(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{11 + byte(i>>16), byte(i >> 8), byte(i), 1}), 39001)
}

// testNet is a small in-memory DHT whose routing tables are complete:
// every node was offered every other node as verified.
type testNet struct {
	nodes  []*testNode
	byAddr map[netip.AddrPort]*testNode
	liars  []routing.Contact
}

type testNode struct {
	routing.Contact
	index int
	table *routing.Table
	dead  bool // never answers (the caller's deadline expires)
	liar  bool // answers with the liars closest to the target
}

func newTestNet(seed uint64, n int, deadFrac, liarFrac float64) *testNet {
	r := rand.New(rand.NewPCG(seed, seed+1))
	tn := &testNet{byAddr: map[netip.AddrPort]*testNode{}}
	for i := range n {
		nd := &testNode{Contact: routing.Contact{ID: randID(r), Addr: pubAddr(i)}, index: i}
		tn.nodes = append(tn.nodes, nd)
		tn.byAddr[nd.Addr] = nd
	}
	for _, nd := range tn.nodes {
		nd.table = routing.New(routing.Config{Self: nd.ID})
		for _, j := range r.Perm(n) {
			if o := tn.nodes[j]; o != nd {
				nd.table.Verified(o.Contact, t0, 0)
			}
		}
	}
	for _, nd := range tn.nodes[1:] { // node 0 is the honest, live client
		x := r.Float64()
		switch {
		case x < deadFrac:
			nd.dead = true
		case x < deadFrac+liarFrac:
			nd.liar = true
			tn.liars = append(tn.liars, nd.Contact)
		}
	}
	// Tables have noticed the dead: one failed check each, so answers
	// (verified-only) skip them while own lookups may still try them.
	for _, nd := range tn.nodes {
		for _, o := range tn.nodes {
			if o.dead && o != nd {
				nd.table.Failed(o.ID, t0)
			}
		}
	}
	return tn
}

func byDistance(target identity.ID) func(a, b routing.Contact) int {
	return func(a, b routing.Contact) int {
		return identity.Compare(identity.Distance(a.ID, target), identity.Distance(b.ID, target))
	}
}

// truth returns the k live nodes closest to target, other than self.
func (tn *testNet) truth(target, self identity.ID, k int) []identity.ID {
	var live []routing.Contact
	for _, nd := range tn.nodes {
		if !nd.dead && nd.ID != self {
			live = append(live, nd.Contact)
		}
	}
	slices.SortFunc(live, byDistance(target))
	var ids []identity.ID
	for _, c := range live[:min(k, len(live))] {
		ids = append(ids, c.ID)
	}
	return ids
}

func (nd *testNode) answer(tn *testNet, target identity.ID, k int) []routing.Contact {
	if nd.liar {
		ls := slices.Clone(tn.liars)
		slices.SortFunc(ls, byDistance(target))
		return ls[:min(k, len(ls))]
	}
	return nd.table.Closest(nil, target, k, true)
}

func tokenOf(nd *testNode) int32 { return int32(1000 + nd.index) }

func foundIDs(fs []Found) []identity.ID {
	var ids []identity.ID
	for _, f := range fs {
		ids = append(ids, f.ID)
	}
	return ids
}

// netRPC is the RPC layer over testNet, for Run.
type netRPC struct {
	tn    *testNet
	calls atomic.Int64
}

var errUnknown = errors.New("no such node")

func (r *netRPC) FindNode(ctx context.Context, to routing.Contact, target identity.ID, wantToken bool) (Response, error) {
	r.calls.Add(1)
	nd := r.tn.byAddr[to.Addr]
	if nd == nil || nd.ID != to.ID {
		return Response{}, errUnknown
	}
	if nd.dead {
		<-ctx.Done() // a dead node: only the deadline ends the call
		return Response{}, ctx.Err()
	}
	resp := Response{Nodes: nd.answer(r.tn, target, 16)}
	if wantToken {
		resp.Token = tokenOf(nd)
	}
	return resp, nil
}

// runSync drives a Lookup deterministically: queries are answered one at
// a time in the order they were sent; dead nodes fail when their turn
// comes. It returns the lookup and the number of sequential rounds.
func runSync(tn *testNet, cfg Config, client *testNode, target identity.ID) *Lookup {
	seeds := client.table.Closest(nil, target, 16, false)
	l := New(cfg, target, seeds, t0)
	var queue []Query
	var batch []Query
	for !l.Done() {
		batch = l.Next(t0, batch)
		queue = append(queue, batch...)
		if len(queue) == 0 {
			break
		}
		q := queue[0]
		queue = queue[1:]
		nd := tn.byAddr[q.To.Addr]
		if nd == nil || nd.dead {
			l.OnFailure(q.To.ID, q.Deadline)
			continue
		}
		l.OnResponse(nd.ID, nd.answer(tn, target, 16), tokenOf(nd), t0)
	}
	return l
}
