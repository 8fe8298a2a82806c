package fuzz

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/elacity/pc2/transport/peer"
)

func peerHeaderSeeds() [][]byte {
	h, _ := peer.AppendHeader(nil, "echo")
	long, _ := peer.AppendHeader(nil, string(bytes.Repeat([]byte("p"), peer.MaxProtocolLen)))
	return [][]byte{
		h, long,
		append(h, "trailing stream bytes"...),
		{1, 0},                     // empty name
		{1, 65},                    // too long
		{2, 4, 'e', 'c', 'h', 'o'}, // version
		{1, 4, 'e', ' ', 'h', 'o'}, // space
		{1, 4, 'e', 'c'},           // truncated
		{0, 2, 0x01, 0x00, 'x'},    // control-message-shaped
		{},
	}
}

// FuzzPeerStreamHeader checks the stream header decoder of transport/peer:
// no panic; it reads at most 2+MaxProtocolLen bytes; an accepted header
// names a valid protocol and re-encodes to exactly the bytes read; every
// refusal is ErrBadHeader or a short read. Then the same bytes as control
// messages: accepted ones are 1..1024 bytes, taken from the prefix stated.
func FuzzPeerStreamHeader(f *testing.F) {
	for _, s := range peerHeaderSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		p, err := peer.ReadHeader(r)
		read := len(b) - r.Len()
		if read > 2+peer.MaxProtocolLen {
			t.Fatalf("read %d bytes", read)
		}
		if err == nil {
			if peer.CheckProtocol(p) != nil {
				t.Fatalf("accepted protocol %q", p)
			}
			enc, err := peer.AppendHeader(nil, p)
			if err != nil || !bytes.Equal(enc, b[:read]) {
				t.Fatalf("re-encoding %q: % x, %v; read % x", p, enc, err, b[:read])
			}
		} else if !errors.Is(err, peer.ErrBadHeader) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("refused with neither ErrBadHeader nor a short read: %v", err)
		}
		r = bytes.NewReader(b)
		m, err := peer.ReadMsg(r)
		if err == nil {
			if len(m) == 0 || len(m) > 1024 || !bytes.Equal(m, b[2:2+len(m)]) || len(b)-r.Len() != 2+len(m) {
				t.Fatalf("control message of %d bytes from % x", len(m), b)
			}
		}
	})
}
