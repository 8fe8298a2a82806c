package node

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/message"
	"github.com/elacity/pc2/dht/packet"
	"github.com/elacity/pc2/dht/routing"
	"github.com/elacity/pc2/dht/rtt"
)

// RPC errors.
var (
	// ErrTimeout means the peer did not answer in time.
	ErrTimeout = errors.New("dht: request timed out")
	// ErrBusy means too many calls are outstanding, or the destination's
	// outbound budget is spent.
	ErrBusy = errors.New("dht: too many outstanding requests")
)

// RemoteError is an error message a peer answered with.
type RemoteError struct {
	Code    int32
	Message string
}

func (e *RemoteError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("dht: peer answered error %d", e.Code)
	}
	return fmt.Sprintf("dht: peer answered error %d (%s)", e.Code, e.Message)
}

// call is one outstanding request.
type call struct {
	to     routing.Contact
	method message.Method
	reply  chan *message.Message
}

// peerRTT returns a contact's round-trip estimate (lookup.Timeouts).
func (in *instance) peerRTT(id identity.ID) (rtt.Estimator, bool) {
	in.tmu.RLock()
	defer in.tmu.RUnlock()
	return in.table.RTT(id)
}

// awaitDeadline makes call send once and wait until ctx's deadline: the
// caller (a lookup, which retransmits on its own schedule) owns timing.
const awaitDeadline = -1

// call sends req to `to` and waits for the answer, retrying up to retries
// times after an adaptive timeout (or, with awaitDeadline, once until
// ctx's deadline). With the compat dialect, a peer not known to speak v3
// is retried in v2 after a v3 timeout. An error answer comes back as
// *RemoteError together with the message. The routing table learns of
// the outcome.
func (in *instance) call(ctx context.Context, to routing.Contact, req *message.Message, retries int) (*message.Message, error) {
	n := in.n
	fr := n.dialects.framing(to.ID, n.compat)
	triedV2 := false
	for attempt := 0; ; attempt++ {
		timeout := in.timeouts.Timeout(to)
		if dl, ok := ctx.Deadline(); ok && retries == awaitDeadline {
			timeout = time.Until(dl)
		}
		resp, err := in.roundTrip(ctx, to, req, fr, timeout)
		if err == nil {
			if resp.Type == message.TypeError {
				n.m.remoteErrs.Inc()
				return resp, &RemoteError{Code: resp.Err.Code, Message: resp.Err.Message}
			}
			return resp, nil
		}
		if !errors.Is(err, ErrTimeout) {
			return nil, err
		}
		n.m.timeouts.Inc()
		canV2 := n.compat && fr == packet.FramingV3 && !triedV2 && n.dialects.get(to.ID)&speaksV3 == 0
		if ctx.Err() == nil && canV2 {
			fr, triedV2 = packet.FramingV2, true
			continue
		}
		if ctx.Err() == nil && attempt < retries {
			continue
		}
		in.failed(to)
		if canV2 {
			in.background(func() { in.probeV2(to) })
		}
		return nil, err
	}
}

// probeV2 pings a peer in v2 after a lookup query to it timed out in v3,
// so later calls know its dialect.
func (in *instance) probeV2(to routing.Contact) {
	var ping message.Message
	ping.Type, ping.Method = message.TypeRequest, message.MethodPing
	in.roundTrip(in.n.ctx, to, &ping, packet.FramingV2, in.timeouts.Timeout(to))
}

// background runs fn in a goroutine if fewer than maxBackground run.
func (in *instance) background(fn func()) bool {
	select {
	case in.sem <- struct{}{}:
	default:
		return false
	}
	if !in.n.spawn(func() {
		defer func() { <-in.sem }()
		fn()
	}) {
		<-in.sem
		return false
	}
	return true
}

// roundTrip sends one request and waits at most timeout (and ctx) for
// the matching answer: same txid, from the id and address asked.
func (in *instance) roundTrip(ctx context.Context, to routing.Contact, req *message.Message, fr packet.Framing, timeout time.Duration) (*message.Message, error) {
	n := in.n
	to.Addr = unmap(to.Addr)
	if to.ID == n.self.ID() {
		return nil, fmt.Errorf("dht: request to self")
	}
	if !n.allowOut(to.Addr, time.Now()) {
		return nil, ErrBusy
	}
	c := &call{to: to, method: req.Method, reply: make(chan *message.Message, 1)}
	in.pmu.Lock()
	if len(in.pending) >= maxPending {
		in.pmu.Unlock()
		return nil, ErrBusy
	}
	var txid uint32
	for {
		// Boson 3.1: previous id plus a random step in 1..511, kept below
		// 2^31 so v2 receivers (Java int) read it too; never 0.
		in.txid = (in.txid + 1 + uint32(in.rng.Uint64()%511)) & 0x7fffffff
		if in.txid != 0 && in.pending[in.txid] == nil {
			txid = in.txid
			break
		}
	}
	in.pending[txid] = c
	in.pmu.Unlock()
	defer func() {
		in.pmu.Lock()
		if in.pending[txid] == c {
			delete(in.pending, txid)
		}
		in.pmu.Unlock()
	}()

	m := *req
	m.Type, m.Txid, m.Version = message.TypeRequest, uint64(txid), n.ver
	n.m.calls[min(int(req.Method), numMethods-1)].Inc()
	start := time.Now()
	if err := in.sendMessage(&m, to.ID, to.Addr, fr); err != nil {
		return nil, fmt.Errorf("dht: send %v to %s: %w", req.Method, to, err)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case resp := <-c.reply:
		in.answered(to, fr, time.Since(start), isClientVersion(resp.Version))
		return resp, nil
	case <-timer.C:
		return nil, ErrTimeout
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, ErrTimeout
		}
		return nil, ctx.Err()
	}
}

// deliver hands an answer to the call waiting for it.
func (in *instance) deliver(m *message.Message, id identity.ID, from netip.AddrPort, fr packet.Framing) {
	if m.Txid > 0x7fffffff {
		in.n.m.drop(dropUnmatched)
		return
	}
	txid := uint32(m.Txid)
	in.pmu.Lock()
	c := in.pending[txid]
	if c == nil || c.to.ID != id || c.to.Addr != from || c.method != m.Method {
		in.pmu.Unlock()
		in.n.m.drop(dropUnmatched)
		return
	}
	delete(in.pending, txid)
	in.pmu.Unlock()
	c.reply <- m.Clone()
}

// answered records a completed round trip: the address is verified for
// the amplification rule, and the routing table and timeouts learn. A
// client node (see the package doc) stays out of the table.
func (in *instance) answered(to routing.Contact, fr packet.Framing, sample time.Duration, client bool) {
	now := time.Now()
	in.verified.add(to.Addr, now)
	in.n.dialects.mark(to.ID, fr)
	in.timeouts.Observe(sample)
	if client {
		return
	}
	in.tmu.Lock()
	defer in.tmu.Unlock()
	if _, twin := in.table.Get(twinOf(to.ID)); twin {
		return
	}
	in.table.Verified(to, now, sample)
}

// failed records a request that got no answer.
func (in *instance) failed(to routing.Contact) {
	in.tmu.Lock()
	in.table.Failed(to.ID, time.Now())
	in.tmu.Unlock()
}

// contactsOf returns the contacts of the instance's family in a lookup
// answer, or none when the answer breaks Boson's per-response limits
// (boson.md §3): at most 16 nodes per family and 8 per source unit
// (IPv4 address, IPv6 /64; only global addresses count).
func (in *instance) contactsOf(m *message.Message) ([]routing.Contact, bool) {
	if len(m.Nodes4) > message.MaxNodesPerResponse || len(m.Nodes6) > message.MaxNodesPerResponse {
		return nil, false
	}
	type unit struct {
		prefix [8]byte
		v6     bool
	}
	var units map[unit]int
	for _, list := range [2][]message.NodeInfo{m.Nodes4, m.Nodes6} {
		for i := range list {
			for _, a := range [2]netip.AddrPort{list[i].Addr4, list[i].Addr6} {
				if !a.IsValid() || !routing.IsGlobal(a.Addr()) {
					continue
				}
				var u unit
				ip := a.Addr().Unmap()
				if ip.Is4() {
					b := ip.As4()
					copy(u.prefix[:], b[:])
				} else {
					b := ip.As16()
					copy(u.prefix[:], b[:8])
					u.v6 = true
				}
				if units == nil {
					units = map[unit]int{}
				}
				if units[u]++; units[u] > message.MaxNodesPerSourcePerResponse {
					return nil, false
				}
			}
		}
	}
	list := m.Nodes4
	if in.fam == packet.IPv6 {
		list = m.Nodes6
	}
	out := make([]routing.Contact, 0, len(list))
	for i := range list {
		a := list[i].Addr(in.fam == packet.IPv6)
		if a.IsValid() {
			out = append(out, routing.Contact{ID: list[i].ID, Addr: unmap(a)})
		}
	}
	return out, true
}

func (in *instance) want() message.Want {
	if in.fam == packet.IPv6 {
		return message.WantIPv6
	}
	return message.WantIPv4
}
