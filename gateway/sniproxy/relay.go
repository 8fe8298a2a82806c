package sniproxy

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// startRelay moves bytes both ways on two fresh goroutines until both
// directions end, an error or the idle watchdog closes the pair; then it
// closes both connections and calls done. With two *net.TCPConn on Linux
// the copies are splice(2) bursts (copyConn); any wrapper here would
// disable that.
func (s *Server) startRelay(client, backend net.Conn, done func()) {
	ct, cok := client.(*net.TCPConn)
	bt, bok := backend.(*net.TCPConn)
	kernel := cok && bok && kernelCounters
	counted := new(atomic.Uint64) // progress when kernel counters are not usable

	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			client.Close()
			backend.Close()
		})
	}
	var w *watchdog
	if s.cfg.IdleTimeout > 0 {
		sample := func() uint64 { return counted.Load() }
		if kernel {
			sample = func() uint64 { return tcpProgress(ct) + tcpProgress(bt) }
		}
		w = startWatchdog(s.cfg.IdleTimeout, sample, func() {
			s.m.IdleClosed.Inc()
			closeBoth()
		})
	}

	var up, down int64
	var running atomic.Int32
	running.Store(2)
	finish := func() {
		if running.Add(-1) != 0 {
			return
		}
		if w != nil {
			w.stop()
		}
		s.m.BytesUp.Add(float64(up))
		s.m.BytesDown.Add(float64(down))
		closeBoth()
		done()
	}
	go func() {
		up = pipe(backend, client, kernel, counted, closeBoth)
		finish()
	}()
	go func() {
		down = pipe(client, backend, kernel, counted, closeBoth)
		finish()
	}()
}

// pipe copies src to dst; at EOF it half-closes dst so the peer sees the
// end of the stream while the other direction goes on.
func pipe(dst, src net.Conn, kernel bool, counted *atomic.Uint64, closeBoth func()) int64 {
	var n int64
	var err error
	if kernel {
		n, err = copyConn(dst, src)
	} else {
		n, err = io.Copy(&countingWriter{w: dst, n: counted}, src)
	}
	if err != nil {
		closeBoth()
		return n
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			return n
		}
	}
	closeBoth()
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

// watchdog calls onIdle when sample() has not changed for a whole period.
// It is a timer, not a goroutine, so idle connections cost no stack.
type watchdog struct {
	mu      sync.Mutex
	t       *time.Timer
	last    uint64
	stopped bool
}

func startWatchdog(period time.Duration, sample func() uint64, onIdle func()) *watchdog {
	w := &watchdog{}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.last = sample()
	w.t = time.AfterFunc(period, func() {
		w.mu.Lock()
		if w.stopped {
			w.mu.Unlock()
			return
		}
		cur := sample()
		if cur == w.last {
			w.stopped = true
			w.mu.Unlock()
			onIdle()
			return
		}
		w.last = cur
		w.t.Reset(period)
		w.mu.Unlock()
	})
	return w
}

func (w *watchdog) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	w.t.Stop()
}
