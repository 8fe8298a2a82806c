package punch

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"
)

// PacketConn is the part of a UDP socket an attempt needs. *net.UDPConn
// provides it, and so will the node's shared socket (its non-QUIC view).
// During an attempt PunchUDP reads from it and sets its read deadline; it
// clears the deadline when it returns.
type PacketConn interface {
	ReadFrom(p []byte) (n int, addr net.Addr, err error)
	WriteTo(p []byte, addr net.Addr) (n int, err error)
	SetReadDeadline(t time.Time) error
	LocalAddr() net.Addr
}

// Limits of birthday probing (nat-dht.md §A2, Tailscale "The benefits of
// birthdays": 256 sockets on the hard side and 2,048 random probes give
// 99.9%).
const (
	MaxHardSockets = 256
	MaxProbeRate   = 200 // probes per second from the easy side
	MaxProbes      = 2048
	maxTargets     = 2 * MaxCandidates // advertised + peer-reflexive
	maxExtraSends  = 6                 // punches per extra hard-side socket
	eventQueue     = 512
	maxLinger      = 3 * time.Second // answering after confirmation, at most
)

// Path says how an attempt reached the peer.
type Path string

// Paths.
const (
	PathNone     Path = ""
	PathDirect   Path = "direct"
	PathBirthday Path = "birthday"
)

// Config tunes PunchUDP. Zero values take defaults derived from the plan's
// RTT; limits above the package maxima are clamped to them.
type Config struct {
	// Interval is the first gap between punches to one target (default
	// RTT/2 within [10 ms, 200 ms]). The first 8 punches to a target use
	// it; later gaps double up to 1 s.
	Interval time.Duration
	// MaxPunches bounds the punches sent to one target (default 30).
	MaxPunches int
	// DirectTimeout ends an attempt that cannot use birthday probing
	// (default 20 RTT within [2 s, 10 s] after Start).
	DirectTimeout time.Duration
	// Linger is how long a side keeps answering after both directions are
	// confirmed, and after each later punch of the peer, which shows the
	// peer has not seen our ack yet (default 10 intervals + RTT, within
	// [250 ms, 1 s]; 3 s after confirmation at most in total). It must
	// outlast a run of lost punches and a peer process that is not
	// scheduled for a while: a side that leaves early strands a peer whose
	// punches were never acknowledged.
	Linger time.Duration
	// EscalateAfter is how long after Start birthday probing begins when
	// exactly one side is hard (default 5 RTT, at least 250 ms).
	EscalateAfter time.Duration
	// HardSockets is the number of sockets the hard side punches from,
	// the main one included (default and maximum 256).
	HardSockets int
	// ProbeRate is the easy side's probe rate in packets/s (default and
	// maximum 200).
	ProbeRate int
	// MaxProbes stops the easy side's probing (default and maximum 2,048).
	MaxProbes int
	// ProbePorts is the port range the easy side probes (default
	// 1024-65535).
	ProbePorts [2]uint16
	// Listen opens the hard side's extra sockets; nil disables birthday
	// probing on the hard side.
	Listen func() (PacketConn, error)
	// Rand chooses probe ports; nil seeds one from crypto/rand.
	Rand *rand.Rand
}

func (c Config) withDefaults(rtt time.Duration) Config {
	if c.Interval <= 0 {
		c.Interval = min(max(rtt/2, 10*time.Millisecond), 200*time.Millisecond)
	}
	if c.MaxPunches <= 0 {
		c.MaxPunches = 30
	}
	if c.DirectTimeout <= 0 {
		c.DirectTimeout = min(max(20*rtt, 2*time.Second), 10*time.Second)
	}
	if c.Linger <= 0 {
		c.Linger = min(max(10*c.Interval+rtt, 250*time.Millisecond), time.Second)
	}
	if c.EscalateAfter <= 0 {
		c.EscalateAfter = max(5*rtt, 250*time.Millisecond)
	}
	if c.HardSockets <= 0 || c.HardSockets > MaxHardSockets {
		c.HardSockets = MaxHardSockets
	}
	if c.ProbeRate <= 0 || c.ProbeRate > MaxProbeRate {
		c.ProbeRate = MaxProbeRate
	}
	if c.MaxProbes <= 0 || c.MaxProbes > MaxProbes {
		c.MaxProbes = MaxProbes
	}
	if c.ProbePorts[0] == 0 || c.ProbePorts[1] < c.ProbePorts[0] {
		c.ProbePorts = [2]uint16{1024, 65535}
	}
	if c.Rand == nil {
		var seed [16]byte
		_, _ = crand.Read(seed[:])
		c.Rand = rand.New(rand.NewPCG(binary.LittleEndian.Uint64(seed[:8]), binary.LittleEndian.Uint64(seed[8:])))
	}
	return c
}

// Result is one side's outcome of an attempt.
type Result struct {
	OK   bool
	Path Path
	// Remote is the peer endpoint that acknowledged our punch.
	Remote netip.AddrPort
	// Socket is the index of our socket that carries the path (0: the
	// main socket) and Conn that socket. An extra socket in Conn belongs to
	// the caller, who must close it.
	Socket int
	Conn   PacketConn
	// GotPunch and Acked: a punch of the peer reached us; our punch was
	// acknowledged.
	GotPunch, Acked bool
	// Sent counts punches and acks sent, Received valid packets of the
	// peer, Probes birthday probes, Sockets the sockets used (1 + extra).
	Sent, Received, Probes, Sockets int
	// FirstDirect is the time from Plan.Sync to the first authenticated
	// packet from the peer (0: none); Confirmed to both directions working.
	FirstDirect, Confirmed time.Duration
}

// ErrBothHard is returned when both sides are behind destination-dependent
// NATs and no direct path appeared: such pairs need a relay.
var ErrBothHard = errors.New("punch: both sides behind symmetric NATs; relay needed")

// ErrNoPath is returned when the attempt ended without a confirmed path.
var ErrNoPath = errors.New("punch: no direct path")

type target struct {
	addr  netip.AddrPort
	sock  int
	sent  int
	next  time.Time
	prflx bool
}

type event struct {
	sock int
	from netip.AddrPort
	n    int
	buf  [PacketSize]byte
}

type sockState struct {
	conn  PacketConn
	sent  int
	next  time.Time
	extra bool
}

// PunchUDP runs one UDP hole-punching attempt on conn as planned by
// Negotiate. It returns when both directions are confirmed (after a short
// linger that answers the peer's retransmissions), when the schedule is
// exhausted, or when ctx ends.
func PunchUDP(ctx context.Context, conn PacketConn, plan Plan, cfg Config) (Result, error) {
	if plan.Key == nil || (plan.Role != Initiator && plan.Role != Responder) {
		return Result{}, errors.New("punch: plan not negotiated")
	}
	cfg = cfg.withDefaults(plan.RTT)
	a := &attempt{plan: plan, cfg: cfg, role: plan.Role.flag(), events: make(chan event, eventQueue)}
	a.socks = []*sockState{{conn: conn}}
	defer a.stop()

	for _, c := range plan.Remote.UDP {
		a.addTarget(c, 0, false)
	}
	localHard, remoteHard := plan.Local.Hard, plan.Remote.Hard
	birthday := localHard != remoteHard && len(plan.Remote.UDP) > 0
	if birthday && localHard && cfg.Listen == nil {
		birthday = false
	}
	deadline := plan.Start.Add(cfg.DirectTimeout)
	escalateAt := time.Time{}
	if birthday {
		escalateAt = plan.Start.Add(cfg.EscalateAfter)
		probeTime := time.Duration(cfg.MaxProbes) * time.Second / time.Duration(cfg.ProbeRate)
		if end := escalateAt.Add(probeTime + max(2*time.Second, 4*plan.RTT)); end.After(deadline) {
			deadline = end
		}
	}

	// Wait for the agreed moment.
	if d := time.Until(plan.Start); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return a.res, ctx.Err()
		}
	}
	a.startReader(0)
	for i := range a.targets {
		a.targets[i].next = plan.Start
	}

	timer := time.NewTimer(0)
	defer timer.Stop()
	var lingerUntil, confirmedAt, lastPunch time.Time
	for {
		now := time.Now()
		if !lingerUntil.IsZero() && !now.Before(lingerUntil) {
			break
		}
		if now.After(deadline) && lingerUntil.IsZero() {
			break
		}
		if lingerUntil.IsZero() {
			if birthday && !a.escalated && !now.Before(escalateAt) {
				a.escalate(localHard)
			}
			a.sendDue(now)
		}
		next := deadline
		if !lingerUntil.IsZero() {
			next = lingerUntil
		} else {
			next = a.nextDue(next)
			if birthday && !a.escalated {
				next = minTime(next, escalateAt)
			}
		}
		timer.Reset(max(time.Until(next), 0))
		select {
		case <-ctx.Done():
			return a.finish(), ctx.Err()
		case ev := <-a.events:
			punched := a.handle(ev)
			switch {
			case a.res.GotPunch && a.res.Acked && lingerUntil.IsZero():
				a.res.Confirmed = time.Since(plan.Sync)
				confirmedAt = time.Now()
				lingerUntil = confirmedAt.Add(cfg.Linger)
			case punched && !lingerUntil.IsZero():
				// The peer still punches: it has not seen our ack yet.
				// Keep answering while it does (its gaps grow), within a
				// bound.
				now := time.Now()
				ext := max(cfg.Linger, 2*now.Sub(lastPunch))
				lingerUntil = minTime(now.Add(ext), confirmedAt.Add(maxLinger))
			}
			if punched {
				lastPunch = time.Now()
			}
		case <-timer.C:
		}
	}
	res := a.finish()
	if res.OK {
		return res, nil
	}
	if localHard && remoteHard {
		return res, ErrBothHard
	}
	return res, ErrNoPath
}

type attempt struct {
	plan    Plan
	cfg     Config
	role    Flags
	socks   []*sockState
	targets []target
	events  chan event
	seq     uint32
	res     Result

	escalated bool
	easy      bool // probing the hard side's ports
	probeAddr netip.Addr
	probed    []uint64 // bitset of probed ports
	nextProbe time.Time
	viaProbe  bool

	wg      sync.WaitGroup
	stopped bool
	buf     [PacketSize]byte
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func (a *attempt) addTarget(ap netip.AddrPort, sock int, prflx bool) bool {
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if !ap.IsValid() || ap.Port() == 0 {
		return false
	}
	for _, t := range a.targets {
		if t.addr == ap && t.sock == sock {
			return false
		}
	}
	if len(a.targets) >= maxTargets {
		return false
	}
	a.targets = append(a.targets, target{addr: ap, sock: sock, prflx: prflx, next: time.Now()})
	return true
}

func (a *attempt) write(sock int, p Packet, to netip.AddrPort) {
	b := a.plan.Key.Append(a.buf[:0], p)
	if _, err := a.socks[sock].conn.WriteTo(b, net.UDPAddrFromAddrPort(to)); err == nil {
		if p.Flags&FlagProbe != 0 && p.Type == TypePunch {
			a.res.Probes++
		} else {
			a.res.Sent++
		}
	}
}

func (a *attempt) punch(sock int, to netip.AddrPort, flags Flags) {
	a.seq++
	a.write(sock, Packet{Type: TypePunch, Flags: a.role | flags, Seq: a.seq, Socket: uint16(sock)}, to)
}

// gap returns the wait after the n-th punch to one target: Interval for the
// first 8, then doubling up to 1 s.
func (a *attempt) gap(n int) time.Duration {
	d := a.cfg.Interval
	for i := 8; i < n && d < time.Second; i++ {
		d *= 2
	}
	return min(d, max(time.Second, a.cfg.Interval))
}

func (a *attempt) sendDue(now time.Time) {
	for i := range a.targets {
		t := &a.targets[i]
		if t.sent >= a.cfg.MaxPunches || now.Before(t.next) {
			continue
		}
		a.punch(t.sock, t.addr, 0)
		t.sent++
		if a.res.GotPunch {
			// The peer is there and answering: no back-off until it
			// acknowledges (it lingers for a few intervals only).
			t.next = now.Add(a.cfg.Interval)
		} else {
			t.next = now.Add(a.gap(t.sent))
		}
	}
	if !a.escalated {
		return
	}
	// Hard side: every extra socket punches toward the easy side's first
	// candidate, a bounded number of times (the mapping must stay open
	// until a probe finds it).
	for i := 1; i < len(a.socks); i++ {
		s := a.socks[i]
		if s.sent >= maxExtraSends || now.Before(s.next) {
			continue
		}
		a.punch(i, a.plan.Remote.UDP[0], 0)
		s.sent++
		s.next = now.Add(max(a.gap(8), 2*time.Second))
	}
	// Easy side: random probes at the configured rate.
	if a.easy && !a.res.Acked {
		step := time.Second / time.Duration(a.cfg.ProbeRate)
		if now.Sub(a.nextProbe) > step {
			// Woken late (a busy machine): do not catch up with a burst,
			// the rate bound holds over any window.
			a.nextProbe = now
		}
		for a.res.Probes < a.cfg.MaxProbes && !now.Before(a.nextProbe) {
			port, ok := a.randomPort()
			if !ok {
				a.res.Probes = a.cfg.MaxProbes
				break
			}
			a.punch(0, netip.AddrPortFrom(a.probeAddr, port), FlagProbe)
			a.nextProbe = a.nextProbe.Add(step)
		}
	}
}

func (a *attempt) nextDue(limit time.Time) time.Time {
	next := limit
	for _, t := range a.targets {
		if t.sent < a.cfg.MaxPunches {
			next = minTime(next, t.next)
		}
	}
	if a.escalated {
		for _, s := range a.socks[1:] {
			if s.sent < maxExtraSends {
				next = minTime(next, s.next)
			}
		}
		if a.easy && !a.res.Acked && a.res.Probes < a.cfg.MaxProbes {
			next = minTime(next, a.nextProbe)
		}
	}
	return next
}

// randomPort draws a port of the probe range not probed yet.
func (a *attempt) randomPort() (uint16, bool) {
	lo, hi := int(a.cfg.ProbePorts[0]), int(a.cfg.ProbePorts[1])
	n := hi - lo + 1
	if a.res.Probes >= n {
		return 0, false
	}
	for {
		p := lo + a.cfg.Rand.IntN(n)
		w, bit := p/64, uint64(1)<<(p%64)
		if a.probed[w]&bit == 0 {
			a.probed[w] |= bit
			return uint16(p), true
		}
	}
}

// escalate starts birthday probing: the hard side opens its extra sockets,
// the easy side starts probing the hard side's address.
func (a *attempt) escalate(localHard bool) {
	a.escalated = true
	now := time.Now()
	if !localHard {
		a.easy = true
		a.probeAddr = a.plan.Remote.UDP[0].Addr().Unmap()
		a.probed = make([]uint64, 65536/64)
		a.nextProbe = now
		return
	}
	for i := 1; i < a.cfg.HardSockets; i++ {
		c, err := a.cfg.Listen()
		if err != nil {
			break // fewer sockets: lower odds, still bounded
		}
		a.socks = append(a.socks, &sockState{conn: c, extra: true, next: now})
		a.startReader(len(a.socks) - 1)
	}
}

func (a *attempt) startReader(i int) {
	c := a.socks[i].conn
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, net.ErrClosed) {
					return
				}
				continue // e.g. an ICMP error reported on the socket
			}
			if !IsPunch(buf[:n]) {
				continue
			}
			ua, ok := from.(*net.UDPAddr)
			if !ok {
				continue
			}
			ev := event{sock: i, from: ua.AddrPort(), n: n}
			copy(ev.buf[:], buf[:n])
			select {
			case a.events <- ev:
			default: // bounded queue: drop under a flood
			}
		}
	}()
}

// handle processes one received packet and reports whether it was a valid
// punch of the peer.
func (a *attempt) handle(ev event) bool {
	p, err := a.plan.Key.Open(ev.buf[:ev.n])
	if err != nil || p.Flags&FlagInitiator == a.role {
		return false // stray, forged, another attempt's, or our own reflected
	}
	from := netip.AddrPortFrom(ev.from.Addr().Unmap(), ev.from.Port())
	a.res.Received++
	if a.res.FirstDirect == 0 {
		a.res.FirstDirect = time.Since(a.plan.Sync)
	}
	switch p.Type {
	case TypePunch:
		if !a.res.GotPunch {
			a.res.GotPunch = true
			if p.Flags&FlagProbe != 0 || ev.sock > 0 {
				a.viaProbe = true
			}
			// The peer is answering now: drop the back-off at once (a
			// punch scheduled after a long gap would come after the peer
			// stopped lingering, and our punch would never be acked).
			now := time.Now()
			for i := range a.targets {
				a.targets[i].next = minTime(a.targets[i].next, now)
			}
		}
		a.write(ev.sock, Packet{Type: TypeAck, Flags: a.role | p.Flags&FlagProbe, Seq: p.Seq, Socket: uint16(ev.sock)}, from)
		if a.addTarget(from, ev.sock, true) && !a.res.Acked {
			t := &a.targets[len(a.targets)-1]
			a.punch(t.sock, t.addr, 0)
			t.sent++
			t.next = time.Now().Add(a.gap(t.sent))
		}
	case TypeAck:
		if !a.res.Acked {
			a.res.Acked = true
			a.res.Remote = from
			a.res.Socket = ev.sock
			if p.Flags&FlagProbe != 0 || ev.sock > 0 {
				a.viaProbe = true
			}
		}
	}
	return p.Type == TypePunch
}

func (a *attempt) finish() Result {
	a.stop()
	r := a.res
	r.OK = r.GotPunch && r.Acked
	r.Sockets = len(a.socks)
	if r.OK {
		r.Path = PathDirect
		if a.escalated && a.viaProbe {
			r.Path = PathBirthday
		}
		r.Conn = a.socks[r.Socket].conn
	}
	for i, s := range a.socks {
		if s.extra && !(r.OK && i == r.Socket) {
			if c, ok := s.conn.(interface{ Close() error }); ok {
				_ = c.Close()
			}
		}
	}
	a.socks = a.socks[:1]
	return r
}

// stop ends the readers and clears the main socket's deadline.
func (a *attempt) stop() {
	if a.stopped {
		return
	}
	a.stopped = true
	for _, s := range a.socks {
		_ = s.conn.SetReadDeadline(time.Unix(1, 0))
	}
	a.wg.Wait()
	_ = a.socks[0].conn.SetReadDeadline(time.Time{})
}

// String summarises a result for logs.
func (r Result) String() string {
	if !r.OK {
		return fmt.Sprintf("no path (punch in: %v, ack: %v, %d sent, %d received, %d probes, %d sockets)", r.GotPunch, r.Acked, r.Sent, r.Received, r.Probes, r.Sockets)
	}
	return fmt.Sprintf("%s via %v (socket %d) first packet after %v, confirmed after %v, %d sent, %d received, %d probes",
		r.Path, r.Remote, r.Socket, r.FirstDirect, r.Confirmed, r.Sent, r.Received, r.Probes)
}
