package udpserver

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"
)

func echo(out, pkt []byte, _ netip.AddrPort) []byte {
	if len(pkt) > 0 && pkt[0] == 0 { // a leading zero byte asks for no reply
		return nil
	}
	return append(out, pkt...)
}

func dial(t testing.TB, s *Server) *net.UDPConn {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(s.LocalAddr()))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestEchoBothModes(t *testing.T) {
	for _, batch := range []int{1, 16} {
		for _, network := range []string{"127.0.0.1:0", "[::1]:0"} {
			s, err := Listen(Config{Addr: network, Workers: 2, Batch: batch, MaxPacket: 1500}, HandlerFunc(echo))
			if err != nil {
				t.Fatal(err)
			}
			c := dial(t, s)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 2000)
			for i := range 50 {
				msg := bytes.Repeat([]byte{byte('a' + i%26)}, 1+i*20)
				c.Write(msg)
				n, err := c.Read(buf)
				if err != nil || !bytes.Equal(buf[:n], msg) {
					t.Fatalf("batch=%d %s: echo %d: %v", batch, network, i, err)
				}
			}
			// Oversized datagrams and no-reply requests get nothing back; the
			// next request is still answered, so nothing was left queued.
			c.Write(make([]byte, 1501))
			c.Write([]byte("\x00no-reply"))
			c.Write([]byte("after"))
			n, err := c.Read(buf)
			if err != nil || string(buf[:n]) != "after" {
				t.Fatalf("batch=%d %s: got %q, %v", batch, network, buf[:n], err)
			}
			c.Close()
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestWorkersShareOnePort(t *testing.T) {
	s, err := Listen(Config{Addr: "127.0.0.1:0", Workers: 4}, HandlerFunc(echo))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, c := range s.conns {
		if c.LocalAddr().(*net.UDPAddr).AddrPort() != s.LocalAddr() {
			t.Fatalf("worker socket on %v, server on %v", c.LocalAddr(), s.LocalAddr())
		}
	}
	// Many sources: every one is answered whichever socket the kernel picks.
	for range 20 {
		c := dial(t, s)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("hi"))
		buf := make([]byte, 8)
		if n, err := c.Read(buf); err != nil || string(buf[:n]) != "hi" {
			t.Fatalf("source %v: %v", c.LocalAddr(), err)
		}
		c.Close()
	}
}

func TestWriteToFromServerPort(t *testing.T) {
	s, _ := Listen(Config{Addr: "127.0.0.1:0", Workers: 1}, HandlerFunc(echo))
	defer s.Close()
	peer, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer peer.Close()
	if err := s.WriteTo([]byte("req"), peer.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		t.Fatal(err)
	}
	peer.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 8)
	_, from, err := peer.ReadFromUDPAddrPort(buf)
	if err != nil || from.Port() != s.LocalAddr().Port() {
		t.Fatalf("from %v, %v", from, err)
	}
}
