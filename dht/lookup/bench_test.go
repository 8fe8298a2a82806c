package lookup

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkLookupStateMachine: the CPU cost of one lookup's bookkeeping
// (candidates, validation, termination) on a 2,000-node network whose
// answers cost only a routing-table Closest.
func BenchmarkLookupStateMachine(b *testing.B) {
	tn := newTestNet(20, 2000, 0, 0)
	r := rand.New(rand.NewPCG(21, 21))
	b.ReportAllocs()
	queries := 0
	for b.Loop() {
		client := tn.nodes[r.IntN(len(tn.nodes))]
		l := runSync(tn, Config{Self: client.ID}, client, randID(r))
		queries += l.Stats().Queries
	}
	b.ReportMetric(float64(queries)/float64(b.N), "queries/op")
}
