package fuzz

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/elacity/pc2/relay/tunnel"
)

func tunnelControlSeeds() [][]byte {
	ms := []tunnel.Control{
		{Type: tunnel.MsgPortRequest, Proto: tunnel.ProtoTCP, Service: "ssh"},
		{Type: tunnel.MsgPortRequest, Proto: tunnel.ProtoUDP, Service: "dns"},
		{Type: tunnel.MsgPortGrant, Proto: tunnel.ProtoTCP, Service: "ssh", Port: 20000},
		{Type: tunnel.MsgPortRefused, Proto: tunnel.ProtoUDP, Service: "game-1", Code: tunnel.RefuseQuota, Reason: "node holds its 4 ports"},
		{Type: tunnel.MsgPortRefused, Proto: tunnel.ProtoTCP, Service: "a", Code: tunnel.RefuseExhausted},
	}
	var seeds [][]byte
	for _, m := range ms {
		b, err := m.AppendBinary(nil)
		if err != nil {
			panic(err)
		}
		seeds = append(seeds, b)
	}
	return append(seeds,
		[]byte{1, 1, 1, 0},                  // empty service
		[]byte{1, 9, 1, 1, 'a', 0, 0, 0, 0}, // unknown type
		[]byte{1, 2, 1, 1, 'a', 0, 0, 0, 0}, // grant without a port
		[]byte{1, 3, 2, 1, 'a', 0, 0, 2, 255},
	)
}

// FuzzTunnelControl checks that the control message decoders never
// panic, agree with each other, consume at most MaxControlLen bytes, fail
// only with ErrBadControl, and that what decodes re-encodes to the same
// bytes.
func FuzzTunnelControl(f *testing.F) {
	for _, s := range tunnelControlSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, n, err := tunnel.ParseControl(data)
		r := bytes.NewReader(data)
		m2, err2 := tunnel.ReadControl(r)
		if err != nil {
			if !errors.Is(err, tunnel.ErrBadControl) {
				t.Fatalf("error %v does not wrap ErrBadControl", err)
			}
			if err2 == nil {
				t.Fatalf("ReadControl accepted %x that ParseControl refused (%v)", data, err)
			}
			return
		}
		if err2 != nil || m2 != m {
			t.Fatalf("ReadControl = %+v, %v; ParseControl = %+v", m2, err2, m)
		}
		if n > tunnel.MaxControlLen || n > len(data) {
			t.Fatalf("consumed %d bytes (max %d, have %d)", n, tunnel.MaxControlLen, len(data))
		}
		if read := len(data) - r.Len(); read != n {
			t.Fatalf("ReadControl read %d bytes, message is %d", read, n)
		}
		b, err := m.AppendBinary(nil)
		if err != nil {
			t.Fatalf("decoded message %+v does not encode: %v", m, err)
		}
		if !bytes.Equal(b, data[:n]) {
			t.Fatalf("re-encoded %x, decoded from %x", b, data[:n])
		}
	})
}

func tunnelDatagramSeeds() [][]byte {
	ds := []tunnel.Datagram{
		{Port: 20000, Flow: 1, Visitor: netip.MustParseAddrPort("203.0.113.7:53000")},
		{Port: 21999, Flow: 0xfffffffe, Visitor: netip.MustParseAddrPort("[2001:db8::7]:443")},
		{Port: 20001, Flow: 7},
	}
	var seeds [][]byte
	for i, d := range ds {
		b, err := d.AppendBinary(nil)
		if err != nil {
			panic(err)
		}
		seeds = append(seeds, append(b, bytes.Repeat([]byte{'p'}, i*10)...))
	}
	return append(seeds, make([]byte, 64), []byte{1, 0, 0, 0, 0, 0, 1, 0}, []byte{1, 1, 1, 0, 0, 0, 1, 6, 0})
}

// FuzzTunnelDatagram checks that the datagram header decoder never
// panics, fails only with ErrBadDatagram, reads a header of at most
// MaxDatagramHeaderLen bytes, returns the rest as the payload, and that
// the header re-encodes to the same bytes.
func FuzzTunnelDatagram(f *testing.F) {
	for _, s := range tunnelDatagramSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, payload, err := tunnel.ParseDatagram(data)
		if err != nil {
			if !errors.Is(err, tunnel.ErrBadDatagram) {
				t.Fatalf("error %v does not wrap ErrBadDatagram", err)
			}
			return
		}
		hlen := len(data) - len(payload)
		if hlen < 0 || hlen > tunnel.MaxDatagramHeaderLen || !bytes.Equal(payload, data[hlen:]) {
			t.Fatalf("header %d bytes (max %d), payload not the tail", hlen, tunnel.MaxDatagramHeaderLen)
		}
		b, err := d.AppendBinary(nil)
		if err != nil {
			t.Fatalf("decoded header %+v does not encode: %v", d, err)
		}
		if !bytes.Equal(b, data[:hlen]) {
			t.Fatalf("re-encoded %x, decoded from %x", b, data[:hlen])
		}
	})
}
