package natlab

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// ErrNoReply means a probe got no answer within its retries.
var ErrNoReply = errors.New("natlab probe: no reply")

// ProbeTiming controls how long a client waits for an answer that may never
// come (a filtered reply): Tries sends, each followed by a Wait.
type ProbeTiming struct {
	Wait  time.Duration
	Tries int
}

// DefaultTiming suits the zero-latency lab: a filtered reply is declared
// absent after 3 × 150 ms.
var DefaultTiming = ProbeTiming{Wait: 150 * time.Millisecond, Tries: 3}

// patient is the timing for replies that must come (mapping queries): more
// tries, so a loaded machine does not turn a slow reply into a failure.
func (t ProbeTiming) patient() ProbeTiming {
	t = t.norm()
	t.Tries = max(t.Tries, 8)
	return t
}

func (t ProbeTiming) norm() ProbeTiming {
	if t.Wait <= 0 {
		t.Wait = DefaultTiming.Wait
	}
	if t.Tries <= 0 {
		t.Tries = DefaultTiming.Tries
	}
	return t
}

func newID() (id [8]byte) {
	_, _ = rand.Read(id[:])
	return id
}

func listenUDP() (*net.UDPConn, error) {
	return net.ListenUDP("udp4", &net.UDPAddr{})
}

// localEndpoint returns the address the kernel would use toward dst with c's port.
func localEndpoint(c *net.UDPConn, dst netip.AddrPort) netip.AddrPort {
	port := c.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	probe, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst))
	if err != nil {
		return netip.AddrPortFrom(netip.IPv4Unspecified(), port)
	}
	defer probe.Close()
	return netip.AddrPortFrom(probe.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), port)
}

// Reply is a probe server answer and where it really came from.
type Reply struct {
	Observed  netip.AddrPort // our address as the server saw it
	Responder netip.AddrPort // the server socket that claims to answer
	From      netip.AddrPort // the packet's actual source
}

// Query sends a probe request from c to dst and waits for the matching reply.
// delay asks the server to hold the reply (≤ 10 s); the first wait is extended
// by it.
func Query(ctx context.Context, c *net.UDPConn, dst netip.AddrPort, flags Flags, delay time.Duration, tm ProbeTiming) (Reply, error) {
	tm = tm.norm()
	if delay < 0 || delay > MaxReplyDelayMillis*time.Millisecond {
		return Reply{}, fmt.Errorf("natlab probe: delay %v out of range", delay)
	}
	req := Message{Kind: KindRequest, ID: newID(), Flags: flags, DelayMillis: uint16(delay / time.Millisecond)}
	pkt, err := req.Append(nil)
	if err != nil {
		return Reply{}, err
	}
	buf := make([]byte, 1500)
	for try := range tm.Tries {
		if _, err := c.WriteToUDPAddrPort(pkt, dst); err != nil {
			return Reply{}, fmt.Errorf("natlab probe: send to %v: %w", dst, err)
		}
		wait := tm.Wait
		if try == 0 {
			wait += delay
		}
		deadline := time.Now().Add(wait)
		for {
			if err := ctx.Err(); err != nil {
				return Reply{}, err
			}
			_ = c.SetReadDeadline(deadline)
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return Reply{}, fmt.Errorf("natlab probe: read: %w", err)
			}
			m, err := Decode(buf[:n])
			if err != nil || m.Kind != KindResponse || m.ID != req.ID {
				continue
			}
			_ = c.SetReadDeadline(time.Time{})
			return Reply{Observed: m.Observed, Responder: m.Responder,
				From: netip.AddrPortFrom(from.Addr().Unmap(), from.Port())}, nil
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	return Reply{}, ErrNoReply
}

// ClassifyResult is what a host learns about the NATs in front of it.
type ClassifyResult struct {
	Local         netip.AddrPort `json:"local"`
	Mapped        netip.AddrPort `json:"mapped"`          // test I: primary address, primary port
	MappedAltIP   netip.AddrPort `json:"mapped_alt_ip"`   // test II: alternate address, primary port
	MappedAltBoth netip.AddrPort `json:"mapped_alt_both"` // test III: alternate address and port
	Mapping       Mapping        `json:"mapping"`
	Filtering     Filtering      `json:"filtering"`
	Hairpin       bool           `json:"hairpin"`
	HairpinFrom   netip.AddrPort `json:"hairpin_from,omitzero"` // source seen on the hairpinned packet
	Millis        int64          `json:"millis"`
}

// Behaviour returns the classified behaviour.
func (r ClassifyResult) Behaviour() Behaviour {
	return Behaviour{Mapping: r.Mapping, Filtering: r.Filtering, Hairpin: r.Hairpin}
}

// Classify runs RFC 5780-style mapping (§4.3), filtering (§4.4) and
// hairpinning (§4.5) tests against a probe server whose primary endpoint is
// primary and whose alternate address and port are those of alt.
func Classify(ctx context.Context, primary, alt netip.AddrPort, tm ProbeTiming) (ClassifyResult, error) {
	t0 := time.Now()
	var r ClassifyResult
	altIP := netip.AddrPortFrom(alt.Addr(), primary.Port())

	// Mapping: one socket, three destinations.
	m, err := listenUDP()
	if err != nil {
		return r, err
	}
	defer m.Close()
	r.Local = localEndpoint(m, primary)
	rep, err := Query(ctx, m, primary, 0, 0, tm.patient())
	if err != nil {
		return r, fmt.Errorf("mapping test I (%v): %w", primary, err)
	}
	r.Mapped = rep.Observed
	if rep, err = Query(ctx, m, altIP, 0, 0, tm.patient()); err != nil {
		return r, fmt.Errorf("mapping test II (%v): %w", altIP, err)
	}
	r.MappedAltIP = rep.Observed
	if rep, err = Query(ctx, m, alt, 0, 0, tm.patient()); err != nil {
		return r, fmt.Errorf("mapping test III (%v): %w", alt, err)
	}
	r.MappedAltBoth = rep.Observed
	switch {
	case r.Mapped == r.Local && r.MappedAltIP == r.Local:
		r.Mapping = MappingNone
	case r.Mapped == r.MappedAltIP && r.MappedAltIP == r.MappedAltBoth:
		r.Mapping = EIM
	case r.Mapped != r.MappedAltIP && r.MappedAltIP == r.MappedAltBoth:
		r.Mapping = ADM
	default:
		r.Mapping = APDM
	}

	// Filtering: a fresh socket that has only talked to the primary endpoint.
	f, err := listenUDP()
	if err != nil {
		return r, err
	}
	defer f.Close()
	if _, err := Query(ctx, f, primary, 0, 0, tm.patient()); err != nil {
		return r, fmt.Errorf("filtering test I: %w", err)
	}
	switch _, err := Query(ctx, f, primary, FlagChangeIP|FlagChangePort, 0, tm); {
	case err == nil:
		r.Filtering = EIF
	case !errors.Is(err, ErrNoReply):
		return r, fmt.Errorf("filtering test II: %w", err)
	default:
		switch _, err := Query(ctx, f, primary, FlagChangePort, 0, tm); {
		case err == nil:
			r.Filtering = ADF
		case errors.Is(err, ErrNoReply):
			r.Filtering = APDF
		default:
			return r, fmt.Errorf("filtering test III: %w", err)
		}
	}

	// Hairpinning: a second socket sends to the first one's mapped address.
	if r.HairpinFrom, err = hairpin(ctx, m, r.Mapped, primary, tm); err == nil {
		r.Hairpin = true
	} else if !errors.Is(err, ErrNoReply) {
		return r, fmt.Errorf("hairpin test: %w", err)
	}
	r.Millis = time.Since(t0).Milliseconds()
	return r, nil
}

func hairpin(ctx context.Context, m *net.UDPConn, mapped, primary netip.AddrPort, tm ProbeTiming) (netip.AddrPort, error) {
	tm = tm.norm()
	h, err := listenUDP()
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer h.Close()
	// Give the second socket its own mapping first, as a real peer would have.
	if _, err := Query(ctx, h, primary, 0, 0, tm.patient()); err != nil {
		return netip.AddrPort{}, err
	}
	id := newID()
	pkt, _ := Message{Kind: KindPunch, ID: id}.Append(nil)
	buf := make([]byte, 1500)
	defer m.SetReadDeadline(time.Time{})
	for range tm.Tries {
		if _, err := h.WriteToUDPAddrPort(pkt, mapped); err != nil {
			return netip.AddrPort{}, err
		}
		_ = m.SetReadDeadline(time.Now().Add(tm.Wait))
		for {
			n, from, err := m.ReadFromUDPAddrPort(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return netip.AddrPort{}, err
			}
			if msg, err := Decode(buf[:n]); err == nil && msg.Kind == KindPunch && msg.ID == id {
				return netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), nil
			}
		}
		if ctx.Err() != nil {
			return netip.AddrPort{}, ctx.Err()
		}
	}
	return netip.AddrPort{}, ErrNoReply
}

// PunchResult is one side's view of a hole-punching attempt.
type PunchResult struct {
	OK       bool           `json:"ok"` // our punch was acknowledged by the peer
	GotPunch bool           `json:"got_punch"`
	Mapped   netip.AddrPort `json:"mapped"`
	Peer     netip.AddrPort `json:"peer"`            // advertised peer address
	Remote   netip.AddrPort `json:"remote,omitzero"` // where the ack came from
	Sent     int            `json:"sent"`
	Millis   int64          `json:"millis"` // from start of punching to the ack
}

// PunchSession is one side of simultaneous-send UDP hole punching: it learns
// its mapped address from the probe server, then (once told the peer's mapped
// address) sends punches every interval to the advertised address and to any
// address a punch arrived from (the ICE peer-reflexive rule), and acknowledges
// every punch to its observed source.
type PunchSession struct {
	conn   *net.UDPConn
	id     [8]byte
	Mapped netip.AddrPort
}

// NewPunchSession binds a socket and learns its mapping from the probe server.
func NewPunchSession(ctx context.Context, server netip.AddrPort, tm ProbeTiming) (*PunchSession, error) {
	c, err := listenUDP()
	if err != nil {
		return nil, err
	}
	rep, err := Query(ctx, c, server, 0, 0, tm.patient())
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("learn mapped address: %w", err)
	}
	return &PunchSession{conn: c, id: newID(), Mapped: rep.Observed}, nil
}

// Close releases the socket.
func (s *PunchSession) Close() error { return s.conn.Close() }

// Punch runs until both directions are confirmed (our punch acknowledged and
// a punch from the peer received), then lingers briefly to answer the peer's
// retransmissions; or until timeout.
func (s *PunchSession) Punch(ctx context.Context, peer netip.AddrPort, interval, timeout time.Duration) PunchResult {
	res := PunchResult{Mapped: s.Mapped, Peer: peer}
	punch, _ := Message{Kind: KindPunch, ID: s.id}.Append(nil)
	targets := []netip.AddrPort{peer}
	start := time.Now()
	deadline := start.Add(timeout)
	var lingerUntil time.Time
	nextSend := start
	buf := make([]byte, 1500)
	for {
		now := time.Now()
		if !lingerUntil.IsZero() && now.After(lingerUntil) || now.After(deadline) || ctx.Err() != nil {
			break
		}
		if now.After(nextSend) || now.Equal(nextSend) {
			if lingerUntil.IsZero() {
				for _, t := range targets {
					if _, err := s.conn.WriteToUDPAddrPort(punch, t); err == nil {
						res.Sent++
					}
				}
			}
			nextSend = now.Add(interval)
		}
		wake := nextSend
		if !lingerUntil.IsZero() && lingerUntil.Before(wake) {
			wake = lingerUntil
		}
		_ = s.conn.SetReadDeadline(wake)
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			continue // deadline: loop to send again
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		m, err := Decode(buf[:n])
		if err != nil {
			continue
		}
		switch m.Kind {
		case KindPunch:
			res.GotPunch = true
			ack, _ := Message{Kind: KindPunchAck, ID: m.ID}.Append(nil)
			_, _ = s.conn.WriteToUDPAddrPort(ack, from)
			if len(targets) < 4 && !containsAddrPort(targets, from) {
				targets = append(targets, from)
			}
		case KindPunchAck:
			if m.ID == s.id && !res.OK {
				res.OK = true
				res.Remote = from
				res.Millis = time.Since(start).Milliseconds()
			}
		}
		if res.OK && res.GotPunch && lingerUntil.IsZero() {
			lingerUntil = time.Now().Add(150 * time.Millisecond)
		}
	}
	return res
}

func containsAddrPort(s []netip.AddrPort, a netip.AddrPort) bool {
	for _, x := range s {
		if x == a {
			return true
		}
	}
	return false
}

// LossResult counts probe requests sent and replies received.
type LossResult struct {
	Sent     int `json:"sent"`
	Received int `json:"received"`
}

// MeasureLoss sends count requests (one every interval, each with its own id)
// and counts distinct replies arriving until wait after the last send.
func MeasureLoss(ctx context.Context, server netip.AddrPort, count int, interval, wait time.Duration) (LossResult, error) {
	var r LossResult
	if count <= 0 || count > 1_000_000 {
		return r, fmt.Errorf("loss count %d out of range", count)
	}
	c, err := listenUDP()
	if err != nil {
		return r, err
	}
	defer c.Close()
	seen := make(map[uint64]bool, count)
	received := 0 // owned by the reader until done is closed
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			m, err := Decode(buf[:n])
			if err != nil || m.Kind != KindResponse {
				continue
			}
			k := binary.BigEndian.Uint64(m.ID[:])
			if k < uint64(count) && !seen[k] {
				seen[k] = true
				received++
			}
		}
	}()
	for i := range count {
		var id [8]byte
		binary.BigEndian.PutUint64(id[:], uint64(i))
		pkt, _ := Message{Kind: KindRequest, ID: id}.Append(nil)
		if _, err := c.WriteToUDPAddrPort(pkt, server); err != nil {
			return r, err
		}
		r.Sent++
		select {
		case <-time.After(interval):
		case <-ctx.Done():
			return r, ctx.Err()
		}
	}
	select {
	case <-time.After(wait):
	case <-ctx.Done():
	}
	_ = c.SetReadDeadline(time.Now())
	<-done
	r.Received = received
	return r, ctx.Err()
}

// BandwidthResult is one TCP upload to the probe server's sink.
type BandwidthResult struct {
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	Kbit    float64 `json:"kbit"`
}

// MeasureUpload sends n bytes over TCP to the probe server sink and times it
// until the sink confirms the byte count.
func MeasureUpload(ctx context.Context, server netip.AddrPort, n int64) (BandwidthResult, error) {
	var r BandwidthResult
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp4", server.String())
	if err != nil {
		return r, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	start := time.Now()
	chunk := make([]byte, 32<<10)
	for left := n; left > 0; {
		k := min(left, int64(len(chunk)))
		if _, err := conn.Write(chunk[:k]); err != nil {
			return r, err
		}
		left -= k
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		return r, err
	}
	var cnt [8]byte
	if _, err := io.ReadFull(conn, cnt[:]); err != nil {
		return r, fmt.Errorf("sink count: %w", err)
	}
	r.Seconds = time.Since(start).Seconds()
	r.Bytes = int64(binary.BigEndian.Uint64(cnt[:]))
	if r.Bytes != n {
		return r, fmt.Errorf("sink received %d of %d bytes", r.Bytes, n)
	}
	r.Kbit = float64(r.Bytes) * 8 / 1000 / r.Seconds
	return r, nil
}
