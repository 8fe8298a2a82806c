package tunnel

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkDatagramHeader: encode + parse of a UDP datagram header, paid
// twice per mapped UDP datagram.
func BenchmarkDatagramHeader(b *testing.B) {
	d := Datagram{Port: 20000, Flow: 7, Visitor: netip.MustParseAddrPort("203.0.113.7:53000")}
	buf := make([]byte, 0, MaxDatagramHeaderLen+64)
	payload := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		out, _ := d.AppendBinary(buf[:0])
		out = append(out, payload...)
		if _, p, err := ParseDatagram(out); err != nil || len(p) != len(payload) {
			b.Fatal(err)
		}
	}
}

// BenchmarkMappedUDPEcho: one 64-byte datagram visitor → mapped port →
// QUIC datagram → node → local UDP echo and back, real sockets, both
// ends in this process.
func BenchmarkMappedUDPEcho(b *testing.B) {
	srvKey, cliKey := newKey(b), newKey(b)
	lo := freePort(b)
	_, addr := portServer(b, srvKey, "127.0.0.1:0", PortConfig{Min: lo, Max: lo + 20})
	cli := portClient(b, cliKey, srvKey, addr, map[string]Local{"dns": {Addr: udpEcho(b)}}, []PortSpec{{Service: "dns", Proto: ProtoUDP}}, nil)
	waitAnswers(b, cli, 1)
	c, err := net.Dial("udp", grantOf(b, cli, "dns", ProtoUDP).Endpoint)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	udpRoundTrip(b, c, "warm-up")
	msg, buf := make([]byte, 64), make([]byte, 2048)
	lost := 0
	b.ReportAllocs()
	for b.Loop() {
		c.Write(msg)
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(buf); err != nil {
			lost++
		}
	}
	b.ReportMetric(float64(lost), "lost")
}

// BenchmarkMappedTCPUpload: bytes from a visitor's TCP connection to a
// mapped port, through the tunnel, to a local sink on the node.
func BenchmarkMappedTCPUpload(b *testing.B) {
	srvKey, cliKey := newKey(b), newKey(b)
	lo := freePort(b)
	_, addr := portServer(b, srvKey, "127.0.0.1:0", PortConfig{Min: lo, Max: lo + 20})
	sink, counts := countingSink(b)
	cli := portClient(b, cliKey, srvKey, addr, map[string]Local{"sink": {Addr: sink}}, []PortSpec{{Service: "sink", Proto: ProtoTCP}}, nil)
	waitAnswers(b, cli, 1)
	c, err := net.Dial("tcp", grantOf(b, cli, "sink", ProtoTCP).Endpoint)
	if err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if _, err := c.Write(chunk); err != nil {
			b.Fatal(err)
		}
		n++
	}
	c.(*net.TCPConn).CloseWrite()
	if got := <-counts; got != int64(n*len(chunk)) {
		b.Fatalf("sink got %d bytes, sent %d", got, n*len(chunk))
	}
	io.Copy(io.Discard, c)
	c.Close()
}
