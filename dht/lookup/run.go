package lookup

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/routing"
	"github.com/elacity/pc2/dht/rtt"
)

// Response is a FIND_NODE answer as the RPC layer decodes it.
type Response struct {
	Nodes []routing.Contact
	// Token is the write token the answering node issued (0: none). It
	// is opaque to the lookup.
	Token int32
}

// RPC is the part of the node's RPC layer a lookup needs. FindNode must
// return by ctx's deadline. The RPC layer, not the lookup, updates the
// routing table with who answered and who timed out.
type RPC interface {
	FindNode(ctx context.Context, to routing.Contact, target identity.ID, wantToken bool) (Response, error)
}

// ErrNoSeeds is returned when a lookup has nobody to ask.
var ErrNoSeeds = errors.New("lookup: no usable seeds")

// Result is what Run returns.
type Result struct {
	Closest  []Found
	Stats    Stats
	Duration time.Duration
}

type outcome struct {
	to   identity.ID
	resp Response
	err  error
}

// Run performs a lookup over rpc with real time. It returns when the
// lookup ends or ctx is done (then with ctx's error and what was found).
func Run(ctx context.Context, rpc RPC, cfg Config, target identity.ID, seeds []routing.Contact) (Result, error) {
	start := time.Now()
	l := New(cfg, target, seeds, start)
	if l.candidates() == 0 {
		return Result{}, ErrNoSeeds
	}
	wantToken := l.cfg.WantToken
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan outcome)
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel: no goroutine outlives Run
	outstanding := 0
	var queries []Query
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		queries = l.Next(time.Now(), queries)
		for _, q := range queries {
			outstanding++
			wg.Add(1)
			go func(q Query) {
				defer wg.Done()
				qctx, qcancel := context.WithDeadline(ctx, q.Deadline)
				resp, err := rpc.FindNode(qctx, q.To, target, wantToken)
				if err == nil && qctx.Err() != nil {
					err = qctx.Err() // answered after its deadline
				}
				qcancel()
				select {
				case results <- outcome{q.To.ID, resp, err}:
				case <-ctx.Done():
				}
			}(q)
		}
		if l.Done() || outstanding == 0 {
			break
		}
		// Wake at the next soft timeout to let a slow query's slot go.
		var wake <-chan time.Time
		if at, ok := l.NextDeadline(); ok {
			if timer == nil {
				timer = time.NewTimer(time.Until(at))
			} else {
				timer.Reset(time.Until(at))
			}
			wake = timer.C
		}
		select {
		case <-wake:
		case o := <-results:
			outstanding--
			if o.err != nil {
				l.OnFailure(o.to, time.Now())
			} else {
				l.OnResponse(o.to, o.resp.Nodes, o.resp.Token, time.Now())
			}
		case <-ctx.Done():
			cancel()
			return Result{Closest: l.Result(nil), Stats: l.Stats(), Duration: time.Since(start)}, ctx.Err()
		}
	}
	cancel()
	return Result{Closest: l.Result(nil), Stats: l.Stats(), Duration: time.Since(start)}, nil
}

// StoreFunc sends a STORE_VALUE or ANNOUNCE_PEER to one of the closest
// nodes with the token it issued, and returns by ctx's deadline.
type StoreFunc func(ctx context.Context, to routing.Contact, token int32) error

// PublishResult is what Publish returns.
type PublishResult struct {
	Lookup Result
	Stored int // store calls that succeeded
	Failed int
}

// Publish looks target up asking for tokens, then calls store on each of
// the k closest nodes that answered, concurrently, each bounded by the
// lookup's hard deadline for that peer. It fails only if no store
// succeeded.
func Publish(ctx context.Context, rpc RPC, cfg Config, target identity.ID, seeds []routing.Contact, store StoreFunc) (PublishResult, error) {
	cfg.WantToken = true
	res, err := Run(ctx, rpc, cfg, target, seeds)
	out := PublishResult{Lookup: res}
	if err != nil {
		return out, fmt.Errorf("publish lookup: %w", err)
	}
	cfg.setDefaults()
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	for _, f := range res.Closest {
		if !f.Answered {
			continue
		}
		timeout := DefaultTimeout
		if cfg.Timeout != nil {
			timeout = cfg.Timeout(f.Contact)
		}
		timeout *= time.Duration(cfg.HardFactor) // the hard deadline: a store is not retried
		wg.Add(1)
		go func(f Found) {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			err := store(sctx, f.Contact, f.Token)
			mu.Lock()
			if err == nil {
				out.Stored++
			} else {
				out.Failed++
			}
			mu.Unlock()
		}(f)
	}
	wg.Wait()
	if out.Stored == 0 {
		return out, fmt.Errorf("publish: no node stored the record (%d failed)", out.Failed)
	}
	return out, nil
}

// Timeouts derives per-peer query timeouts: SRTT+4·RTTVAR of the peer's
// own estimate when PeerRTT knows it, else of the node-wide estimate,
// bounded to [Min, Max]; Initial before any sample. Boson bounds RPC
// timeouts to [100 ms, 10 s]. It is safe for concurrent use if PeerRTT is.
type Timeouts struct {
	Initial, Min, Max time.Duration
	// PeerRTT returns a peer's estimate (routing.Table.RTT fits).
	PeerRTT func(identity.ID) (rtt.Estimator, bool)

	mu     sync.Mutex
	global rtt.Estimator
}

// NewTimeouts returns Boson-like bounds: 1 s initial, [100 ms, 10 s].
func NewTimeouts(peerRTT func(identity.ID) (rtt.Estimator, bool)) *Timeouts {
	return &Timeouts{Initial: time.Second, Min: 100 * time.Millisecond, Max: 10 * time.Second, PeerRTT: peerRTT}
}

// Observe folds a round trip measured with any peer into the node-wide
// estimate.
func (t *Timeouts) Observe(sample time.Duration) {
	t.mu.Lock()
	t.global.Observe(sample)
	t.mu.Unlock()
}

// Timeout returns the deadline for a query to c.
func (t *Timeouts) Timeout(c routing.Contact) time.Duration {
	if t.PeerRTT != nil {
		if e, ok := t.PeerRTT(c.ID); ok {
			return e.Timeout(t.Initial, t.Min, t.Max)
		}
	}
	t.mu.Lock()
	g := t.global
	t.mu.Unlock()
	return g.Timeout(t.Initial, t.Min, t.Max)
}
