package proxyproto_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"net/netip"
	"reflect"
	"testing"

	"github.com/elacity/pc2/gateway/proxyproto"
)

func TestKnownEncoding(t *testing.T) {
	h := proxyproto.Header{
		Command:     proxyproto.Proxy,
		Source:      netip.MustParseAddrPort("203.0.113.7:51000"),
		Destination: netip.MustParseAddrPort("198.51.100.1:443"),
	}
	got, err := h.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	// Hand-assembled from haproxy doc/proxy-protocol.txt §2.2.
	want, _ := hex.DecodeString("0d0a0d0a000d0a515549540a" + "21" + "11" + "000c" +
		"cb007107" + "c6336401" + "c738" + "01bb")
	if !bytes.Equal(got, want) {
		t.Fatalf("encoding\n got %x\nwant %x", got, want)
	}
}

func TestRoundTrip(t *testing.T) {
	cases := []proxyproto.Header{
		{Command: proxyproto.Proxy, Source: netip.MustParseAddrPort("203.0.113.7:1"), Destination: netip.MustParseAddrPort("198.51.100.1:443"), Authority: "alice.ela.city", ALPN: []byte("h2"), CRC32C: true},
		{Command: proxyproto.Proxy, Source: netip.MustParseAddrPort("[2001:db8::1]:5"), Destination: netip.MustParseAddrPort("[2001:db8::2]:443"), TLVs: []proxyproto.TLV{{Type: 0xe0, Value: []byte("x")}, {Type: 0xe1, Value: []byte{}}}},
		{Command: proxyproto.Proxy, Datagram: true, Source: netip.MustParseAddrPort("203.0.113.7:53"), Destination: netip.MustParseAddrPort("198.51.100.1:53")},
		{Command: proxyproto.Local},
		{Command: proxyproto.Proxy, Authority: "unspec.example"},
	}
	for i, h := range cases {
		b, err := h.AppendBinary([]byte("prefix"))
		if err != nil {
			t.Fatalf("%d: %v", i, err)
		}
		b = b[len("prefix"):]
		got, n, err := proxyproto.Parse(append(b, "rest"...), 0)
		if err != nil || n != len(b) {
			t.Fatalf("%d: Parse n=%d/%d err=%v", i, n, len(b), err)
		}
		if !reflect.DeepEqual(got, h) {
			t.Fatalf("%d: round trip\n got %+v\nwant %+v", i, got, h)
		}
		got2, err := proxyproto.Read(bytes.NewReader(append(b, "rest"...)), 0)
		if err != nil || !reflect.DeepEqual(got2, h) {
			t.Fatalf("%d: Read %+v %v", i, got2, err)
		}
		for cut := 0; cut < len(b); cut++ {
			if _, _, err := proxyproto.Parse(b[:cut], 0); !errors.Is(err, proxyproto.ErrIncomplete) {
				t.Fatalf("%d: prefix %d: err %v, want ErrIncomplete", i, cut, err)
			}
		}
	}
}

func TestReadDoesNotReadAhead(t *testing.T) {
	h := proxyproto.Header{Command: proxyproto.Proxy, Source: netip.MustParseAddrPort("203.0.113.7:1"), Destination: netip.MustParseAddrPort("198.51.100.1:2")}
	b, _ := h.AppendBinary(nil)
	r := bytes.NewReader(append(b, "\x16\x03\x01"...))
	if _, err := proxyproto.Read(r, 0); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(r)
	if string(rest) != "\x16\x03\x01" {
		t.Fatalf("rest = %q", rest)
	}
}

func TestErrors(t *testing.T) {
	good, _ := (&proxyproto.Header{Command: proxyproto.Proxy, Source: netip.MustParseAddrPort("203.0.113.7:1"), Destination: netip.MustParseAddrPort("198.51.100.1:2"), Authority: "a.example", CRC32C: true}).AppendBinary(nil)
	mut := func(i int, v byte) []byte { b := bytes.Clone(good); b[i] = v; return b }
	long := append(bytes.Clone(good[:14]), 0x10, 0x00)
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"v1 text", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), proxyproto.ErrNoSignature},
		{"tls", []byte{22, 3, 1, 0, 5}, proxyproto.ErrNoSignature},
		{"version 1", mut(12, 0x11), proxyproto.ErrVersion},
		{"command 2", mut(12, 0x22), proxyproto.ErrCommand},
		{"family", mut(13, 0x41), proxyproto.ErrFamily},
		{"unix", mut(13, 0x31), proxyproto.ErrFamily},
		{"too large", long, proxyproto.ErrTooLarge},
		{"addresses overrun", mut(15, 4), proxyproto.ErrMalformed},
		{"crc", mut(20, good[20]^1), proxyproto.ErrChecksum},
		{"tlv overrun", mut(29, 0xff), proxyproto.ErrMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := proxyproto.Parse(c.in, 0)
			if !errors.Is(err, c.want) {
				t.Fatalf("Parse err = %v, want %v", err, c.want)
			}
			if _, err := proxyproto.Read(bytes.NewReader(c.in), 0); err == nil {
				t.Fatalf("Read accepted bad input")
			}
		})
	}
}

func BenchmarkAppend(b *testing.B) {
	h := proxyproto.Header{Command: proxyproto.Proxy, Source: netip.MustParseAddrPort("203.0.113.7:51000"), Destination: netip.MustParseAddrPort("198.51.100.1:443"), Authority: "alice.ela.city"}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = h.AppendBinary(buf[:0]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParse(b *testing.B) {
	h := proxyproto.Header{Command: proxyproto.Proxy, Source: netip.MustParseAddrPort("203.0.113.7:51000"), Destination: netip.MustParseAddrPort("198.51.100.1:443"), Authority: "alice.ela.city"}
	buf, _ := h.AppendBinary(nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := proxyproto.Parse(buf, 0); err != nil {
			b.Fatal(err)
		}
	}
}
