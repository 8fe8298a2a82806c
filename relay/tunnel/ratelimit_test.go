package tunnel

import (
	"context"
	"io"
	"math"
	"net"
	"sync"
	"testing"
	"time"
)

// vclock is a virtual clock for the byte-rate buckets: sleeping moves it
// forward at once, so a throttled transfer runs at full speed in real
// time while the virtual time shows how long the limit made it take.
type vclock struct {
	mu    sync.Mutex
	now   time.Time
	slept time.Duration
}

func (v *vclock) Now() time.Time {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.now
}

func (v *vclock) Sleep(d time.Duration) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.now = v.now.Add(d)
	v.slept += d
}

func (v *vclock) Slept() time.Duration {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.slept
}

// countingSink reads every connection to EOF and reports its byte count.
func countingSink(t testing.TB) (string, <-chan int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	counts := make(chan int64, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				counts <- n
			}()
		}
	}()
	return ln.Addr().String(), counts
}

// TestBytesPerSecondLimitsANode: with bytesPerSecond R (burst B = R here),
// an upload through one node's tunnel is charged byte for byte: after
// every write, the bytes accepted stay within B + R·t of virtual time t,
// and the limit costs no more than one write's worth of extra time. A
// second node's upload of B bytes right after is not slowed at all: the
// budget is per node.
func TestBytesPerSecondLimitsANode(t *testing.T) {
	vc := &vclock{now: time.Unix(1_800_000_000, 0)}
	bucketNow, bucketSleep = vc.Now, vc.Sleep
	t.Cleanup(func() { bucketNow, bucketSleep = time.Now, time.Sleep })

	const rate = 1 << 20 // 1 MiB/s; the burst is max(rate, 256 KiB) = rate
	const burst = float64(rate)
	const chunk = 32 << 10
	srvKey := newKey(t)
	srv := NewServer(srvKey, ServerConfig{BytesPerSecond: rate, Logger: testLogger(t)})
	a, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	sinkAddr, counts := countingSink(t)
	var nodes []*Client
	for range 2 {
		cli := portClient(t, newKey(t), srvKey, a.String(), map[string]Local{"sink": {Addr: sinkAddr}}, nil, nil)
		nodes = append(nodes, cli)
	}
	for _, n := range nodes {
		waitFor(t, "tunnels", 10*time.Second, func() bool { return srv.Has(n.kp.ID()) && n.Up() })
	}

	upload := func(cli *Client, total int) (worst float64) {
		t.Helper()
		c, err := srv.Dial(context.Background(), cli.kp.ID(), "sink", nil)
		if err != nil {
			t.Fatal(err)
		}
		start := vc.Now()
		buf := make([]byte, chunk)
		sent := 0
		for sent < total {
			if _, err := c.Write(buf); err != nil {
				t.Fatal(err)
			}
			sent += chunk
			el := vc.Now().Sub(start).Seconds()
			// The token bucket bound: never more than B + R·t accepted.
			if over := float64(sent) - (burst + rate*el); over > 1 {
				t.Fatalf("after %d bytes and %.3fs of virtual time: %.0f bytes over the bucket bound", sent, el, over)
			}
			worst = math.Max(worst, el-math.Max(0, float64(sent)-burst)/rate)
		}
		c.(interface{ CloseWrite() error }).CloseWrite()
		select {
		case n := <-counts:
			if n != int64(total) {
				t.Fatalf("sink got %d bytes, sent %d", n, total)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("sink did not finish")
		}
		c.Close()
		return worst
	}

	const total = 8 << 20
	late := upload(nodes[0], total)
	limited := vc.Slept()
	// 8 MiB at 1 MiB/s with a 1 MiB burst: 7 s of virtual time, within
	// one write (32 KiB = 31 ms) of extra wait.
	want := time.Duration((total - burst) / rate * float64(time.Second))
	if limited < want-time.Millisecond || limited > want+chunk*time.Second/rate {
		t.Fatalf("node A was held %v for %d bytes at %d B/s; want %v..%v", limited, total, rate, want, want+chunk*time.Second/rate)
	}
	if late > float64(chunk)/rate+1e-3 {
		t.Fatalf("the limit lagged %.3fs behind the bytes (more than one write)", late)
	}
	t.Logf("node A: %d bytes held %v of virtual time (effective %.0f B/s, limit %d)", total, limited, (total-burst)/limited.Seconds(), rate)

	upload(nodes[1], int(burst))
	if extra := vc.Slept() - limited; extra != 0 {
		t.Fatalf("node B's upload within its own burst was held %v: the budget is not per node", extra)
	}
}
