package fuzz

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"testing"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/federation/mesh"
	"github.com/elacity/pc2/relay/tunnel"
)

func meshFrameSeeds() [][]byte {
	var seeds [][]byte
	for _, f := range []struct {
		typ     byte
		payload string
	}{
		{'S', `{"time":1,"announce":{"mesh":"192.0.2.1:39003"},"names":2,"tunnels":[]}`},
		{'R', `{"name":"alice.ela.city","owner":"AKnL4NNf3DGWZJS6cPknBuEGnVsV4A4m5tgebLHaRSZ9"}`},
		{'D', `{"name":"alice.ela.city"}`},
		{'B', ``},
		{'E', ``},
	} {
		b, err := mesh.AppendFrame(nil, f.typ, []byte(f.payload))
		if err != nil {
			panic(err)
		}
		seeds = append(seeds, b)
	}
	two := append(append([]byte{}, seeds[3]...), seeds[2]...)
	return append(seeds, two, []byte{'S', 0xff, 0xff, 0xff, 0xff}, []byte{'Z', 0, 0, 0, 0}, []byte{'R', 0, 0})
}

// FuzzMeshFrame checks the control stream's frame reader: no panic, no
// payload above the bound it is given (so no allocation above it), only
// known types, and what it reads re-encodes to the bytes it consumed.
func FuzzMeshFrame(f *testing.F) {
	for _, s := range meshFrameSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const max = 1 << 10
		r := bytes.NewReader(data)
		for {
			before := r.Len()
			typ, payload, err := mesh.ReadFrame(r, max)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, mesh.ErrFrame) {
					t.Fatalf("unexpected error kind: %v", err)
				}
				return
			}
			if len(payload) > max {
				t.Fatalf("payload of %d bytes above the bound %d", len(payload), max)
			}
			consumed := data[len(data)-before : len(data)-r.Len()]
			b, err := mesh.AppendFrame(nil, typ, payload)
			if err != nil || !bytes.Equal(b, consumed) {
				t.Fatalf("re-encoding %c/%d bytes: %x, %v; consumed %x", typ, len(payload), b, err, consumed)
			}
		}
	})
}

func meshForwardSeeds() [][]byte {
	var id identity.ID
	for i := range id {
		id[i] = byte(i)
	}
	var seeds [][]byte
	for _, h := range []tunnel.Header{
		{Service: "https", Visitor: netip.MustParseAddrPort("203.0.113.7:51000")},
		{Service: "https", Visitor: netip.MustParseAddrPort("[2001:db8::1]:443")},
		{Service: "x"},
	} {
		b, err := mesh.AppendForwardHeader(nil, id, h)
		if err != nil {
			panic(err)
		}
		seeds = append(seeds, b)
	}
	return append(seeds, []byte{1}, []byte{2, 0, 0}, append([]byte{1}, make([]byte, 34)...))
}

// FuzzMeshForwardHeader checks the header of forwarded streams: no
// panic, a bounded read, and re-encoding of what decodes.
func FuzzMeshForwardHeader(f *testing.F) {
	for _, s := range meshForwardSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		id, h, err := mesh.ReadForwardHeader(r)
		read := len(data) - r.Len()
		if read > 1+32+tunnel.MaxHeaderLen {
			t.Fatalf("read %d bytes, more than a header", read)
		}
		if err != nil {
			return
		}
		b, err := mesh.AppendForwardHeader(nil, id, h)
		if err != nil || !bytes.Equal(b, data[:read]) {
			t.Fatalf("re-encoding: %x, %v; read %x", b, err, data[:read])
		}
	})
}
