package cborcmp

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"testing"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/message"
	"github.com/fxamacker/cbor/v2"
)

// findNode8 is the CompatibilityTests golden "findNodeResponses/V4".
const findNode8 = "bf6179184261741910e16172bf626e34889f5820f4f859a871aac9a88f23ff8c95a59efb94f35b7d0781c3b84322caf6f462ced744c0a8010119ffffff9f5820f4f859a871aac9a88f23ff8c95a59efb94f35b7d0781c3b84322caf6f462ced844c0a8010219fffeff9f5820f4f859a871aac9a88f23ff8c95a59efb94f35b7d0781c3b84322caf6f462ceda44c0a8010319fffdff9f5820f4f859a871aac9a88f23ff8c95a59efb94f35b7d0781c3b84322caf6f462cede44c0a8010419fffcff9f5820f4f859a871aac9a88f23ff8c95a59efb94f35b7d0781c3b84322caf6f462cee644c0a8010519fffbff9f5820f4f859a871aac9a88f23ff8c95a59efb94f35b7d0781c3b84322caf6f462cef644c0a8010619fffaff9f5820f4f859a871aac9a88f23ff8c95a59efb94f35b7d0781c3b84322caf6f462cf1644c0a8010719fff9ff9f5820f4f859a871aac9a88f23ff8c95a59efb94f35b7d0781c3b84322caf6f462cf5644c0a8010819fff8ffff61761a4f520001ff"

func golden(tb testing.TB) []byte {
	b, err := hex.DecodeString(findNode8)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// The fxamacker side: struct decoding (node entries as 3-element arrays,
// which is all this golden needs; the 5-tuple form would need a custom
// unmarshaler) followed by conversion to the same message.Message.
type fxNode struct {
	_    struct{} `cbor:",toarray"`
	ID   []byte
	IP   []byte
	Port uint16
}

type fxBody struct {
	N4  []fxNode `cbor:"n4,omitempty"`
	N6  []fxNode `cbor:"n6,omitempty"`
	Tok int32    `cbor:"tok,omitempty"`
}

type fxMsg struct {
	Y uint8   `cbor:"y"`
	T uint64  `cbor:"t"`
	R *fxBody `cbor:"r,omitempty"`
	V int32   `cbor:"v,omitempty"`
}

var decMode, _ = cbor.DecOptions{MaxNestedLevels: 16, DupMapKey: cbor.DupMapKeyEnforcedAPF}.DecMode()

func toNodes(dst []message.NodeInfo, src []fxNode) ([]message.NodeInfo, bool) {
	for _, n := range src {
		id, err := identity.IDFromBytes(n.ID)
		ip, ok := netip.AddrFromSlice(n.IP)
		if err != nil || !ok {
			return dst, false
		}
		ni := message.NodeInfo{ID: id}
		if ip = ip.Unmap(); ip.Is4() {
			ni.Addr4 = netip.AddrPortFrom(ip, n.Port)
		} else {
			ni.Addr6 = netip.AddrPortFrom(ip, n.Port)
		}
		dst = append(dst, ni)
	}
	return dst, true
}

func fxDecode(b []byte, m *message.Message) bool {
	var x fxMsg
	if err := decMode.Unmarshal(b, &x); err != nil || x.R == nil {
		return false
	}
	m.Reset()
	m.Type, m.Method, m.Txid, m.Version = message.Type(x.Y&0xe0), message.Method(x.Y&0x1f), x.T, x.V
	m.Token = x.R.Tok
	var ok4, ok6 bool
	m.Nodes4, ok4 = toNodes(m.Nodes4, x.R.N4)
	m.Nodes6, ok6 = toNodes(m.Nodes6, x.R.N6)
	return ok4 && ok6
}

// fxEncode drives fxamacker's streaming encoder key by key: struct encoding
// would write definite-length maps, which are not Boson's bytes.
func fxEncode(buf *bytes.Buffer, m *message.Message) error {
	buf.Reset()
	enc := cbor.NewEncoder(buf)
	enc.StartIndefiniteMap()
	enc.Encode("y")
	enc.Encode(m.Y())
	enc.Encode("t")
	enc.Encode(m.Txid)
	enc.Encode("r")
	enc.StartIndefiniteMap()
	for _, l := range []struct {
		k  string
		ns []message.NodeInfo
	}{{"n4", m.Nodes4}, {"n6", m.Nodes6}} {
		if len(l.ns) == 0 {
			continue
		}
		enc.Encode(l.k)
		// A definite array header for the list, as Boson writes it.
		hdr := []byte{0x80 | byte(len(l.ns))}
		buf.Write(hdr)
		for i := range l.ns {
			n := &l.ns[i]
			enc.StartIndefiniteArray()
			enc.Encode(n.ID[:])
			a := n.Addr4
			if !a.IsValid() {
				a = n.Addr6
			}
			ip := a.Addr().AsSlice()
			enc.Encode(ip)
			enc.Encode(a.Port())
			enc.EndIndefinite()
		}
	}
	if m.Token != 0 {
		enc.Encode("tok")
		enc.Encode(m.Token)
	}
	enc.EndIndefinite()
	if m.Version != 0 {
		enc.Encode("v")
		enc.Encode(m.Version)
	}
	return enc.EndIndefinite()
}

// TestBothAgree proves both codecs do the same job before they are timed.
func TestBothAgree(t *testing.T) {
	g := golden(t)
	var a, b message.Message
	if err := a.Decode(g, message.V3); err != nil {
		t.Fatal(err)
	}
	if !fxDecode(g, &b) {
		t.Fatal("fxamacker decode failed")
	}
	if !a.Equal(&b) || len(a.Nodes4) != 8 {
		t.Fatal("codecs decode differently")
	}
	var buf bytes.Buffer
	if err := fxEncode(&buf, &a); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), g) {
		t.Fatalf("fxamacker encoding differs from the golden:\n%x", buf.Bytes())
	}
	out, _ := a.Append(nil, message.V3)
	if !bytes.Equal(out, g) {
		t.Fatal("hand-written encoding differs from the golden")
	}
}

func BenchmarkFindNode8(b *testing.B) {
	g := golden(b)
	var m message.Message
	if err := m.Decode(g, message.V3); err != nil {
		b.Fatal(err)
	}
	m = *m.Clone()
	b.Run("decode/handwritten", func(b *testing.B) {
		var d message.Message
		b.ReportAllocs()
		for b.Loop() {
			if err := d.Decode(g, message.V3); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode/fxamacker", func(b *testing.B) {
		var d message.Message
		b.ReportAllocs()
		for b.Loop() {
			if !fxDecode(g, &d) {
				b.Fatal("decode")
			}
		}
	})
	b.Run("encode/handwritten", func(b *testing.B) {
		buf := make([]byte, 0, 2048)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := m.Append(buf[:0], message.V3); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encode/fxamacker", func(b *testing.B) {
		var buf bytes.Buffer
		buf.Grow(2048)
		b.ReportAllocs()
		for b.Loop() {
			if err := fxEncode(&buf, &m); err != nil {
				b.Fatal(err)
			}
		}
	})
}
