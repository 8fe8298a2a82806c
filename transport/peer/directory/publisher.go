package directory

import (
	"context"
	"encoding/json"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/elacity/pc2/core/identity"
	dhtnode "github.com/elacity/pc2/dht/node"
)

// Publisher keeps a node's record current in the DHT: at start, when its
// fields change (looked at every MinGap, so at most one publish per
// MinGap) and before readers would find it too old.
type Publisher struct {
	Node   func() *dhtnode.Node
	Key    *identity.KeyPair
	Fields func() Record // the record's content; Issued is set here
	Now    func() time.Time
	Logger *slog.Logger
	// MinGap is the least time between publishes (10 s); Refresh
	// republishes an unchanged record (30 min, well within MaxAge).
	MinGap, Refresh time.Duration
	// Published is told each record stored (tests, status).
	Published func(Record)
}

// Run publishes until ctx ends.
func (p *Publisher) Run(ctx context.Context) {
	now := p.Now
	if now == nil {
		now = time.Now
	}
	log := p.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	gap, refresh := p.MinGap, p.Refresh
	if gap <= 0 {
		gap = 10 * time.Second
	}
	if refresh <= 0 {
		refresh = 30 * time.Minute
	}
	var last []byte
	var lastIssued int64
	var lastAt time.Time
	failures := 0
	wait := time.Duration(0)
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = gap
		r := p.Fields()
		r.Issued = 0
		content, err := json.Marshal(r)
		if err != nil {
			continue
		}
		if string(content) == string(last) && now().Sub(lastAt) < refresh {
			continue
		}
		n := p.Node()
		if n == nil {
			continue
		}
		// A newer record needs a higher sequence number: one second more
		// than the last at least.
		r.Issued = max(now().Unix(), lastIssued+1)
		r = r.Fit() // what is stored, for the log and Published
		pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err = Publish(pctx, n, p.Key, r)
		cancel()
		if err != nil {
			failures++
			// Full jitter up to 2 min: the network may not be joined yet.
			wait = gap + time.Duration(rand.Int64N(int64(min(time.Duration(failures)*gap, 2*time.Minute))))
			log.Warn("directory: publish", "err", err)
			continue
		}
		failures = 0
		last, lastIssued, lastAt = content, r.Issued, now()
		r.ID = p.Key.ID()
		log.Info("directory: published peer record", "udp", r.UDP, "relays", len(r.Relays), "nat", r.NAT)
		if p.Published != nil {
			p.Published(r)
		}
	}
}
