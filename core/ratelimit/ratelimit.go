// Package ratelimit bounds how much work one source (an IP, a /24, a node
// id) can ask of a server: token buckets kept in a map of bounded size.
//
// It exists because every network input of pc2 is bounded per source (DHT
// datagrams, registrations, DNS queries, tunnel handshakes), and a limiter
// whose own memory grows with the number of sources is itself an attack
// surface. When the map is full, the bucket touched longest ago is
// evicted; an evicted source starts again with a full bucket, which only
// ever errs towards admitting, never towards blocking honest sources.
package ratelimit

import (
	"container/list"
	"sync"
	"time"
)

// Limiter is a set of token buckets keyed by K. It is safe for concurrent use.
type Limiter[K comparable] struct {
	rate  float64 // tokens per second
	burst float64
	max   int

	mu      sync.Mutex
	buckets map[K]*list.Element
	lru     list.List // front = most recently used
}

type bucket[K comparable] struct {
	key    K
	tokens float64
	last   time.Time
}

// New returns a limiter granting rate events per second per key with the
// given burst, remembering at most maxKeys keys.
func New[K comparable](rate float64, burst, maxKeys int) *Limiter[K] {
	if maxKeys < 1 {
		maxKeys = 1
	}
	return &Limiter[K]{rate: rate, burst: float64(burst), max: maxKeys, buckets: make(map[K]*list.Element)}
}

// Allow reports whether key may do one more event at time now, and takes
// the token if so.
func (l *Limiter[K]) Allow(key K, now time.Time) bool { return l.AllowN(key, now, 1) }

// AllowN takes n tokens if key has them.
func (l *Limiter[K]) AllowN(key K, now time.Time, n float64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b *bucket[K]
	if e, ok := l.buckets[key]; ok {
		b = e.Value.(*bucket[K])
		l.lru.MoveToFront(e)
		if dt := now.Sub(b.last).Seconds(); dt > 0 {
			b.tokens = min(l.burst, b.tokens+dt*l.rate)
		}
		b.last = now
	} else if len(l.buckets) >= l.max {
		// Reuse the least recently used bucket: a flood of new sources
		// costs no allocation.
		e := l.lru.Back()
		b = e.Value.(*bucket[K])
		delete(l.buckets, b.key)
		*b = bucket[K]{key: key, tokens: l.burst, last: now}
		l.buckets[key] = e
		l.lru.MoveToFront(e)
	} else {
		b = &bucket[K]{key: key, tokens: l.burst, last: now}
		l.buckets[key] = l.lru.PushFront(b)
	}
	if b.tokens < n {
		return false
	}
	b.tokens -= n
	return true
}

// Len returns the number of keys remembered.
func (l *Limiter[K]) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
