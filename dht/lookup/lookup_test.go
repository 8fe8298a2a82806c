package lookup

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/routing"
	"github.com/elacity/pc2/dht/rtt"
)

func TestRunFindsTrueClosest(t *testing.T) {
	tn := newTestNet(1, 400, 0, 0)
	r := rand.New(rand.NewPCG(9, 9))
	rpc := &netRPC{tn: tn}
	var queries, hops []int
	for trial := range 100 {
		client := tn.nodes[r.IntN(len(tn.nodes))]
		target := randID(r)
		if trial%4 == 0 {
			target = tn.nodes[r.IntN(len(tn.nodes))].ID // a node id itself
		}
		seeds := client.table.Closest(nil, target, 16, false)
		res, err := Run(context.Background(), rpc, Config{Self: client.ID}, target, seeds)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := foundIDs(res.Closest), tn.truth(target, client.ID, 16); !slices.Equal(got, want) {
			t.Fatalf("trial %d: lookup found\n%v\nwant\n%v", trial, got, want)
		}
		for _, f := range res.Closest {
			if !f.Answered {
				t.Fatal("result holds a node that did not answer")
			}
		}
		queries = append(queries, res.Stats.Queries)
		hops = append(hops, res.Stats.Hops)
	}
	slices.Sort(queries)
	slices.Sort(hops)
	// A complete table already holds the k closest, so the lookup should
	// just confirm them: about k queries, not a crawl.
	if q := queries[len(queries)/2]; q < 16 || q > 30 {
		t.Fatalf("median queries %d, want within [16, 30]", q)
	}
	if h := hops[len(hops)-1]; h > 3 {
		t.Fatalf("max hops %d on complete tables", h)
	}
}

func TestRunTimesOutDeadNodes(t *testing.T) {
	tn := newTestNet(2, 300, 0.25, 0)
	r := rand.New(rand.NewPCG(10, 10))
	rpc := &netRPC{tn: tn}
	cfg := Config{Self: tn.nodes[0].ID, Timeout: func(routing.Contact) time.Duration { return 20 * time.Millisecond }}
	failures := 0
	defer func() {
		if failures == 0 {
			t.Error("no timeouts counted with 25% dead nodes")
		}
	}()
	for trial := range 20 {
		target := randID(r)
		seeds := tn.nodes[0].table.Closest(nil, target, 16, false)
		start := time.Now()
		res, err := Run(context.Background(), rpc, cfg, target, seeds)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := foundIDs(res.Closest), tn.truth(target, tn.nodes[0].ID, 16); !slices.Equal(got, want) {
			t.Fatalf("trial %d: with 25%% dead nodes found\n%v\nwant\n%v", trial, got, want)
		}
		failures += res.Stats.Failures
		// Dead nodes cost a deadline each, in parallel batches: far less
		// than one deadline per failure in sequence.
		if el := time.Since(start); el > time.Duration(res.Stats.Failures)*20*time.Millisecond+2*time.Second {
			t.Fatalf("lookup took %v for %d failures", el, res.Stats.Failures)
		}
	}
}

func TestRunContextCancel(t *testing.T) {
	tn := newTestNet(3, 100, 0.9, 0)
	rpc := &netRPC{tn: tn}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	cfg := Config{Self: tn.nodes[0].ID, Timeout: func(routing.Contact) time.Duration { return time.Hour }}
	target := identity.ID{7}
	_, err := Run(ctx, rpc, cfg, target, tn.nodes[0].table.Closest(nil, target, 16, false))
	if err == nil {
		t.Fatal("lookup over dead nodes with hour-long deadlines ended before its context")
	}
	if _, err := Run(context.Background(), rpc, cfg, target, nil); err != ErrNoSeeds {
		t.Fatalf("no seeds: %v", err)
	}
}

func TestValidationAndBounds(t *testing.T) {
	self := identity.ID{1}
	target := identity.ID{0xff}
	seed := routing.Contact{ID: identity.ID{2}, Addr: pubAddr(2)}
	l := New(Config{Self: self, K: 4, Alpha: 1}, target, []routing.Contact{seed, seed, {ID: self, Addr: pubAddr(1)}}, t0)
	qs := l.Next(t0, nil)
	if len(qs) != 1 || qs[0].To != seed {
		t.Fatalf("first queries %v: duplicate seed or self queried", qs)
	}
	// An answer with the node itself, a zero id, bogons, duplicates and
	// more contacts than MaxPerResponse (4): only valid ones among the
	// first 4 count.
	ans := []routing.Contact{
		{ID: self, Addr: pubAddr(1)},
		{ID: identity.ID{}, Addr: pubAddr(3)},
		{ID: identity.ID{4}, Addr: netip.MustParseAddrPort("127.0.0.1:39001")},
		{ID: identity.ID{5}, Addr: pubAddr(5)},
		{ID: identity.ID{6}, Addr: pubAddr(6)}, // beyond MaxPerResponse
	}
	l.OnResponse(seed.ID, ans, 0, t0)
	if s := l.Stats(); s.Dropped != 4 || s.Answers != 1 {
		t.Fatalf("stats %+v: want 4 dropped (self, zero, loopback, 5th), 1 answer", s)
	}
	// Unsolicited and duplicate answers are ignored.
	l.OnResponse(identity.ID{9}, []routing.Contact{{ID: identity.ID{10}, Addr: pubAddr(10)}}, 0, t0)
	l.OnResponse(seed.ID, []routing.Contact{{ID: identity.ID{11}, Addr: pubAddr(11)}}, 0, t0)
	qs = l.Next(t0, nil)
	if len(qs) != 1 || qs[0].To.ID != (identity.ID{5}) {
		t.Fatalf("queries after answer %v: want only node 5", qs)
	}
	// A late answer after a timeout is still used.
	l.OnFailure(identity.ID{5}, t0)
	l.OnResponse(identity.ID{5}, nil, 77, t0)
	if !l.Done() {
		t.Fatal("all candidates answered but lookup not done")
	}
	res := l.Result(nil)
	if len(res) != 2 || res[0].ID != (identity.ID{5}) || res[0].Token != 77 || !res[0].Answered {
		t.Fatalf("result %+v", res)
	}
	if !l.Stats().Exhausted {
		t.Fatal("fewer than K nodes exist: lookup should report exhaustion")
	}
}

func TestCandidateListBounded(t *testing.T) {
	target := identity.ID{}
	r := rand.New(rand.NewPCG(4, 4))
	seeds := []routing.Contact{{ID: randID(r), Addr: pubAddr(0)}}
	l := New(Config{Self: identity.ID{1}, K: 4, Candidates: 8, Alpha: 1}, target, seeds, t0)
	l.Next(t0, nil)
	var flood []routing.Contact
	for i := range 4 {
		flood = append(flood, routing.Contact{ID: randID(r), Addr: pubAddr(100 + i)})
	}
	for range 50 {
		q := l.Next(t0, nil)
		if len(q) == 0 {
			break
		}
		l.OnResponse(q[0].To.ID, flood, 0, t0)
		flood = flood[:0]
		for i := range 4 {
			flood = append(flood, routing.Contact{ID: randID(r), Addr: pubAddr(200 + r.IntN(10000) + i)})
		}
		if n := l.candidates(); n > 8 {
			t.Fatalf("candidate list grew to %d, bound 8", n)
		}
	}
}

func TestConfirmBetaEndsSooner(t *testing.T) {
	tn := newTestNet(5, 400, 0, 0)
	r := rand.New(rand.NewPCG(11, 11))
	strict, beta := 0, 0
	for range 50 {
		client := tn.nodes[r.IntN(len(tn.nodes))]
		target := randID(r)
		ls := runSync(tn, Config{Self: client.ID}, client, target)
		lb := runSync(tn, Config{Self: client.ID, Confirm: 3}, client, target)
		want := tn.truth(target, client.ID, 16)
		if !slices.Equal(foundIDs(ls.Result(nil)), want) || !slices.Equal(foundIDs(lb.Result(nil)), want) {
			t.Fatal("a mode missed the true closest on complete tables")
		}
		strict += ls.Stats().Queries
		beta += lb.Stats().Queries
	}
	if beta >= strict {
		t.Fatalf("Confirm=3 used %d queries, strict %d: should be fewer", beta, strict)
	}
}

// TestDisjointPathsWithLiars: 20% colluding liars answer with the liars
// closest to the target. Lookups with d=3 disjoint paths must still find
// the true closest, and no node may serve two paths.
func TestDisjointPathsWithLiars(t *testing.T) {
	tn := newTestNet(6, 500, 0, 0.2)
	r := rand.New(rand.NewPCG(12, 12))
	const trials = 200
	ok := map[int]int{}
	for range trials {
		client := tn.nodes[0]
		target := randID(r)
		want := tn.truth(target, client.ID, 16)
		for _, d := range []int{1, 3} {
			l := runSync(tn, Config{Self: client.ID, Paths: d}, client, target)
			if slices.Equal(foundIDs(l.Result(nil)), want) {
				ok[d]++
			}
			owner := map[identity.ID]int{}
			for p := range l.paths {
				for _, c := range l.paths[p].cands {
					if q, dup := owner[c.ID]; dup {
						t.Fatalf("node on paths %d and %d", q, p)
					}
					owner[c.ID] = p
				}
			}
		}
	}
	t.Logf("success with 20%% liars: d=1 %d/%d, d=3 %d/%d", ok[1], trials, ok[3], trials)
	if ok[3] < trials*95/100 {
		t.Fatalf("d=3 success %d/%d below 95%%", ok[3], trials)
	}
}

// TestPoisonedAnswers: liars answer with fabricated ids right next to the
// target at addresses nobody answers on. They cost timeouts, but never
// reach the result, and the true closest are still found.
func TestPoisonedAnswers(t *testing.T) {
	tn := newTestNet(13, 300, 0, 0)
	r := rand.New(rand.NewPCG(14, 14))
	target := randID(r)
	var fakes []routing.Contact
	for i := range 16 {
		id := target
		id[31] ^= byte(i + 1)
		fakes = append(fakes, routing.Contact{ID: id, Addr: pubAddr(50_000 + i)})
	}
	poison := map[*testNode]bool{}
	for _, nd := range tn.nodes[1:60] {
		poison[nd] = true
	}
	client := tn.nodes[0]
	l := New(Config{Self: client.ID}, target, client.table.Closest(nil, target, 16, false), t0)
	var queue []Query
	for !l.Done() {
		queue = append(queue, l.Next(t0, nil)...)
		if len(queue) == 0 {
			break
		}
		q := queue[0]
		queue = queue[1:]
		nd := tn.byAddr[q.To.Addr]
		switch {
		case nd == nil:
			l.OnFailure(q.To.ID, q.Deadline)
		case poison[nd]:
			l.OnResponse(nd.ID, fakes, 0, t0)
		default:
			l.OnResponse(nd.ID, nd.answer(tn, target, 16), 0, t0)
		}
	}
	if got, want := foundIDs(l.Result(nil)), tn.truth(target, client.ID, 16); !slices.Equal(got, want) {
		t.Fatalf("poisoned lookup found %v, want %v", got, want)
	}
	if s := l.Stats(); s.Failures < 16 {
		t.Fatalf("fakes were not tried and failed: %+v", s)
	}
}

func TestPublishStoresAtClosestWithTokens(t *testing.T) {
	tn := newTestNet(7, 300, 0.1, 0)
	rpc := &netRPC{tn: tn}
	client := tn.nodes[0]
	target := identity.ID{0x42}
	var mu sync.Mutex
	stored := map[identity.ID]int32{}
	store := func(ctx context.Context, to routing.Contact, token int32) error {
		nd := tn.byAddr[to.Addr]
		if nd.dead {
			<-ctx.Done()
			return ctx.Err()
		}
		mu.Lock()
		stored[to.ID] = token
		mu.Unlock()
		return nil
	}
	cfg := Config{Self: client.ID, Timeout: func(routing.Contact) time.Duration { return 20 * time.Millisecond }}
	res, err := Publish(context.Background(), rpc, cfg, target, client.table.Closest(nil, target, 16, false), store)
	if err != nil {
		t.Fatal(err)
	}
	want := tn.truth(target, client.ID, 16)
	if res.Stored != 16 || len(stored) != 16 {
		t.Fatalf("stored at %d nodes", res.Stored)
	}
	for _, id := range want {
		tok, ok := stored[id]
		if !ok {
			t.Fatalf("closest node %s got no store", id)
		}
		if tok != tokenOf(tn.nodes[slices.IndexFunc(tn.nodes, func(n *testNode) bool { return n.ID == id })]) {
			t.Fatal("store carried another node's token")
		}
	}
}

func TestTimeouts(t *testing.T) {
	known := identity.ID{1}
	var peer rtt.Estimator
	peer.Observe(300 * time.Millisecond)
	to := NewTimeouts(func(id identity.ID) (rtt.Estimator, bool) { return peer, id == known })
	if d := to.Timeout(routing.Contact{ID: identity.ID{2}}); d != time.Second {
		t.Fatalf("no samples: %v, want initial 1s", d)
	}
	for range 50 {
		to.Observe(40 * time.Millisecond)
	}
	if d := to.Timeout(routing.Contact{ID: identity.ID{2}}); d != 100*time.Millisecond {
		t.Fatalf("node-wide estimate of steady 40ms: %v, want the 100ms floor", d)
	}
	if d := to.Timeout(routing.Contact{ID: known}); d != 900*time.Millisecond {
		t.Fatalf("per-peer 300ms (var 150ms): %v, want 900ms", d)
	}
}

func TestRunRaceManyConcurrent(t *testing.T) {
	tn := newTestNet(8, 200, 0.05, 0)
	rpc := &netRPC{tn: tn}
	var wg sync.WaitGroup
	var bad atomic.Int32
	for i := range 8 {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			client := tn.nodes[i]
			target := tn.nodes[199-i].ID
			cfg := Config{Self: client.ID, Paths: 2, Timeout: func(routing.Contact) time.Duration { return 20 * time.Millisecond }}
			res, err := Run(context.Background(), rpc, cfg, target, client.table.Closest(nil, target, 16, false))
			if err != nil || !slices.Equal(foundIDs(res.Closest), tn.truth(target, client.ID, 16)) {
				bad.Add(1)
			}
		}(i)
	}
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d concurrent lookups failed", bad.Load())
	}
}

// TestSlowNodeStaysInTheRunning: a query past its soft timeout frees its
// α slot, but the lookup does not end without the slow node's answer
// until the hard deadline; a late answer puts it in the result.
func TestSlowNodeStaysInTheRunning(t *testing.T) {
	target := identity.ID{}
	near := routing.Contact{ID: identity.ID{0, 1}, Addr: pubAddr(1)}
	far := routing.Contact{ID: identity.ID{0x80}, Addr: pubAddr(2)}
	cfg := Config{Self: identity.ID{0xff}, K: 2, Alpha: 1, NoBurst: true, MaxAttempts: 1,
		Timeout: func(routing.Contact) time.Duration { return 100 * time.Millisecond }}
	l := New(cfg, target, []routing.Contact{near, far}, t0)
	q := l.Next(t0, nil)
	if len(q) != 1 || q[0].To != near || q[0].Deadline.Sub(q[0].SoftDeadline) != 200*time.Millisecond {
		t.Fatalf("first query %+v: want near, hard deadline 3x soft", q)
	}
	if at, ok := l.NextDeadline(); !ok || !at.Equal(t0.Add(100*time.Millisecond)) {
		t.Fatalf("next deadline %v %v", at, ok)
	}
	if q := l.Next(t0.Add(50*time.Millisecond), nil); len(q) != 0 {
		t.Fatal("α=1 slot released before the soft timeout")
	}
	q = l.Next(t0.Add(100*time.Millisecond), nil)
	if len(q) != 1 || q[0].To != far {
		t.Fatalf("after the soft timeout: %+v, want far", q)
	}
	l.OnResponse(far.ID, nil, 0, t0.Add(150*time.Millisecond))
	if l.Done() {
		t.Fatal("ended while the closer node was only slow")
	}
	l.OnResponse(near.ID, nil, 0, t0.Add(250*time.Millisecond))
	if !l.Done() {
		t.Fatal("not done after both answered")
	}
	res := l.Result(nil)
	if len(res) != 2 || res[0].Contact != near || l.Stats().Slow != 1 || l.Stats().Failures != 0 {
		t.Fatalf("result %+v stats %+v", res, l.Stats())
	}
	// The same with the slow node failing at its hard deadline.
	l = New(cfg, target, []routing.Contact{near, far}, t0)
	l.Next(t0, nil)
	l.Next(t0.Add(100*time.Millisecond), nil)
	l.OnResponse(far.ID, nil, 0, t0.Add(150*time.Millisecond))
	l.OnFailure(near.ID, t0.Add(300*time.Millisecond))
	if !l.Done() || len(l.Result(nil)) != 1 || l.Stats().Failures != 1 {
		t.Fatalf("after a hard failure: done %v result %v", l.Done(), l.Result(nil))
	}
}

// TestRetransmission: a node whose requests are lost is asked again at
// each soft timeout, up to MaxAttempts; an answer to any attempt counts,
// and it fails only at the last attempt's hard deadline.
func TestRetransmission(t *testing.T) {
	target := identity.ID{}
	n := routing.Contact{ID: identity.ID{0, 1}, Addr: pubAddr(1)}
	cfg := Config{Self: identity.ID{0xff}, K: 1, MaxAttempts: 3,
		Timeout: func(routing.Contact) time.Duration { return 100 * time.Millisecond }}
	l := New(cfg, target, []routing.Contact{n}, t0)
	first := l.Next(t0, nil)
	ms := func(d int) time.Time { return t0.Add(time.Duration(d) * time.Millisecond) }
	if q := l.Next(ms(100), nil); len(q) != 1 || q[0].To != n {
		t.Fatalf("no retransmission at the soft timeout: %v", q)
	}
	q3 := l.Next(ms(200), nil)
	if len(q3) != 1 {
		t.Fatalf("no third attempt: %v", q3)
	}
	if q := l.Next(ms(300), nil); len(q) != 0 {
		t.Fatalf("more than MaxAttempts: %v", q)
	}
	l.OnFailure(n.ID, first[0].Deadline) // the first attempt's deadline: others pending
	if l.Done() {
		t.Fatal("failed while retransmissions were pending")
	}
	l.OnResponse(n.ID, nil, 5, ms(320)) // the third attempt is answered
	if !l.Done() || len(l.Result(nil)) != 1 {
		t.Fatal("answer to a retransmission not counted")
	}
	if s := l.Stats(); s.Queries != 3 || s.Resent != 2 || s.Failures != 0 {
		t.Fatalf("stats %+v", s)
	}
	// All attempts lost: failure at the last attempt's hard deadline.
	l = New(cfg, target, []routing.Contact{n}, t0)
	l.Next(t0, nil)
	l.Next(ms(100), nil)
	last := l.Next(ms(200), nil)
	l.OnFailure(n.ID, last[0].Deadline.Add(-time.Millisecond))
	if l.Done() {
		t.Fatal("failed before the last deadline")
	}
	l.OnFailure(n.ID, last[0].Deadline)
	if !l.Done() || l.Stats().Failures != 1 {
		t.Fatalf("not failed after the last deadline: %+v", l.Stats())
	}
}
