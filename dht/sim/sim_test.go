package sim

import (
	"testing"
	"time"
)

func TestQuick(t *testing.T) {
	start := time.Now()
	s := New(Config{Nodes: 1000, Seed: 7})
	s.Bootstrap(5 * time.Minute)
	for _, p := range []LookupPlan{{Name: "strict", Count: 1000, Window: time.Minute}, {Name: "beta", Count: 1000, Window: time.Minute, Confirm: 3}, {Name: "d3", Count: 1000, Window: time.Minute, Paths: 3}} {
		m := s.Plan(p)
		s.RunFor(2 * time.Minute)
		t.Log(m)
	}
	t.Logf("wall %v events %d", time.Since(start), s.Events)
}
