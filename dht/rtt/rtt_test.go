package rtt

import (
	"testing"
	"time"
)

func TestEstimatorConverges(t *testing.T) {
	var e Estimator
	if e.Valid() {
		t.Fatal("zero value claims samples")
	}
	if got := e.Timeout(time.Second, 100*time.Millisecond, 10*time.Second); got != time.Second {
		t.Fatalf("no-sample timeout = %v, want initial 1s", got)
	}
	e.Observe(80 * time.Millisecond)
	if e.SRTT() != 80*time.Millisecond || e.RTTVar() != 40*time.Millisecond {
		t.Fatalf("first sample: srtt %v rttvar %v", e.SRTT(), e.RTTVar())
	}
	for range 200 {
		e.Observe(50 * time.Millisecond)
	}
	if d := e.SRTT() - 50*time.Millisecond; d > time.Millisecond || d < -time.Millisecond {
		t.Fatalf("srtt %v did not converge to 50ms", e.SRTT())
	}
	if e.RTTVar() > time.Millisecond {
		t.Fatalf("rttvar %v did not shrink for a constant RTT", e.RTTVar())
	}
	if got := e.Timeout(time.Second, 100*time.Millisecond, 10*time.Second); got != 100*time.Millisecond {
		t.Fatalf("timeout %v not floored at 100ms", got)
	}
	e.Observe(20 * time.Second)
	if got := e.Timeout(time.Second, 100*time.Millisecond, 10*time.Second); got != 10*time.Second {
		t.Fatalf("timeout %v not capped at 10s after a huge sample", got)
	}
}

func TestEstimatorTracksVariance(t *testing.T) {
	var steady, jittery Estimator
	for i := range 100 {
		steady.Observe(100 * time.Millisecond)
		d := 50 * time.Millisecond
		if i%2 == 0 {
			d = 150 * time.Millisecond
		}
		jittery.Observe(d)
	}
	lo, hi := time.Millisecond, time.Minute
	if steady.Timeout(0, lo, hi) >= jittery.Timeout(0, lo, hi) {
		t.Fatalf("jittery timeout %v should exceed steady %v", jittery.Timeout(0, lo, hi), steady.Timeout(0, lo, hi))
	}
}

func BenchmarkObserve(b *testing.B) {
	var e Estimator
	for i := 0; b.Loop(); i++ {
		e.Observe(time.Duration(40+i%20) * time.Millisecond)
	}
}
