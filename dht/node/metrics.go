package node

import (
	"errors"

	"github.com/elacity/pc2/core/metrics"
	"github.com/elacity/pc2/dht/message"
	"github.com/elacity/pc2/dht/packet"
)

// dropReason says why an inbound datagram was not answered.
type dropReason uint8

const (
	dropShort         dropReason = iota // below the framing minimum
	dropLarge                           // above the inbound limit
	dropRateLimit                       // the source exceeded its packet budget
	dropAuth                            // MAC failure: not from the id it claims
	dropReplay                          // nonce equal to the last one accepted
	dropBusy                            // new-peer key-agreement budget exhausted
	dropSender                          // sender id is not a usable key (or a sign twin)
	dropDecode                          // not a Boson message
	dropUnmatched                       // response to no call of ours
	dropV2FromV3                        // v2 framing from a peer known to speak v3
	dropAmplification                   // answer larger than the request to an unverified address
	dropNonGlobal                       // announce from a non-global address outside developer mode
	dropStoreBusy                       // write queue full
	dropInternal                        // could not build or seal an answer
	numDropReasons
)

var dropNames = [numDropReasons]string{
	"short", "large", "ratelimit", "auth", "replay", "busy", "sender", "decode",
	"unmatched", "v2_from_v3_peer", "amplification", "nonglobal_announce", "store_busy", "internal",
}

// outcome of a request we served.
type outcome uint8

const (
	outOK         outcome = iota // answered with a response
	outError                     // answered with an error message
	outChallenged                // held until the requester's address answers a ping
	outAsync                     // answered after a durable write
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"ok", "error", "challenged", "stored"}

const numMethods = 7 // index by message.Method (1..6)

// nodeMetrics are the counters on the hot path, created once.
type nodeMetrics struct {
	requests   [numMethods][numOutcomes]metrics.Counter
	drops      [numDropReasons]metrics.Counter
	calls      [numMethods]metrics.Counter
	timeouts   metrics.Counter
	remoteErrs metrics.Counter
	challenges metrics.Counter
	bytesIn    metrics.Counter
	bytesOut   metrics.Counter
}

func newMetrics(r *metrics.Registry) *nodeMetrics {
	m := &nodeMetrics{}
	for meth := message.MethodPing; meth <= message.MethodFindValue; meth++ {
		for o := range numOutcomes {
			m.requests[meth][o] = r.Counter("requests_total", "method", meth.String(), "outcome", outcomeNames[o])
		}
		m.calls[meth] = r.Counter("rpc_calls_total", "method", meth.String())
	}
	for d := range numDropReasons {
		m.drops[d] = r.Counter("drops_total", "reason", dropNames[d])
	}
	m.timeouts = r.Counter("rpc_timeouts_total")
	m.remoteErrs = r.Counter("rpc_remote_errors_total")
	m.challenges = r.Counter("challenges_total")
	m.bytesIn = r.Counter("bytes_in_total")
	m.bytesOut = r.Counter("bytes_out_total")
	return m
}

func (m *nodeMetrics) drop(r dropReason) { m.drops[r].Inc() }

func (m *nodeMetrics) request(meth message.Method, o outcome) {
	if meth >= message.MethodPing && meth <= message.MethodFindValue {
		m.requests[meth][o].Inc()
	}
}

// openDrop maps a packet.Open error to its drop reason.
func openDrop(err error) dropReason {
	switch {
	case errors.Is(err, packet.ErrTooShort):
		return dropShort
	case errors.Is(err, packet.ErrTooLarge):
		return dropLarge
	case errors.Is(err, packet.ErrReplay):
		return dropReplay
	case errors.Is(err, packet.ErrBusy):
		return dropBusy
	case errors.Is(err, packet.ErrSender):
		return dropSender
	}
	return dropAuth
}
