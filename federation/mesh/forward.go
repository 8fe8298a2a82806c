package mesh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/relay/tunnel"
)

// forwardVersion opens every forwarded stream:
//
//	version u8 (=1) | node id (32 bytes) | tunnel.Header
//
// The receiving supernode opens a stream on the node's tunnel with the
// same tunnel.Header and relays the two streams; it never forwards again,
// so a stream crosses at most one mesh hop.
const forwardVersion = 1

// ErrNoHolder is returned when no live supernode holds the node's tunnel.
var ErrNoHolder = errors.New("mesh: no live supernode holds the node's tunnel")

// AppendForwardHeader encodes the header of a forwarded stream.
func AppendForwardHeader(dst []byte, id identity.ID, h tunnel.Header) ([]byte, error) {
	dst = append(dst, forwardVersion)
	dst = append(dst, id[:]...)
	return h.AppendBinary(dst)
}

// ReadForwardHeader decodes the header of a forwarded stream from r.
func ReadForwardHeader(r io.Reader) (identity.ID, tunnel.Header, error) {
	var b [1 + 32]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return identity.ID{}, tunnel.Header{}, fmt.Errorf("mesh: forward header: %w", err)
	}
	if b[0] != forwardVersion {
		return identity.ID{}, tunnel.Header{}, fmt.Errorf("mesh: forward header version %d", b[0])
	}
	var id identity.ID
	copy(id[:], b[1:])
	h, err := tunnel.ReadHeader(r)
	return id, h, err
}

// Has reports whether node id's tunnel is here or on a live peer.
func (m *Mesh) Has(id identity.ID) bool {
	if m.o.Tunnels != nil && m.o.Tunnels.Has(id) {
		return true
	}
	return len(m.holders(id)) > 0
}

// Dial opens a visitor stream to service on node id: on its tunnel here
// when it has one, else forwarded over the mesh to a live supernode that
// holds it. It implements sniproxy.Tunnels.
func (m *Mesh) Dial(ctx context.Context, id identity.ID, service string, visitor net.Addr) (net.Conn, error) {
	if m.o.Tunnels != nil && m.o.Tunnels.Has(id) {
		return m.o.Tunnels.Dial(ctx, id, service, visitor)
	}
	h := tunnel.Header{Service: service}
	if a, ok := visitor.(*net.TCPAddr); ok {
		ap := a.AddrPort()
		h.Visitor = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	hdr, err := AppendForwardHeader(make([]byte, 0, 1+32+tunnel.MaxHeaderLen), id, h)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, conn := range m.holders(id) {
		st, err := conn.OpenStreamSync(ctx)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if _, err := st.Write(hdr); err != nil {
			st.CancelWrite(0)
			st.CancelRead(0)
			errs = append(errs, err)
			continue
		}
		m.Forwarded.Add(1)
		return &streamConn{st: st, conn: conn}, nil
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("mesh: forward: %w", errors.Join(errs...))
	}
	return nil, ErrNoHolder
}

// acceptForwards serves the streams a peer forwards here.
func (m *Mesh) acceptForwards(conn *quic.Conn) {
	defer m.wg.Done()
	for {
		st, err := conn.AcceptStream(conn.Context())
		if err != nil {
			return
		}
		m.wg.Add(1)
		go m.serveForward(conn, st)
	}
}

func (m *Mesh) serveForward(conn *quic.Conn, st *quic.Stream) {
	defer m.wg.Done()
	abort := func() {
		st.CancelRead(1)
		st.CancelWrite(1)
	}
	_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
	id, h, err := ReadForwardHeader(st)
	if err != nil || m.o.Tunnels == nil {
		abort()
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	var visitor net.Addr
	if h.Visitor.IsValid() {
		visitor = net.TCPAddrFromAddrPort(h.Visitor)
	}
	ctx, cancel := context.WithTimeout(conn.Context(), 5*time.Second)
	nc, err := m.o.Tunnels.Dial(ctx, id, h.Service, visitor) // local only: one hop
	cancel()
	if err != nil {
		m.log.Debug("mesh: forwarded stream for a node without a tunnel here", "node", id, "err", err)
		abort()
		return
	}
	m.Served.Add(1)
	stop := context.AfterFunc(conn.Context(), func() { nc.Close(); abort() })
	defer stop()
	pipe(nc, st)
}

type closeWriter interface{ CloseWrite() error }

// pipe relays nc and st both ways, passing each direction's end on as a
// half-close, and closes both when done.
func pipe(nc net.Conn, st *quic.Stream) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := io.Copy(st, nc); err != nil {
			st.CancelWrite(1)
			return
		}
		st.Close()
	}()
	_, err := io.Copy(nc, st)
	if err != nil {
		st.CancelRead(1)
		nc.Close()
	} else if cw, ok := nc.(closeWriter); ok {
		cw.CloseWrite()
	}
	wg.Wait()
	nc.Close()
}

// streamConn is a forwarded stream seen as a net.Conn.
type streamConn struct {
	st   *quic.Stream
	conn *quic.Conn
	once sync.Once
}

func (c *streamConn) Read(p []byte) (int, error)  { return c.st.Read(p) }
func (c *streamConn) Write(p []byte) (int, error) { return c.st.Write(p) }

// CloseWrite sends FIN: the peer reads EOF, the other direction goes on.
func (c *streamConn) CloseWrite() error { return c.st.Close() }

func (c *streamConn) Close() error {
	c.once.Do(func() {
		c.st.Close()
		c.st.CancelRead(0)
	})
	return nil
}

func (c *streamConn) LocalAddr() net.Addr                { return c.conn.LocalAddr() }
func (c *streamConn) RemoteAddr() net.Addr               { return c.conn.RemoteAddr() }
func (c *streamConn) SetDeadline(t time.Time) error      { return c.st.SetDeadline(t) }
func (c *streamConn) SetReadDeadline(t time.Time) error  { return c.st.SetReadDeadline(t) }
func (c *streamConn) SetWriteDeadline(t time.Time) error { return c.st.SetWriteDeadline(t) }
