package fuzz

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/elacity/pc2/relay/circuit"
)

func relayDataSeeds() [][]byte {
	sid := circuit.SessionID{1, 2, 3, 4, 5, 6, 7, 8}
	return [][]byte{
		circuit.AppendData(nil, sid, nil),
		circuit.AppendData(nil, sid, []byte("\xc3\x00\x00\x00\x01quic-long-header")),
		circuit.AppendData(nil, sid, bytes.Repeat([]byte{0x41}, circuit.MaxPayload)),
		{circuit.TypeData, 1, 2, 3},
		{0x3a, 0, 0, 0, 0, 0, 0, 0, 0},
	}
}

// FuzzRelayData checks the relay's data header parser: no panic, errors
// are the package's, accepted packets are bounded and re-encode to the
// same bytes, and the payload aliases the packet's tail.
func FuzzRelayData(f *testing.F) {
	for _, s := range relayDataSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		sid, payload, err := circuit.ParseData(data)
		if err != nil {
			if !errors.Is(err, circuit.ErrShortPacket) && !errors.Is(err, circuit.ErrNotData) && !errors.Is(err, circuit.ErrLongPacket) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if len(data) > circuit.MaxPacket || len(payload) > circuit.MaxPayload {
			t.Fatalf("accepted %d bytes (payload %d)", len(data), len(payload))
		}
		if data[0] >= 0x40 {
			t.Fatalf("accepted first byte %#x: QUIC would claim it", data[0])
		}
		if re := circuit.AppendData(nil, sid, payload); !bytes.Equal(re, data) {
			t.Fatalf("re-encoded %x, want %x", re, data)
		}
		if len(payload) > 0 && &payload[len(payload)-1] != &data[len(data)-1] {
			t.Fatal("payload does not alias the packet")
		}
	})
}

func relayControlSeeds() [][]byte {
	var id [32]byte
	for i := range id {
		id[i] = byte(i)
	}
	lim := circuit.Limits{BytesPerSecond: 1 << 20, MaxBytes: 1 << 30, MaxDuration: time.Hour}
	msgs := []circuit.Msg{
		{Type: circuit.MsgReserve},
		{Type: circuit.MsgReserved, TTL: 10 * time.Minute, Limits: lim},
		{Type: circuit.MsgConnect, Peer: id},
		{Type: circuit.MsgConnected, Session: circuit.SessionID{9, 9}, Peer: id, Limits: lim},
		{Type: circuit.MsgIncoming, Session: circuit.SessionID{1}, Peer: id},
		{Type: circuit.MsgAccept, Session: circuit.SessionID{1}},
		{Type: circuit.MsgClosed, Session: circuit.SessionID{1}, Reason: circuit.ReasonBytes},
		{Type: circuit.MsgError, Code: circuit.CodeRateLimited, Text: "too many new reservations per second"},
		{Type: circuit.MsgError, Code: circuit.CodeNoPeer},
	}
	var seeds [][]byte
	for _, m := range msgs {
		b, err := m.Append(nil)
		if err != nil {
			panic(err)
		}
		seeds = append(seeds, b)
	}
	return append(seeds, []byte{9}, []byte{byte(circuit.MsgError), 1, 5, 'a'}, []byte{3, 1, 2})
}

// FuzzRelayControl checks the control message decoders: no panic, errors
// are the package's, what decodes re-encodes to the same bytes, the framed
// reader agrees with the parser and never reads past one frame.
func FuzzRelayControl(f *testing.F) {
	for _, s := range relayControlSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := circuit.ParseMsg(data)
		// The same bytes framed, followed by garbage the reader must not touch.
		framed := binary.BigEndian.AppendUint16(nil, uint16(len(data)))
		framed = append(framed, data...)
		framed = append(framed, 0xff, 0xee)
		r := bytes.NewReader(framed)
		m2, err2 := circuit.ReadMsg(r)
		if err != nil {
			if !errors.Is(err, circuit.ErrBadMsg) && !errors.Is(err, circuit.ErrLongMsg) {
				t.Fatalf("unexpected error %v", err)
			}
			if err2 == nil && len(data) <= 0xffff {
				t.Fatalf("ReadMsg accepted what ParseMsg refused (%v)", err)
			}
			if len(data) > circuit.MaxMsg && r.Len() < len(framed)-2 {
				t.Fatalf("ReadMsg read the body of a %d-byte frame", len(data))
			}
			return
		}
		if len(data) > circuit.MaxMsg {
			t.Fatalf("accepted a %d-byte message", len(data))
		}
		if err2 != nil || m2 != m {
			t.Fatalf("ReadMsg = %+v, %v; ParseMsg = %+v", m2, err2, m)
		}
		if r.Len() != 2 {
			t.Fatalf("ReadMsg left %d bytes, want the 2 after the frame", r.Len())
		}
		b, err := m.Append(nil)
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", m, err)
		}
		if !bytes.Equal(b, data) {
			t.Fatalf("re-encoded %x, want %x", b, data)
		}
		var w bytes.Buffer
		if err := circuit.WriteMsg(&w, &m); err != nil || !bytes.Equal(w.Bytes(), framed[:len(framed)-2]) {
			t.Fatalf("WriteMsg = %x, %v", w.Bytes(), err)
		}
	})
}
