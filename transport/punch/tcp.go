package punch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"
)

// ListenTCP listens on local with SO_REUSEADDR and SO_REUSEPORT, so that the
// same port can also connect out (to learn its mapping, then to the peer).
func ListenTCP(ctx context.Context, local netip.AddrPort) (*net.TCPListener, error) {
	lc := net.ListenConfig{Control: reuseControl}
	l, err := lc.Listen(ctx, "tcp", local.String())
	if err != nil {
		return nil, fmt.Errorf("punch: listen tcp %v: %w", local, err)
	}
	return l.(*net.TCPListener), nil
}

// DialerFrom returns a dialer whose connections leave from local with
// SO_REUSEADDR and SO_REUSEPORT set (alongside a listener on the same port).
func DialerFrom(local netip.AddrPort) *net.Dialer {
	return &net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(local), Control: reuseControl}
}

// maxHelloChecks bounds the accepted connections whose hello is checked
// concurrently during one attempt.
const maxHelloChecks = 16

// TCPConfig tunes PunchTCP; zero values take defaults from the plan's RTT.
type TCPConfig struct {
	// Timeout ends the attempt (default 20 RTT within [4 s, 10 s] after
	// Start: the kernel sends SYNs at 0, 1 and 3 s, and each lost SYN costs
	// a retransmission).
	Timeout time.Duration
	// RetryAfter is the pause after a connect that failed outright (reset,
	// refused) before connecting again from the same port (default 4 RTT,
	// at least 250 ms). A pending connect is never abandoned: closing a
	// socket in SYN-SENT keeps its 4-tuple busy for a while (the next
	// connect fails with EADDRNOTAVAIL) and turns the peer's late SYN-ACK
	// into a reset, which measured worse in the NAT lab.
	RetryAfter time.Duration
}

// TCPResult is one side's outcome of a TCP attempt.
type TCPResult struct {
	OK     bool
	Remote netip.AddrPort
	// Accepted: the connection came in on the listener (else our connect
	// completed, possibly by simultaneous open).
	Accepted bool
	// Dials counts connect attempts, Accepts connections accepted,
	// HelloFails connections whose hello did not verify; DialErr is the
	// last connect error (diagnostics).
	Dials, Accepts, HelloFails int
	DialErr                    string
	// FirstDirect is the time from Plan.Sync until the peer's hello was
	// verified on a direct connection.
	FirstDirect time.Duration
}

// PunchTCP runs TCP simultaneous open: at Plan.Start it connects from the
// listener's port to the peer's TCP candidates (retrying) while accepting on
// the listener; on every connection both sides send an authenticated hello
// (a punch packet) and the first connection whose hello verifies wins. The
// listener stays open (the caller owns it).
func PunchTCP(ctx context.Context, ln *net.TCPListener, plan Plan, cfg TCPConfig) (net.Conn, TCPResult, error) {
	var res TCPResult
	if plan.Key == nil {
		return nil, res, errors.New("punch: plan not negotiated")
	}
	if len(plan.Remote.TCP) == 0 {
		return nil, res, errors.New("punch: peer offered no TCP candidate")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = min(max(20*plan.RTT, 4*time.Second), 10*time.Second)
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = max(4*plan.RTT, 250*time.Millisecond)
	}
	local := ln.Addr().(*net.TCPAddr).AddrPort()
	ctx, cancel := context.WithDeadline(ctx, plan.Start.Add(cfg.Timeout))
	defer cancel()
	if d := time.Until(plan.Start); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, res, ctx.Err()
		}
	}

	type won struct {
		c        net.Conn
		accepted bool
	}
	wins := make(chan won, 1)
	var wg sync.WaitGroup
	var mu sync.Mutex
	dials := 0
	var conns []net.Conn // every connection that is not the winner gets closed
	track := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if ctx.Err() != nil {
			return false
		}
		conns = append(conns, c)
		return true
	}
	tryConn := func(c net.Conn, accepted bool) {
		defer wg.Done()
		if !track(c) {
			c.Close()
			return
		}
		if err := hello(ctx, c, plan); err != nil {
			c.Close()
			mu.Lock()
			res.HelloFails++
			mu.Unlock()
			return
		}
		select {
		case wins <- won{c, accepted}:
		default:
			c.Close()
		}
	}

	// Accept loop.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
					return
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					return
				}
				continue
			}
			mu.Lock()
			res.Accepts++
			busy := res.Accepts-res.HelloFails > maxHelloChecks
			mu.Unlock()
			if busy {
				c.Close() // bounded work per attempt, whoever connects
				continue
			}
			wg.Add(1)
			go tryConn(c, true)
		}
	}()
	// Dial loops, one per candidate.
	for _, rc := range plan.Remote.TCP[:min(len(plan.Remote.TCP), 2)] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := DialerFrom(local)
			for ctx.Err() == nil {
				mu.Lock()
				dials++
				mu.Unlock()
				c, err := d.DialContext(ctx, "tcp", rc.String())
				next := time.Now().Add(cfg.RetryAfter)
				if err == nil {
					wg.Add(1)
					go tryConn(c, false)
					return
				}
				mu.Lock()
				res.DialErr = err.Error()
				mu.Unlock()
				t := time.NewTimer(max(time.Until(next), 0))
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
				}
			}
		}()
	}
	// Stop the accept loop when the attempt ends.
	stop := context.AfterFunc(ctx, func() { _ = ln.SetDeadline(time.Unix(1, 0)) })

	var w won
	var err error
	select {
	case w = <-wins:
	case <-ctx.Done():
		err = ctx.Err()
	}
	cancel()
	stop()
	_ = ln.SetDeadline(time.Unix(1, 0))
	mu.Lock()
	for _, c := range conns {
		if c != w.c {
			c.Close()
		}
	}
	mu.Unlock()
	wg.Wait()
	_ = ln.SetDeadline(time.Time{})
	mu.Lock()
	res.Dials = dials
	mu.Unlock()
	if w.c == nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = ErrNoPath
		}
		return nil, res, err
	}
	_ = w.c.SetDeadline(time.Time{})
	res.OK = true
	res.Accepted = w.accepted
	res.Remote = w.c.RemoteAddr().(*net.TCPAddr).AddrPort()
	res.FirstDirect = time.Since(plan.Sync)
	return w.c, res, nil
}

// hello writes our authenticated hello on c and verifies the peer's.
func hello(ctx context.Context, c net.Conn, plan Plan) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	out := plan.Key.Append(nil, Packet{Type: TypePunch, Flags: plan.Role.flag(), Seq: 1})
	if _, err := c.Write(out); err != nil {
		return err
	}
	var in [PacketSize]byte
	if _, err := io.ReadFull(c, in[:]); err != nil {
		return err
	}
	p, err := plan.Key.Open(in[:])
	if err != nil {
		return err
	}
	if p.Type != TypePunch || p.Flags&FlagInitiator == plan.Role.flag() {
		return errors.New("punch: unexpected hello")
	}
	return nil
}
