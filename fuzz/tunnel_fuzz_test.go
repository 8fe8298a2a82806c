package fuzz

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/elacity/pc2/relay/tunnel"
)

func tunnelHeaderSeeds() [][]byte {
	hs := []tunnel.Header{
		{Service: "https", Visitor: netip.MustParseAddrPort("203.0.113.7:51000")},
		{Service: "web-1", Visitor: netip.MustParseAddrPort("[2001:db8::1]:443")},
		{Service: "a"},
	}
	var seeds [][]byte
	for _, h := range hs {
		b, err := h.AppendBinary(nil)
		if err != nil {
			panic(err)
		}
		seeds = append(seeds, b)
	}
	return append(seeds, []byte{1, 63}, []byte{2, 1, 'a', 0}, []byte{1, 1, 'a', 6, 0, 0})
}

// FuzzTunnelHeader checks that the stream header decoders never panic,
// agree with each other, consume at most MaxHeaderLen bytes, fail only
// with ErrBadHeader, and that what decodes re-encodes to the same bytes.
func FuzzTunnelHeader(f *testing.F) {
	for _, s := range tunnelHeaderSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, n, err := tunnel.ParseHeader(data)
		r := bytes.NewReader(data)
		h2, err2 := tunnel.ReadHeader(r)
		if err != nil {
			if !errors.Is(err, tunnel.ErrBadHeader) {
				t.Fatalf("error %v does not wrap ErrBadHeader", err)
			}
			if err2 == nil {
				t.Fatalf("ReadHeader accepted %x that ParseHeader refused (%v)", data, err)
			}
			return
		}
		if err2 != nil || h2 != h {
			t.Fatalf("ReadHeader = %+v, %v; ParseHeader = %+v", h2, err2, h)
		}
		if n > tunnel.MaxHeaderLen || n > len(data) {
			t.Fatalf("consumed %d bytes (max %d, have %d)", n, tunnel.MaxHeaderLen, len(data))
		}
		if read := len(data) - r.Len(); read != n {
			t.Fatalf("ReadHeader read %d bytes, header is %d", read, n)
		}
		b, err := h.AppendBinary(nil)
		if err != nil {
			t.Fatalf("decoded header %+v does not encode: %v", h, err)
		}
		if !bytes.Equal(b, data[:n]) {
			t.Fatalf("re-encoded %x, decoded from %x", b, data[:n])
		}
	})
}
