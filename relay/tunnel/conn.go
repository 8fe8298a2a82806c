package tunnel

import (
	"io"
	"net"
	"sync"
	"time"
)

// streamConn is a tunnel stream seen as a net.Conn, so the SNI proxy can
// relay a visitor to it like to any backend.
type streamConn struct {
	st      stream
	conn    session
	rate    *bucket
	once    sync.Once
	onClose func()
}

func newStreamConn(st stream, conn session, rate *bucket) *streamConn {
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
// Streams that cannot peek (the TCP fallback's) copy with a pooled buffer.
func (c *streamConn) WriteTo(w io.Writer) (int64, error) {
	p, ok := c.st.(peeker)
	if !ok {
		return copyPooled(w, c)
	}
	return copyFromStream(w, ratedPeeker{c, p})
}

// ratedPeeker reads through the streamConn (its byte rate) and peeks on
// the stream underneath.
type ratedPeeker struct {
	*streamConn
	p peeker
}

func (r ratedPeeker) Peek(b []byte) (int, error) { return r.p.Peek(b) }

// CloseWrite sends FIN: the peer reads EOF, the other direction goes on.
func (c *streamConn) CloseWrite() error { return c.st.CloseWrite() }

func (c *streamConn) Close() error {
	c.once.Do(func() {
		c.st.Close()
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

// bucketNow and bucketSleep are the buckets' time; the rate test swaps
// them for a virtual clock.
var (
	bucketNow   = time.Now
	bucketSleep = time.Sleep
)

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
	return &bucket{rate: rate, burst: burst, level: burst, last: bucketNow()}
}

func (b *bucket) refill(now time.Time) {
	b.level = min(b.burst, b.level+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
}

// take takes n tokens if available.
func (b *bucket) take(n float64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(bucketNow())
	if b.level < n {
		return false
	}
	b.level -= n
	return true
}

// wait takes n tokens, going into debt and sleeping it off.
func (b *bucket) wait(n float64) {
	b.mu.Lock()
	b.refill(bucketNow())
	b.level -= n
	var d time.Duration
	if b.level < 0 {
		d = time.Duration(-b.level / b.rate * float64(time.Second))
	}
	b.mu.Unlock()
	if d > 0 {
		bucketSleep(d)
	}
}
