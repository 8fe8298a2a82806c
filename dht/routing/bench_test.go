package routing

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
)

// benchTable offers n random verified contacts (each in its own /24) to a
// table with bucket size k: k=16 is a node's table in an n-node network,
// a large k keeps all n contacts in buckets.
func benchTable(b *testing.B, n, k int) (*Table, *rand.Rand) {
	r := rand.New(rand.NewPCG(42, 43))
	tb := New(Config{Self: randID(r), K: k, MaxPerSubnetTable: n})
	for i := range n {
		tb.Verified(Contact{randID(r), pubAddr(i)}, t0, 0)
	}
	b.ReportMetric(float64(tb.Len()), "entries")
	return tb, r
}

func BenchmarkClosest(b *testing.B) {
	for _, c := range []struct {
		name string
		n, k int
	}{{"offered=10k/k=16", 10_000, 16}, {"entries=10k/k=1024", 10_000, 1024}} {
		b.Run(c.name, func(b *testing.B) {
			tb, r := benchTable(b, c.n, c.k)
			targets := make([]identity.ID, 1024)
			for i := range targets {
				targets[i] = randID(r)
			}
			buf := make([]Contact, 0, 16)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				buf = tb.Closest(buf, targets[i%len(targets)], 16, true)
				i++
			}
		})
	}
}

func BenchmarkAdd(b *testing.B) {
	for _, c := range []struct {
		name string
		n, k int
	}{{"offered=10k/k=16", 10_000, 16}, {"entries=10k/k=1024", 10_000, 1024}} {
		b.Run(c.name, func(b *testing.B) {
			tb, r := benchTable(b, c.n, c.k)
			// Re-verifying known contacts is the common case (every
			// answer); new ones mostly land in full buckets.
			known := tb.Snapshot(nil)
			fresh := make([]Contact, 1024)
			for i := range fresh {
				fresh[i] = Contact{randID(r), pubAddr(100_000 + i)}
			}
			b.Run("known", func(b *testing.B) {
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					tb.Verified(known[i%len(known)], t0, 50*time.Millisecond)
					i++
				}
			})
			b.Run("new", func(b *testing.B) {
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					tb.AddUnverified(fresh[i%len(fresh)], t0)
					i++
				}
			})
		})
	}
}

func BenchmarkDue(b *testing.B) {
	tb, _ := benchTable(b, 10_000, 16)
	buf := make([]Contact, 0, 8)
	b.ReportAllocs()
	for b.Loop() {
		buf = tb.Due(t0, buf, 8)
	}
}
