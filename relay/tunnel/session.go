package tunnel

import (
	"context"
	"io"
	"net"
	"time"

	"github.com/quic-go/quic-go"
)

// Transport names, as logged and used as metric labels.
const (
	TransportQUIC = "quic"
	TransportTCP  = "tcp"
)

// session is one node's tunnel as the Server and the Client use it,
// whatever carries it: a QUIC connection, or TLS over TCP with a stream
// multiplexer (tcp.go). The supernode opens streams, the node accepts them.
type session interface {
	OpenStream(ctx context.Context) (stream, error)
	AcceptStream(ctx context.Context) (stream, error)
	// Close ends the session and every stream on it.
	Close(reason string)
	// Context is done when the session has ended; its cause says why.
	Context() context.Context
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
	Transport() string
	// exportKey exports keying material from the session's TLS 1.3
	// handshake (RFC 8446 §7.5): the same bytes on both ends.
	exportKey(label string, length int) ([]byte, error)
}

// stream is one visitor's bidirectional byte stream.
type stream interface {
	io.ReadWriter
	// CloseWrite ends this side's direction (FIN); reading goes on.
	CloseWrite() error
	// Close ends both directions: the peer's further writes fail where
	// the transport can say so.
	Close() error
	// Abort resets both directions: the peer sees an error, not an EOF,
	// where the transport can say so.
	Abort()
	SetDeadline(t time.Time) error
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
}

// quicSession is a tunnel on a QUIC connection.
type quicSession struct{ c *quic.Conn }

func (s quicSession) OpenStream(ctx context.Context) (stream, error) {
	st, err := s.c.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	return quicStream{st}, nil
}

func (s quicSession) AcceptStream(ctx context.Context) (stream, error) {
	st, err := s.c.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return quicStream{st}, nil
}

func (s quicSession) Close(reason string)      { s.c.CloseWithError(0, reason) }
func (s quicSession) Context() context.Context { return s.c.Context() }
func (s quicSession) LocalAddr() net.Addr      { return s.c.LocalAddr() }
func (s quicSession) RemoteAddr() net.Addr     { return s.c.RemoteAddr() }
func (s quicSession) Transport() string        { return TransportQUIC }
func (s quicSession) exportKey(label string, n int) ([]byte, error) {
	st := s.c.ConnectionState().TLS
	return st.ExportKeyingMaterial(label, nil, n)
}

// quicStream is a QUIC stream: FIN, STOP_SENDING and RESET_STREAM give
// every stream operation its exact meaning.
type quicStream struct{ *quic.Stream }

func (s quicStream) CloseWrite() error { return s.Stream.Close() }

func (s quicStream) Close() error {
	err := s.Stream.Close()
	s.CancelRead(0)
	return err
}

func (s quicStream) Abort() {
	s.CancelRead(1)
	s.CancelWrite(1)
}
