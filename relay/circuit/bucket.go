package circuit

import (
	"sync"
	"time"
)

// bucket is a token bucket; callers hold no lock of theirs while using it.
type bucket struct {
	mu    sync.Mutex
	rate  float64
	burst float64
	level float64
	last  time.Time
}

func newBucket(rate, burst float64, now time.Time) *bucket {
	return &bucket{rate: rate, burst: burst, level: burst, last: now}
}

// take takes n tokens if the bucket has them.
func (b *bucket) take(n float64, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if d := now.Sub(b.last); d > 0 {
		b.level = min(b.burst, b.level+d.Seconds()*b.rate)
		b.last = now
	}
	if b.level < n {
		return false
	}
	b.level -= n
	return true
}
