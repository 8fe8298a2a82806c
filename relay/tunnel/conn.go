package tunnel

import (
	"io"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// streamConn is a QUIC stream seen as a net.Conn, so the SNI proxy can
// relay a visitor to it like to any backend.
type streamConn struct {
	st      *quic.Stream
	conn    *quic.Conn
	rate    *bucket
	once    sync.Once
	onClose func()
}

func newStreamConn(st *quic.Stream, conn *quic.Conn, rate *bucket) *streamConn {
	return &streamConn{st: st, conn: conn, rate: rate}
}

func (c *streamConn) Read(p []byte) (int, error) {
	n, err := c.st.Read(p)
	if c.rate != nil && n > 0 {
		c.rate.wait(float64(n))
	}
	return n, err
}

func (c *streamConn) Write(p []byte) (int, error) {
	if c.rate != nil {
		c.rate.wait(float64(len(p)))
	}
	return c.st.Write(p)
}

// WriteTo copies the stream to w holding a pooled buffer only while data
// is queued; io.Copy (the SNI gateway's relay) uses it instead of
// allocating 32 KiB per visitor for the visitor's whole life.
func (c *streamConn) WriteTo(w io.Writer) (int64, error) {
	return copyFromStream(w, c)
}

// Peek waits for len(b) bytes without consuming them.
func (c *streamConn) Peek(b []byte) (int, error) { return c.st.Peek(b) }

// CloseWrite sends FIN: the peer reads EOF, the other direction goes on.
func (c *streamConn) CloseWrite() error { return c.st.Close() }

func (c *streamConn) Close() error {
	c.once.Do(func() {
		c.st.Close()
		c.st.CancelRead(0)
		if c.onClose != nil {
			c.onClose()
		}
	})
	return nil
}

func (c *streamConn) LocalAddr() net.Addr                { return c.conn.LocalAddr() }
func (c *streamConn) RemoteAddr() net.Addr               { return c.conn.RemoteAddr() }
func (c *streamConn) SetDeadline(t time.Time) error      { return c.st.SetDeadline(t) }
func (c *streamConn) SetReadDeadline(t time.Time) error  { return c.st.SetReadDeadline(t) }
func (c *streamConn) SetWriteDeadline(t time.Time) error { return c.st.SetWriteDeadline(t) }

// bucket is a token bucket; wait blocks until n tokens are available, so
// a node over its byte rate is slowed down, never cut off.
type bucket struct {
	mu    sync.Mutex
	rate  float64
	burst float64
	level float64
	last  time.Time
}

func newBucket(rate, burst float64) *bucket {
	return &bucket{rate: rate, burst: burst, level: burst, last: time.Now()}
}

func (b *bucket) refill(now time.Time) {
	b.level = min(b.burst, b.level+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
}

// take takes n tokens if available.
func (b *bucket) take(n float64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(time.Now())
	if b.level < n {
		return false
	}
	b.level -= n
	return true
}

// wait takes n tokens, going into debt and sleeping it off.
func (b *bucket) wait(n float64) {
	b.mu.Lock()
	b.refill(time.Now())
	b.level -= n
	var d time.Duration
	if b.level < 0 {
		d = time.Duration(-b.level / b.rate * float64(time.Second))
	}
	b.mu.Unlock()
	if d > 0 {
		time.Sleep(d)
	}
}
