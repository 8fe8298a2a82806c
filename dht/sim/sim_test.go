package sim

import (
	"testing"
	"time"
)

func TestQuick(t *testing.T) {
	start := time.Now()
	s := New(Config{Nodes: 1000, Seed: 7})
	s.Bootstrap(5 * time.Minute)
	t.Logf("bootstrap: %v wall, %d events, alive %d", time.Since(start), s.Events, s.Alive())
	m := s.Plan(LookupPlan{Name: "base", Count: 1000, Window: 2 * time.Minute, Publish: true})
	s.RunFor(3 * time.Minute)
	t.Log(m)
	e, b := s.TableStats()
	t.Logf("health %.3f, entries %.1f buckets %.1f heap/node %d, wall %v events %d", s.TableHealth(), e, b, s.HeapPerNode(), time.Since(start), s.Events)
}
