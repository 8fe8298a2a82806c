package tunnel

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// TestRelayIntegrity: many concurrent visitors send random bytes in random
// chunk sizes through the tunnel to an echo service while others abort
// mid-way; every visitor that completes gets exactly its own bytes back.
// It guards the pooled relay buffers: a buffer reused too early or shared
// between streams shows up as foreign bytes here.
func TestRelayIntegrity(t *testing.T) {
	p := startPair(t, ServerConfig{}, map[string]Local{"echo": {Addr: echoServer(t)}})
	waitFor(t, "tunnel", 5*time.Second, func() bool { return p.srv.Has(p.cliKey.ID()) })
	waves, perWave, size := 4, 48, 192<<10
	if testing.Short() {
		waves, perWave, size = 2, 24, 64<<10
	}
	for wave := range waves {
		var wg sync.WaitGroup
		for i := range perWave {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(wave), uint64(i)))
				want := make([]byte, size)
				for j := range want {
					want[j] = byte(rng.Uint32())
				}
				abort := i%5 == 0 // these visitors vanish half-way
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				c, err := p.srv.Dial(ctx, p.cliKey.ID(), "echo", nil)
				if err != nil {
					t.Errorf("dial: %v", err)
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				var got bytes.Buffer
				done := make(chan error, 1)
				go func() { _, err := io.Copy(&got, c); done <- err }()
				for off := 0; off < len(want); {
					n := min(len(want)-off, 1+rng.IntN(40<<10))
					if abort && off > len(want)/2 {
						c.Close()
						<-done
						return
					}
					if _, err := c.Write(want[off : off+n]); err != nil {
						t.Errorf("write: %v", err)
						return
					}
					off += n
				}
				c.(interface{ CloseWrite() error }).CloseWrite()
				if err := <-done; err != nil {
					t.Errorf("read: %v", err)
					return
				}
				if !bytes.Equal(got.Bytes(), want) {
					t.Errorf("wave %d visitor %d: echo differs (%d bytes back, want %d)", wave, i, got.Len(), len(want))
				}
			}()
		}
		wg.Wait()
	}
}

// TestStreamCreditReturned: a node admits MaxStreams concurrent streams;
// streams that ended must give their credit back, so many more than
// MaxStreams short visitors in a row all get through.
func TestStreamCreditReturned(t *testing.T) {
	p := startPairClient(t, ServerConfig{}, ClientConfig{MaxStreams: 8, Services: map[string]Local{"echo": {Addr: echoServer(t)}}})
	waitFor(t, "tunnel", 5*time.Second, func() bool { return p.srv.Has(p.cliKey.ID()) })
	for i := range 100 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := p.srv.Dial(ctx, p.cliKey.ID(), "echo", nil)
		if err != nil {
			cancel()
			t.Fatalf("visitor %d: %v", i, err)
		}
		// The FIN goes out alone, after the echo came back, so the node
		// sees it while waiting for more data, as when a visitor hangs up.
		c.Write([]byte{byte(i)})
		var first [1]byte
		if _, err := io.ReadFull(c, first[:]); err != nil || first[0] != byte(i) {
			t.Fatalf("visitor %d: first echo %v, %v", i, first, err)
		}
		c.(interface{ CloseWrite() error }).CloseWrite()
		var got bytes.Buffer
		_, err = io.Copy(&got, c) // the gateway's path: streamConn.WriteTo
		c.Close()
		cancel()
		if b := got.Bytes(); err != nil || len(b) != 0 {
			t.Fatalf("visitor %d: echo %v, %v", i, b, err)
		}
	}
}

// startPairClient is startPair with a client config of the test's own.
func startPairClient(t testing.TB, scfg ServerConfig, ccfg ClientConfig) *pair {
	t.Helper()
	p := &pair{srvKey: newKey(t), cliKey: newKey(t)}
	p.srv = NewServer(p.srvKey, scfg)
	a, err := p.srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = a.String()
	t.Cleanup(func() { p.srv.Close() })
	ccfg.Supernode, ccfg.SupernodeID, ccfg.LocalUDP, ccfg.Logger = p.addr, p.srvKey.ID(), "127.0.0.1:0", testLogger(t)
	p.cli = NewClient(p.cliKey, ccfg)
	if err := p.cli.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cli.Close() })
	return p
}
