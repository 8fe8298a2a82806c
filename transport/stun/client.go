package stun

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	pstun "github.com/pion/stun/v3"
)

// Sender sends one datagram. *udpmux.Mux is one; so is a Conn.
type Sender interface {
	WriteTo(pkt []byte, to netip.AddrPort) error
}

// Timing is a transaction's retransmission schedule: the request is sent
// Tries times, waiting RTO, 2·RTO, 4·RTO... for an answer (RFC 8489 §6.2.1,
// with a shorter RTO than its 500 ms default: a node classifies at start
// and the filtering tests must wait out every missing answer).
type Timing struct {
	RTO   time.Duration
	Tries int
}

// DefaultTiming gives up after 1.4 s (200 + 400 + 800 ms).
var DefaultTiming = Timing{RTO: 200 * time.Millisecond, Tries: 3}

// MaxPending bounds the transactions a Client has in flight.
const MaxPending = 64

// ErrTimeout is returned when a transaction got no answer.
var ErrTimeout = errors.New("stun: no answer")

// ErrBusy is returned when MaxPending transactions are in flight.
var ErrBusy = errors.New("stun: too many transactions in flight")

// Answer is a Response and where it came from.
type Answer struct {
	Response
	From netip.AddrPort
}

// Client runs Binding transactions over a Sender. Whoever reads the socket
// passes every datagram to Deliver. Safe for concurrent use.
type Client struct {
	send    Sender
	Timing  Timing
	mu      sync.Mutex
	pending map[[pstun.TransactionIDSize]byte]chan Answer
}

// NewClient returns a client sending with s.
func NewClient(s Sender) *Client {
	return &Client{send: s, Timing: DefaultTiming, pending: map[[pstun.TransactionIDSize]byte]chan Answer{}}
}

// Deliver hands the client a received datagram; it reports whether the
// datagram answered one of its transactions. Answers are matched by their
// 96-bit random transaction id alone, not by source: RFC 5780 answers come
// from the server's other address.
func (c *Client) Deliver(pkt []byte, from netip.AddrPort) bool {
	if !IsResponse(pkt) {
		return false
	}
	r, err := ParseResponse(pkt)
	if err != nil {
		return false
	}
	c.mu.Lock()
	ch, ok := c.pending[r.TxID]
	if ok {
		delete(c.pending, r.TxID)
	}
	c.mu.Unlock()
	if ok {
		ch <- Answer{Response: r, From: from} // buffered, one answer per id
	}
	return ok
}

// Binding asks server for this socket's mapped address, with CHANGE-REQUEST
// flags change (0 for a plain RFC 5389 Binding). An error response from the
// server is returned as an Answer with ErrorCode set and a nil error.
func (c *Client) Binding(ctx context.Context, server netip.AddrPort, change Change) (Answer, error) {
	tx := pstun.NewTransactionID()
	req, err := NewRequest(tx, change, PaddedRequest)
	if err != nil {
		return Answer{}, err
	}
	ch := make(chan Answer, 1)
	c.mu.Lock()
	if len(c.pending) >= MaxPending {
		c.mu.Unlock()
		return Answer{}, ErrBusy
	}
	c.pending[tx] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, tx)
		c.mu.Unlock()
	}()
	tm := c.Timing
	if tm.RTO <= 0 || tm.Tries <= 0 {
		tm = DefaultTiming
	}
	wait := tm.RTO
	for range tm.Tries {
		if err := c.send.WriteTo(req, server); err != nil {
			return Answer{}, fmt.Errorf("stun: send to %s: %w", server, err)
		}
		t := time.NewTimer(wait)
		select {
		case a := <-ch:
			t.Stop()
			return a, nil
		case <-ctx.Done():
			t.Stop()
			return Answer{}, ctx.Err()
		case <-t.C:
		}
		wait *= 2
	}
	return Answer{}, fmt.Errorf("%w from %s after %d tries", ErrTimeout, server, tm.Tries)
}

// Conn is a Client on a UDP socket of its own (a command line probe, or the
// second socket of the filtering tests).
type Conn struct {
	*Client
	c    *net.UDPConn
	done chan struct{}
}

// Listen opens a UDP socket on laddr ("udp4", "127.0.0.1:0"...) and reads
// answers from it until Close.
func Listen(network, laddr string) (*Conn, error) {
	ua, err := net.ResolveUDPAddr(network, laddr)
	if err != nil {
		return nil, fmt.Errorf("stun: resolve %s: %w", laddr, err)
	}
	uc, err := net.ListenUDP(network, ua)
	if err != nil {
		return nil, fmt.Errorf("stun: listen: %w", err)
	}
	c := &Conn{c: uc, done: make(chan struct{})}
	c.Client = NewClient(c)
	go func() {
		defer close(c.done)
		buf := make([]byte, MaxMessage+1)
		for {
			n, from, err := uc.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			c.Deliver(buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port()))
		}
	}()
	return c, nil
}

// WriteTo sends a datagram from the socket.
func (c *Conn) WriteTo(pkt []byte, to netip.AddrPort) error {
	_, err := c.c.WriteToUDPAddrPort(pkt, to)
	return err
}

// LocalAddr is the socket's address.
func (c *Conn) LocalAddr() netip.AddrPort {
	return c.c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Close closes the socket and waits for the reader.
func (c *Conn) Close() error {
	err := c.c.Close()
	<-c.done
	return err
}
