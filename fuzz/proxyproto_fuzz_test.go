package fuzz

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"testing"

	"github.com/elacity/pc2/gateway/proxyproto"
)

func proxyProtoSeeds() [][]byte {
	hs := []proxyproto.Header{
		{Command: proxyproto.Proxy, Source: netip.MustParseAddrPort("203.0.113.7:51000"), Destination: netip.MustParseAddrPort("198.51.100.1:443"), Authority: "alice.ela.city"},
		{Command: proxyproto.Proxy, Source: netip.MustParseAddrPort("[2001:db8::1]:5"), Destination: netip.MustParseAddrPort("[2001:db8::2]:443"), ALPN: []byte("h2"), CRC32C: true, TLVs: []proxyproto.TLV{{Type: 0x20, Value: []byte{1, 0, 0, 0, 0}}}},
		{Command: proxyproto.Proxy, Datagram: true, Source: netip.MustParseAddrPort("203.0.113.7:53"), Destination: netip.MustParseAddrPort("198.51.100.1:53")},
		{Command: proxyproto.Local},
	}
	var seeds [][]byte
	for _, h := range hs {
		b, err := h.AppendBinary(nil)
		if err != nil {
			panic(err)
		}
		seeds = append(seeds, b)
	}
	return append(seeds, []byte("PROXY TCP4 203.0.113.7 198.51.100.1 1 2\r\n"), []byte(proxyproto.Signature))
}

var proxyProtoErrs = []error{
	proxyproto.ErrNoSignature, proxyproto.ErrVersion, proxyproto.ErrCommand, proxyproto.ErrFamily,
	proxyproto.ErrTooLarge, proxyproto.ErrIncomplete, proxyproto.ErrMalformed, proxyproto.ErrChecksum,
}

func FuzzProxyProtoV2(f *testing.F) {
	for _, s := range proxyProtoSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, n, err := proxyproto.Parse(data, 0)
		rh, rerr := proxyproto.Read(bytes.NewReader(data), 0)
		if err != nil {
			known := false
			for _, e := range proxyProtoErrs {
				known = known || errors.Is(err, e)
			}
			if !known {
				t.Fatalf("untyped error %v", err)
			}
			if rerr == nil {
				t.Fatalf("Parse: %v, but Read accepted", err)
			}
			return
		}
		if n < 16 || n > len(data) || n > proxyproto.DefaultMaxLen {
			t.Fatalf("length %d outside 16..min(%d, %d)", n, len(data), proxyproto.DefaultMaxLen)
		}
		if rerr != nil || !reflect.DeepEqual(rh, h) {
			t.Fatalf("Read %+v %v differs from Parse %+v", rh, rerr, h)
		}
		// Round trip: what was parsed encodes and parses back identically.
		enc, err := h.AppendBinary(nil)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", h, err)
		}
		h2, n2, err := proxyproto.Parse(enc, 1<<17)
		if err != nil || n2 != len(enc) || !reflect.DeepEqual(h2, h) {
			t.Fatalf("round trip: %+v %v\nwant %+v", h2, err, h)
		}
	})
}
