package tunnel

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/elacity/pc2/transport/quicid"
)

// BenchmarkTCPTunnelUpload: bytes/s from the supernode through one visitor
// stream of a TCP-transport tunnel to the node's local service (loopback,
// TLS 1.3, yamux); BenchmarkTunnelUpload is the QUIC figure.
func BenchmarkTCPTunnelUpload(b *testing.B) {
	p := startTCPPair(b, ServerConfig{}, map[string]Local{"sink": {Addr: discardServer(b)}})
	waitFor(b, "tunnel", 5*time.Second, func() bool { return p.srv.Has(p.cliKey.ID()) })
	c, err := p.srv.Dial(context.Background(), p.cliKey.ID(), "sink", nil)
	if err != nil {
		b.Fatal(err)
	}
	benchUpload(b, c)
}

// BenchmarkTCPTunnelStreamSetup: a visitor stream on a TCP-transport
// tunnel opened, one byte echoed, closed.
func BenchmarkTCPTunnelStreamSetup(b *testing.B) {
	p := startTCPPair(b, ServerConfig{}, map[string]Local{"echo": {Addr: echoServer(b)}})
	waitFor(b, "tunnel", 5*time.Second, func() bool { return p.srv.Has(p.cliKey.ID()) })
	visitor := &net.TCPAddr{IP: net.IPv4(203, 0, 113, 5), Port: 4444}
	b.ReportAllocs()
	for range b.N {
		c, err := p.srv.Dial(context.Background(), p.cliKey.ID(), "echo", visitor)
		if err != nil {
			b.Fatal(err)
		}
		echoByte(b, c)
	}
}

func benchUpload(b *testing.B, c net.Conn) {
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	var one [1]byte
	if _, err := io.ReadFull(c, one[:]); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	c.Close()
}

func echoByte(b *testing.B, c net.Conn) {
	c.Write([]byte{1})
	c.(interface{ CloseWrite() error }).CloseWrite()
	if got, err := io.ReadAll(c); err != nil || len(got) != 1 {
		b.Fatalf("echo %v, %v", got, err)
	}
	c.Close()
}

// perVisitor is the design the tunnel does not use, measured for
// comparison (rathole, bore and Boson's active proxy work this way): the
// supernode asks the node over a control connection for a data
// connection, and the node opens a new TCP connection with its own TLS 1.3
// handshake (node keys, as the tunnel's) for every visitor, then relays it
// to the local service.
type perVisitor struct {
	ctl   net.Conn      // supernode's end of the control connection
	conns chan net.Conn // data connections, handshaken, at the supernode
}

func startPerVisitor(b *testing.B, local string) *perVisitor {
	sk, nk := newKey(b), newKey(b)
	sconf, err := quicid.ServerConfig(sk, ALPN, nil)
	if err != nil {
		b.Fatal(err)
	}
	nconf, err := quicid.ClientConfig(nk, ALPN, sk.ID())
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	pv := &perVisitor{conns: make(chan net.Conn, 16)}
	// The node's control connection: one byte per visitor asks for a
	// data connection.
	nodeCtl, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { nodeCtl.Close() })
	if pv.ctl, err = ln.Accept(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pv.ctl.Close() })
	go func() { // supernode: accept and handshake data connections
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				tc := tls.Server(c, sconf)
				if tc.Handshake() != nil {
					c.Close()
					return
				}
				pv.conns <- tc
			}()
		}
	}()
	go func() { // node: a data connection per request, relayed to local
		var req [1]byte
		for {
			if _, err := io.ReadFull(nodeCtl, req[:]); err != nil {
				return
			}
			go func() {
				raw, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					return
				}
				tc := tls.Client(raw, nconf)
				if tc.Handshake() != nil {
					raw.Close()
					return
				}
				lc, err := net.Dial("tcp", local)
				if err != nil {
					tc.Close()
					return
				}
				go func() {
					io.Copy(lc, tc)
					lc.(*net.TCPConn).CloseWrite()
				}()
				io.Copy(tc, lc)
				tc.CloseWrite()
				tc.Close()
				lc.Close()
			}()
		}
	}()
	return pv
}

func (pv *perVisitor) dial(b *testing.B) net.Conn {
	if _, err := pv.ctl.Write([]byte{1}); err != nil {
		b.Fatal(err)
	}
	select {
	case c := <-pv.conns:
		return c
	case <-time.After(10 * time.Second):
		b.Fatal("no data connection")
	}
	return nil
}

// BenchmarkConnPerVisitorSetup: one new TCP + TLS 1.3 connection from the
// node per visitor (asked for over a control connection), one byte echoed,
// closed; compare BenchmarkTCPTunnelStreamSetup.
func BenchmarkConnPerVisitorSetup(b *testing.B) {
	pv := startPerVisitor(b, echoServer(b))
	b.ReportAllocs()
	for range b.N {
		echoByte(b, pv.dial(b))
	}
}

// BenchmarkConnPerVisitorUpload: bytes/s through one visitor's own TLS
// connection to the node's local service; compare
// BenchmarkTCPTunnelUpload.
func BenchmarkConnPerVisitorUpload(b *testing.B) {
	pv := startPerVisitor(b, discardServer(b))
	benchUpload(b, pv.dial(b))
}
