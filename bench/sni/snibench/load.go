package main

import (
	"cmp"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var plainDialer = &net.Dialer{Timeout: 5 * time.Second}

// firstByte connects, sends the canned hello and waits for the backend's
// 'S'; it returns the time from the start of the dial to that byte. d nil
// uses plainDialer. The connection is closed before returning.
func firstByte(addr string, hello []byte, d *net.Dialer) (time.Duration, error) {
	if d == nil {
		d = plainDialer
	}
	start := time.Now()
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(start.Add(5 * time.Second))
	if _, err := c.Write(hello); err != nil {
		return 0, err
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, err
	}
	took := time.Since(start)
	if b[0] != 'S' {
		return 0, fmt.Errorf("first byte %q, want 'S'", b[0])
	}
	return took, nil
}

// rate runs firstByte with c workers for d; each connection is a new one.
func rate(addr string, hello []byte, c int, d time.Duration) (ok, fail int64, took time.Duration, firstErr error) {
	var okN, failN atomic.Int64
	var errOnce sync.Once
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	start := time.Now()
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				if _, err := firstByte(addr, hello, nil); err != nil {
					failN.Add(1)
					errOnce.Do(func() { firstErr = err })
					continue
				}
				okN.Add(1)
			}
		}()
	}
	wg.Wait()
	return okN.Load(), failN.Load(), time.Since(start), firstErr
}

// bulkRaw opens streams connections that each ask the raw backend for an
// endless download and reads for d; it returns the bytes received and the
// time taken. Neither end does TLS: the proxy's relay is what is measured.
func bulkRaw(addr string, hello []byte, streams int, d time.Duration) (int64, time.Duration, error) {
	var total atomic.Int64
	setup := make(chan error, streams)
	ended := make(chan struct{}, streams)
	ready := make(chan struct{})
	conns := make([]net.Conn, streams)
	for i := range streams {
		go func() {
			c, err := plainDialer.Dial("tcp", addr)
			if err != nil {
				setup <- err
				return
			}
			conns[i] = c
			_ = c.SetDeadline(time.Now().Add(d + 30*time.Second))
			var b [1]byte
			if _, err := c.Write(hello); err != nil {
				setup <- err
				return
			}
			if _, err := io.ReadFull(c, b[:]); err != nil {
				setup <- err
				return
			}
			setup <- nil
			defer func() { ended <- struct{}{} }()
			<-ready
			if _, err := c.Write([]byte{'D'}); err != nil {
				return
			}
			buf := make([]byte, 256<<10)
			for {
				n, err := c.Read(buf)
				total.Add(int64(n))
				if err != nil {
					return // closed below when the time is up
				}
			}
		}()
	}
	var setupErr error
	started := 0
	for range streams {
		if err := <-setup; err != nil {
			setupErr = cmp.Or(setupErr, err)
			continue
		}
		started++
	}
	start := time.Now()
	close(ready)
	if setupErr == nil {
		time.Sleep(d)
	}
	n := total.Load()
	took := time.Since(start)
	closeAll(conns)
	for range started {
		<-ended
	}
	if setupErr != nil {
		return 0, 0, fmt.Errorf("bulk setup: %w", setupErr)
	}
	return n, took, nil
}

// bulkTLS is the TLS variant: crypto/tls on both ends, 16 MiB bodies.
func bulkTLS(addr string, cfg *tls.Config, streams int, d time.Duration) (int64, time.Duration, error) {
	var total atomic.Int64
	errc := make(chan error, streams)
	deadline := time.Now().Add(d)
	start := time.Now()
	for range streams {
		go func() {
			raw, err := plainDialer.Dial("tcp", addr)
			if err != nil {
				errc <- err
				return
			}
			defer raw.Close()
			_ = raw.SetDeadline(deadline.Add(30 * time.Second))
			c := tls.Client(raw, cfg)
			const chunk = 16 << 20
			buf := make([]byte, 256<<10)
			for time.Now().Before(deadline) {
				if _, err := fmt.Fprintf(c, "%d\n", chunk); err != nil {
					errc <- err
					return
				}
				n, err := io.CopyBuffer(io.Discard, io.LimitReader(c, chunk), buf)
				total.Add(n)
				if err == nil && n < chunk {
					err = io.ErrUnexpectedEOF
				}
				if err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	var firstErr error
	for range streams {
		if err := <-errc; err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return 0, 0, fmt.Errorf("tls bulk: %w", firstErr)
	}
	return total.Load(), time.Since(start), nil
}

// openIdle opens n connections that completed the hello exchange and then
// stay silent.
func openIdle(addr string, hello []byte, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, n)
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				c, err := plainDialer.Dial("tcp", addr)
				if err == nil {
					_ = c.SetDeadline(time.Now().Add(10 * time.Second))
					var b [1]byte
					if _, err = c.Write(hello); err == nil {
						if _, err = io.ReadFull(c, b[:]); err == nil {
							_ = c.SetDeadline(time.Time{})
							conns[i] = c
							continue
						}
					}
					c.Close()
				}
				mu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("idle connection %d: %w", i, err)
				}
				mu.Unlock()
				return
			}
		}()
	}
	wg.Wait()
	return conns, firstErr
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// slowloris keeps k connections that sent only part of a ClientHello open
// against addr, from many loopback source addresses (perIP each) so that a
// per-address limit is not what bounds them. A connection the proxy closes
// is re-opened, like a real attacker would. Stop ends it and closes all.
type slowloris struct {
	held      atomic.Int64 // connected and partial hello sent
	reopened  atomic.Int64 // closed by the proxy and opened again
	dialFails atomic.Int64
	stop      chan struct{}
	wg        sync.WaitGroup
	mu        sync.Mutex
	conns     map[net.Conn]struct{}
}

func startSlowloris(addr string, partial []byte, k, perIP int) *slowloris {
	s := &slowloris{stop: make(chan struct{}), conns: make(map[net.Conn]struct{})}
	dialSem := make(chan struct{}, 256) // don't flood the SYN backlog
	for i := range k {
		j := i / perIP
		src := &net.TCPAddr{IP: net.IPv4(127, 1, byte(j/250), byte(j%250+1))}
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: src}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for {
				select {
				case <-s.stop:
					return
				case dialSem <- struct{}{}:
				}
				c, err := d.Dial("tcp", addr)
				<-dialSem
				if err != nil {
					s.dialFails.Add(1)
					select {
					case <-s.stop:
						return
					case <-time.After(100 * time.Millisecond):
					}
					continue
				}
				if !s.track(c) {
					return
				}
				if _, err := c.Write(partial); err == nil {
					s.held.Add(1)
					_, _ = c.Read(make([]byte, 64)) // until the proxy gives up or Stop closes it
					s.held.Add(-1)
				}
				s.untrack(c)
				select {
				case <-s.stop:
					return
				default:
					s.reopened.Add(1)
				}
			}
		}()
	}
	return s
}

func (s *slowloris) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.stop:
		c.Close()
		return false
	default:
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *slowloris) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

func (s *slowloris) Stop() {
	s.mu.Lock()
	close(s.stop)
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// rssSampler records the maximum RSS of a process tree until stopped.
type rssSampler struct {
	max  atomic.Int64
	stop chan struct{}
	done chan struct{}
}

func sampleRSS(pid int) *rssSampler {
	r := &rssSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			if kb := treeRSS(pid); kb > r.max.Load() {
				r.max.Store(kb)
			}
			select {
			case <-r.stop:
				return
			case <-t.C:
			}
		}
	}()
	return r
}

func (r *rssSampler) Stop() int64 {
	close(r.stop)
	<-r.done
	return r.max.Load()
}

// treeRSS sums VmRSS (kB) of pid and all its descendants.
func treeRSS(root int) int64 {
	if root <= 0 {
		return 0
	}
	var sum int64
	for _, p := range treePIDs(root) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				sum += kb
			}
		}
	}
	return sum
}

// kernelTCPKB is the TCP socket memory of this network namespace
// (/proc/net/sockstat "mem", pages), in kB: where bytes a proxy leaves
// unread in socket buffers are accounted.
func kernelTCPKB() int64 {
	b, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "TCP:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "mem" {
				pages, _ := strconv.ParseInt(f[i+1], 10, 64)
				return pages * int64(os.Getpagesize()) / 1024
			}
		}
	}
	return 0
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// percentiles sorts d and returns p50 and p99 in µs.
func percentiles(d []time.Duration) (p50, p99 float64) {
	if len(d) == 0 {
		return 0, 0
	}
	sort.Slice(d, func(a, b int) bool { return d[a] < d[b] })
	return float64(d[len(d)/2].Microseconds()), float64(d[len(d)*99/100].Microseconds())
}

// treeCPU is the user+system CPU time (clock ticks, 1/100 s) used so far by
// pid and its descendants (nginx's workers); pid <= 0 reads this process.
func treeCPU(root int) int64 {
	if root <= 0 {
		return statCPU("self")
	}
	var sum int64
	for _, p := range treePIDs(root) {
		sum += statCPU(strconv.Itoa(p))
	}
	return sum
}

func statCPU(pid string) int64 {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

// treePIDs lists root and its descendants.
func treePIDs(root int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The command name may contain spaces; fields follow the last ')'.
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 1 {
			ppid, _ := strconv.Atoi(fields[1])
			children[ppid] = append(children[ppid], pid)
		}
	}
	var out []int
	var walk func(int)
	walk = func(p int) {
		out = append(out, p)
		for _, c := range children[p] {
			walk(c)
		}
	}
	walk(root)
	return out
}
