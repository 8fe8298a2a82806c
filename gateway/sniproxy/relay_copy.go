package sniproxy

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// copyRelay is the portable relay: a goroutine per direction running
// io.Copy, for connections that are not both *net.TCPConn and for systems
// without the splice relay. It counts bytes itself for the idle timeout.
type copyRelay struct {
	client, backend net.Conn
	closeOnce       sync.Once
}

func (r *copyRelay) shutdown() {
	r.closeOnce.Do(func() {
		r.client.Close()
		r.backend.Close()
	})
}

func (s *Server) startCopyRelay(cs *conn, client, backend net.Conn) {
	r := &copyRelay{client: client, backend: backend}
	cs.setRelay(r)
	var moved atomic.Uint64
	var stopWatch func()
	if s.cfg.IdleTimeout > 0 {
		stopWatch = watchIdle(s.cfg.IdleTimeout, moved.Load, func() {
			s.m.IdleClosed.Inc()
			r.shutdown()
		})
	}
	var up, down int64
	var left atomic.Int32
	left.Store(2)
	finish := func() {
		if left.Add(-1) != 0 {
			return
		}
		if stopWatch != nil {
			stopWatch()
		}
		s.m.BytesUp.Add(float64(up))
		s.m.BytesDown.Add(float64(down))
		r.shutdown()
		s.release(cs)
	}
	go func() {
		up = copyHalf(backend, client, &moved, r.shutdown)
		finish()
	}()
	go func() {
		down = copyHalf(client, backend, &moved, r.shutdown)
		finish()
	}()
}

// copyHalf copies src to dst; at EOF it half-closes dst so the peer sees
// the end of the stream while the other direction goes on.
func copyHalf(dst, src net.Conn, moved *atomic.Uint64, shutdown func()) int64 {
	n, err := io.Copy(&countingWriter{w: dst, n: moved}, src)
	if err != nil {
		shutdown()
		return n
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		return n
	}
	shutdown()
	return n
}

type countingWriter struct {
	w io.Writer
	n *atomic.Uint64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(uint64(n))
	return n, err
}

// watchIdle calls onIdle when sample() has not changed for a whole period.
// It is a timer, not a goroutine. The returned func stops it.
func watchIdle(period time.Duration, sample func() uint64, onIdle func()) (stop func()) {
	var mu sync.Mutex
	stopped := false
	last := sample()
	var t *time.Timer
	mu.Lock()
	defer mu.Unlock()
	t = time.AfterFunc(period, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		if cur := sample(); cur != last {
			last = cur
			t.Reset(period)
			return
		}
		stopped = true
		go onIdle()
	})
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		t.Stop()
	}
}
