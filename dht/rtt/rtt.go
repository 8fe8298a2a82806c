// Package rtt estimates round-trip times and derives retransmission-style
// timeouts from them (Jacobson/Karels, RFC 6298: SRTT + 4·RTTVAR).
//
// It exists because a DHT lookup waits on many peers at once: a fixed
// timeout either stalls every lookup behind one dead peer (too long) or
// gives up on distant live peers (too short). The estimator is a small
// value type so that a routing table can keep one per entry and a node one
// overall without allocation.
package rtt

import "time"

// Estimator is an RFC 6298 smoothed RTT. The zero value has no samples.
// It is not safe for concurrent use; its owner serialises access.
type Estimator struct {
	srtt   time.Duration
	rttvar time.Duration
}

// Observe folds one measured round trip into the estimate.
func (e *Estimator) Observe(sample time.Duration) {
	if sample <= 0 {
		sample = time.Microsecond
	}
	if e.srtt == 0 {
		e.srtt = sample
		e.rttvar = sample / 2
		return
	}
	diff := e.srtt - sample
	if diff < 0 {
		diff = -diff
	}
	// RFC 6298 §2.3: beta = 1/4, alpha = 1/8.
	e.rttvar += (diff - e.rttvar) / 4
	e.srtt += (sample - e.srtt) / 8
}

// Valid reports whether the estimator has at least one sample.
func (e Estimator) Valid() bool { return e.srtt != 0 }

// SRTT returns the smoothed round trip (0 without samples).
func (e Estimator) SRTT() time.Duration { return e.srtt }

// RTTVar returns the round-trip variation (0 without samples).
func (e Estimator) RTTVar() time.Duration { return e.rttvar }

// Timeout returns SRTT + 4·RTTVAR bounded to [lo, hi]; without samples it
// returns initial, bounded the same way.
func (e Estimator) Timeout(initial, lo, hi time.Duration) time.Duration {
	t := initial
	if e.srtt != 0 {
		t = e.srtt + 4*e.rttvar
	}
	return max(lo, min(hi, t))
}
