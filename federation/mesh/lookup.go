package mesh

import (
	"context"
	"sync"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/ratelimit"
	"github.com/elacity/pc2/plugins/registry/dhtpub"
)

// Resolver finds a name's announcements in the DHT
// (plugins/registry/dhtpub implements it).
type Resolver interface {
	Resolve(ctx context.Context, name string, trusted func(identity.ID) bool) ([]dhtpub.Claim, error)
}

// Bounds of DHT lookups for names the mesh does not know: a supernode
// that restarted while the supernode holding a name was down still finds
// the name in the DHT, but random names cannot turn it into a DHT
// flooder.
const (
	missWait      = 1500 * time.Millisecond // a lookup holds its caller at most this long
	missTimeout   = 5 * time.Second         // and runs at most this long
	missNegative  = 10 * time.Second        // a name not found is not looked up again for this long
	missRate      = 20                      // lookups per second, all names together
	missBurst     = 50
	missMaxCached = 100_000
)

// misses runs the lookups: one at a time per name, rate-limited, with a
// negative cache.
type misses struct {
	mu       sync.Mutex
	inflight map[string]chan struct{}
	negative map[string]time.Time
	limit    *ratelimit.Limiter[struct{}]
}

func newMisses() *misses {
	return &misses{inflight: map[string]chan struct{}{}, negative: map[string]time.Time{},
		limit: ratelimit.New[struct{}](missRate, missBurst, 1)}
}

// lookupMiss looks name up in the DHT when the mesh knows nothing of it
// and reports whether a claim was added.
func (m *Mesh) lookupMiss(name string) bool {
	r := m.o.Resolver
	if r == nil || !m.served(name) {
		return false
	}
	ms := m.misses
	now := time.Now()
	ms.mu.Lock()
	if until, ok := ms.negative[name]; ok && now.Before(until) {
		ms.mu.Unlock()
		return false
	}
	done, running := ms.inflight[name]
	if !running {
		if !ms.limit.Allow(struct{}{}, now) {
			ms.mu.Unlock()
			return false
		}
		done = make(chan struct{})
		ms.inflight[name] = done
		m.wg.Add(1)
		go m.runLookup(name, done)
	}
	ms.mu.Unlock()
	select {
	case <-done:
	case <-time.After(missWait):
		return false
	}
	return m.names.best(name, time.Now().Unix()) != nil
}

func (m *Mesh) runLookup(name string, done chan struct{}) {
	defer m.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), missTimeout)
	defer cancel()
	go func() {
		select {
		case <-m.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	claims, err := m.o.Resolver.Resolve(ctx, name, func(id identity.ID) bool { return m.admit(id) == nil })
	found := 0
	now := time.Now().Unix()
	for _, c := range claims {
		if c.Record == nil || c.Record.Expires <= now || m.checkRecord(c.Record) != nil {
			continue
		}
		// Generation 0: the announcing supernode's next snapshot drops it
		// if that supernode no longer has it.
		if m.names.set(c.Supernode, c.Record, 0) {
			found++
		}
	}
	ms := m.misses
	ms.mu.Lock()
	delete(ms.inflight, name)
	if found == 0 {
		if len(ms.negative) >= missMaxCached {
			clear(ms.negative)
		}
		ms.negative[name] = time.Now().Add(missNegative)
	}
	ms.mu.Unlock()
	close(done)
	if err != nil {
		m.log.Debug("mesh: DHT lookup failed", "name", name, "err", err)
	} else if found > 0 {
		m.log.Info("mesh: name found in the DHT", "name", name, "claims", found)
	}
}

// served reports whether name is one label under a served suffix.
func (m *Mesh) served(name string) bool {
	for _, z := range m.o.Registry.Zones() {
		if len(name) > len(z)+1 && name[len(name)-len(z)-1] == '.' && name[len(name)-len(z):] == z {
			label := name[:len(name)-len(z)-1]
			for i := 0; i < len(label); i++ {
				if label[i] == '.' {
					return false
				}
			}
			return true
		}
	}
	return false
}
