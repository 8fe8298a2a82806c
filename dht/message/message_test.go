package message

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"testing"

	"github.com/elacity/pc2/core/cryptobox"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/internal/cbor"
	"github.com/elacity/pc2/dht/record"
)

// ---- a tiny generic CBOR item tree, to rewrite goldens in other legal forms ----

type item struct {
	major byte
	arg   uint64 // ints, tags, simple values
	str   []byte // byte and text strings
	kids  []item // array items, map keys and values interleaved, tag content
	raw   []byte // simple values and floats, verbatim
}

func parseItem(t testing.TB, b []byte) (item, []byte) {
	t.Helper()
	ib := b[0]
	major, info := ib>>5, ib&0x1f
	var arg uint64
	n := 0
	switch {
	case info < 24:
		arg = uint64(info)
	case info <= 27:
		n = 1 << (info - 24)
		for _, c := range b[1 : 1+n] {
			arg = arg<<8 | uint64(c)
		}
	case info == 31:
		n = -1
	}
	rest := b[1:]
	if n > 0 {
		rest = b[1+n:]
	}
	it := item{major: major, arg: arg}
	switch major {
	case 0, 1:
	case 2, 3:
		if n < 0 {
			for rest[0] != 0xff {
				var c item
				c, rest = parseItem(t, rest)
				it.str = append(it.str, c.str...)
			}
			rest = rest[1:]
		} else {
			it.str, rest = rest[:arg], rest[arg:]
		}
	case 4, 5:
		count := int(arg)
		if major == 5 {
			count *= 2
		}
		for i := 0; n < 0 || i < count; i++ {
			if n < 0 && rest[0] == 0xff {
				rest = rest[1:]
				break
			}
			var c item
			c, rest = parseItem(t, rest)
			it.kids = append(it.kids, c)
		}
	case 6:
		var c item
		c, rest = parseItem(t, rest)
		it.kids = []item{c}
	case 7:
		it.raw = b[:len(b)-len(rest)]
	}
	return it, rest
}

type style struct {
	indefinite bool // maps and arrays
	chunked    bool // strings in two chunks
	sortKeys   bool // keys sorted like nlohmann (native v2)
	longHeads  bool // non-shortest integer heads
}

func (it item) write(b []byte, s style) []byte {
	head := func(b []byte, major byte, arg uint64) []byte {
		if s.longHeads && arg < 1<<32 {
			return append(b, major<<5|26, byte(arg>>24), byte(arg>>16), byte(arg>>8), byte(arg))
		}
		return cbor.AppendHead(b, major, arg)
	}
	switch it.major {
	case 0, 1, 6:
		b = head(b, it.major, it.arg)
		for _, k := range it.kids {
			b = k.write(b, s)
		}
	case 2, 3:
		if s.chunked && len(it.str) > 1 {
			h := len(it.str) / 2
			b = append(b, it.major<<5|31)
			b = head(b, it.major, uint64(h))
			b = append(b, it.str[:h]...)
			b = head(b, it.major, uint64(len(it.str)-h))
			b = append(b, it.str[h:]...)
			return append(b, 0xff)
		}
		b = head(b, it.major, uint64(len(it.str)))
		b = append(b, it.str...)
	case 4, 5:
		kids := it.kids
		if it.major == 5 && s.sortKeys {
			type pair struct{ k, v item }
			ps := make([]pair, 0, len(kids)/2)
			for i := 0; i < len(kids); i += 2 {
				ps = append(ps, pair{kids[i], kids[i+1]})
			}
			sort.SliceStable(ps, func(i, j int) bool { return string(ps[i].k.str) < string(ps[j].k.str) })
			kids = nil
			for _, p := range ps {
				kids = append(kids, p.k, p.v)
			}
		}
		count := len(kids)
		if it.major == 5 {
			count /= 2
		}
		if s.indefinite {
			b = append(b, it.major<<5|31)
		} else {
			b = head(b, it.major, uint64(count))
		}
		for _, k := range kids {
			b = k.write(b, s)
		}
		if s.indefinite {
			b = append(b, 0xff)
		}
	case 7:
		b = append(b, it.raw...)
	}
	return b
}

func restyle(t testing.TB, b []byte, s style) []byte {
	it, rest := parseItem(t, b)
	if len(rest) != 0 {
		t.Fatalf("trailing bytes in golden")
	}
	return it.write(nil, s)
}

// TestGoldensInOtherForms decodes every golden rewritten with definite
// lengths, chunked strings and non-shortest heads, all legal CBOR that
// Boson's Jackson decoder accepts, and requires the same message.
func TestGoldensInOtherForms(t *testing.T) {
	for _, g := range loadGoldens(t) {
		var want Message
		if err := want.Decode(g.cbor, V3); err != nil {
			t.Fatal(err)
		}
		for _, s := range []style{{}, {indefinite: true, chunked: true}, {longHeads: true}, {chunked: true, longHeads: true}} {
			b := restyle(t, g.cbor, s)
			var m Message
			if err := m.Decode(b, V3); err != nil {
				t.Errorf("%s %+v: %v", g.name, s, err)
				continue
			}
			if !m.Equal(&want) {
				t.Errorf("%s %+v: decoded differently", g.name, s)
			}
			// Re-encoding goes back to Boson's exact form.
			out, _ := m.Append(nil, V3)
			if !bytes.Equal(out, g.cbor) {
				t.Errorf("%s %+v: re-encoding differs", g.name, s)
			}
		}
	}
}

// TestSortedKeys: a message whose keys are sorted (y last, as native v2
// nodes write) is refused by the V3 decoder like 3.x refuses it, and read by
// the V2 decoder.
func TestSortedKeys(t *testing.T) {
	for _, g := range loadGoldens(t) {
		b := restyle(t, g.cbor, style{sortKeys: true})
		var want, m Message
		_ = want.Decode(g.cbor, V3)
		hasBody := want.hasBody()
		err := m.Decode(b, V3)
		if hasBody && (err == nil || !errors.Is(err, ErrMalformed)) {
			t.Errorf("%s: V3 accepted a body before y: %v", g.name, err)
		}
		if !hasBody && err != nil {
			t.Errorf("%s: %v", g.name, err)
		}
		if want.Type == TypeRequest && want.Method != MethodPing && want.Method != MethodFindNode {
			continue // v2 bodies of these differ from v3
		}
		if want.Type == TypeResponse && (want.Method == MethodFindPeer || want.Method == MethodFindValue) {
			continue
		}
		if err := m.Decode(b, V2); err != nil {
			t.Errorf("%s: V2 refused sorted keys: %v", g.name, err)
		} else if !m.Equal(&want) {
			t.Errorf("%s: V2 decoded differently", g.name)
		}
	}
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeRejects(t *testing.T) {
	ping := "bf6179182161740a61761a4f520001ff"
	cases := map[string]string{
		"empty":                 "",
		"not a map":             "80",
		"truncated":             ping[:len(ping)-4],
		"trailing":              ping + "00",
		"no y":                  "bf61740aff",
		"no t":                  "bf61791821ff",
		"t zero":                "bf617918216174 00ff",
		"t negative":            "bf6179182161742aff",
		"t above int64":         "bf617918216174 1bffffffffffffffff ff",
		"y type 0x60":           "bf6179186161740aff",
		"y extra bits":          "bf61791901216174 0aff",
		"duplicate t":           "bf6179182161740a61740bff",
		"duplicate y":           "bf617918216179182161740aff",
		"ping with q":           "bf6179182161740a6171bfffff",
		"q in a response":       "bf6179184261740a6171bfffff",
		"r before y":            "bf6172bfff6179184261740aff",
		"find_node no body":     "bf6179182261740aff",
		"find_node no target":   "bf6179182261740a6171bf617701ffff",
		"want 8":                "bf6179182261740a6171bf6174582000000000000000000000000000000000000000000000000000000000000000006177 08ffff",
		"target 31 bytes":       "bf6179182261740a6171bf6174581f00000000000000000000000000000000000000000000000000000000000000617701ffff",
		"v not int32":           "bf6179182161740a61761b0000000100000000ff",
		"null body":             "bf6179184261740a6172f6ff",
		"depth bomb":            "bf6179182161740a617a" + repeat("81", 40) + "00ff",
		"huge claimed string":   "bf6179182161740a617a5bffffffffffffffffff",
		"huge claimed map":      "bf6179182161740a617abbffffffffffffffff",
		"break outside":         "bf6179182161740aff ff",
		"reserved info":         "bf6179182161740a617a1cff",
		"error without code":    "bf61790261740a6165bfffff",
		"store without token":   "bf6179182561740a6171bf617641ffffff",
		"store without value":   "bf6179182561740a6171bf63746f6b01ffff",
		"node with hostname":    "bf6179184261740a6172bf626e34819f5820" + repeat("01", 32) + "6b6578616d706c652e636f6d1904d2ffffff",
		"node without address":  "bf6179184261740a6172bf626e34819f5820" + repeat("01", 32) + "ffffff",
		"node ip 5 bytes":       "bf6179184261740a6172bf626e34819f5820" + repeat("01", 32) + "45c0a80101011904d2ffffff",
		"node two ipv4":         "bf6179184261740a6172bf626e34819f5820" + repeat("01", 32) + "44c0a801011904d244c0a801021904d2ffffff",
		"node port 70000":       "bf6179184261740a6172bf626e34819f5820" + repeat("01", 32) + "44c0a801011a00011170ffffff",
		"node zero id":          "bf6179184261740a6172bf626e34819f5820" + repeat("00", 32) + "44c0a801011904d2ffffff",
		"find_value r nothing":  "bf6179184661740a6172bfffff",
		"text key not UTF-8 ok": "",
	}
	for name, h := range cases {
		if name == "text key not UTF-8 ok" {
			continue
		}
		b := mustHex(t, removeSpaces(h))
		var m Message
		err := m.Decode(b, V3)
		t.Logf("%-22s %v", name, err)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		var de *DecodeError
		if !errors.As(err, &de) {
			t.Errorf("%s: error %T is not a *DecodeError", name, err)
		}
	}
}

func repeat(s string, n int) string {
	var b bytes.Buffer
	for range n {
		b.WriteString(s)
	}
	return b.String()
}

func removeSpaces(s string) string { return string(bytes.ReplaceAll([]byte(s), []byte(" "), nil)) }

func TestUnknownMethodKeepsEnvelope(t *testing.T) {
	// y = 0x27 (request, method 7), t = 77, a body the codec cannot know.
	b := mustHex(t, "bf617918276174184d6171bf6178f5ffff")
	var m Message
	err := m.Decode(b, V3)
	var de *DecodeError
	if !errors.As(err, &de) || !errors.Is(err, ErrUnknownMethod) {
		t.Fatalf("err = %v", err)
	}
	if de.Txid != 77 || de.Type != TypeRequest || de.Method != 7 {
		t.Fatalf("envelope %+v", de)
	}
	var reply Message
	reply.Fail(&Message{Method: de.Method, Txid: de.Txid}, CodeMethodUnknown, "unknown method")
	if _, err := reply.Append(nil, V3); err == nil {
		t.Fatal("an error for method 7 cannot be encoded: method 7 is not a method of the protocol")
	}
}

func TestWantBitsV2Masked(t *testing.T) {
	b := mustHex(t, "bf6179182261740a6171bf617458200000000000000000000000000000000000000000000000000000000000000000617709ffff")
	var m Message
	if err := m.Decode(b, V3); err == nil {
		t.Fatal("V3 accepted w=9")
	}
	if err := m.Decode(b, V2); err != nil || m.Want != WantIPv4 {
		t.Fatalf("V2: want %v err %v", m.Want, err)
	}
}

func TestNullIsAbsent(t *testing.T) {
	// Error with m: null, and v: null.
	b := mustHex(t, "bf61790261740a6165bf6163186f616df6ff6176f6ff")
	var m Message
	if err := m.Decode(b, V3); err != nil {
		t.Fatal(err)
	}
	if m.Err.Code != 111 || m.Err.Message != "" || m.Version != 0 {
		t.Fatalf("%+v", m.Err)
	}
}

func TestNodeForms(t *testing.T) {
	id := bytes.Repeat([]byte{1}, 32)
	mapped := append(append(make([]byte, 10), 0xff, 0xff), 192, 168, 1, 1)
	body := "bf6179184261740a6172bf626e3483" +
		// IPv4-mapped IPv6 counts as IPv4.
		"9f5820" + hex.EncodeToString(id) + "50" + hex.EncodeToString(mapped) + "1904d2ff" +
		// A textual IP literal (Java's unresolved-host form).
		"835820" + hex.EncodeToString(id) + "6b3139322e3136382e312e321904d3" +
		// 5-tuple, IPv6 first.
		"855820" + hex.EncodeToString(id) + "5020010db8000000000000000000000001190001" + "44c0a80103190002" +
		"ffff"
	var m Message
	if err := m.Decode(mustHex(t, body), V3); err != nil {
		t.Fatal(err)
	}
	want := []NodeInfo{
		{ID: identity.ID(id), Addr4: netip.MustParseAddrPort("192.168.1.1:1234")},
		{ID: identity.ID(id), Addr4: netip.MustParseAddrPort("192.168.1.2:1235")},
		{ID: identity.ID(id), Addr4: netip.MustParseAddrPort("192.168.1.3:2"), Addr6: netip.MustParseAddrPort("[2001:db8::1]:1")},
	}
	if fmt.Sprint(m.Nodes4) != fmt.Sprint(want) {
		t.Fatalf("nodes\n got %v\nwant %v", m.Nodes4, want)
	}
	// Re-encoded, the 5-tuple is written IPv4 first, like Java.
	out, _ := m.Append(nil, V3)
	var back Message
	if err := back.Decode(out, V3); err != nil || !back.Equal(&m) {
		t.Fatalf("round trip: %v", err)
	}
	// v2 has triples only: the dual-stack node is written with its IPv4
	// address in n4.
	out, _ = m.Append(nil, V2)
	if err := back.Decode(out, V2); err != nil {
		t.Fatal(err)
	}
	if back.Nodes4[2].Addr6.IsValid() || back.Nodes4[2].Addr4 != want[2].Addr4 {
		t.Fatalf("v2 dual-stack entry %v", back.Nodes4[2])
	}
}

func TestTooManyNodes(t *testing.T) {
	var m Message
	m.Type, m.Method, m.Txid = TypeResponse, MethodFindNode, 1
	for i := range maxNodesPerList + 1 {
		var id identity.ID
		id[0], id[1] = 1, byte(i)
		m.Nodes4 = append(m.Nodes4, NodeInfo{ID: id, Addr4: netip.MustParseAddrPort("203.0.113.1:1")})
	}
	b, err := m.Append(nil, V3)
	if err != nil {
		t.Fatal(err)
	}
	var d Message
	if err := d.Decode(b, V3); err == nil {
		t.Fatal("accepted more nodes than the list cap")
	}
	m.Nodes4 = m.Nodes4[:maxNodesPerList]
	b, _ = m.Append(nil, V3)
	if err := d.Decode(b, V3); err != nil {
		t.Fatal(err)
	}
}

func keyPair(t testing.TB, first byte) *identity.KeyPair {
	t.Helper()
	seed := make([]byte, 32)
	for i := range seed {
		seed[i] = first + byte(i)
	}
	kp, err := identity.FromSeed(seed)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

// sampleMessages builds one message of every kind and body variant, with
// valid records, for dialect d.
func sampleMessages(t testing.TB, d Dialect) []Message {
	a, b := keyPair(t, 0), keyPair(t, 0x20)
	v := MakeVersion("PC", 1)
	target := b.ID()
	n4 := []NodeInfo{
		{ID: a.ID(), Addr4: netip.MustParseAddrPort("203.0.113.1:39001")},
		{ID: b.ID(), Addr4: netip.MustParseAddrPort("198.51.100.7:39002")},
	}
	n6 := []NodeInfo{{ID: a.ID(), Addr6: netip.MustParseAddrPort("[2001:db8::5]:39001")}}
	var val record.Value
	var enc record.Value
	var nonce cryptobox.Nonce
	nonce[3] = 9
	if d == V3 {
		val, _ = record.NewSigned(a, 4, []byte("name record"))
		enc, _ = record.NewEncrypted(a, b.ID(), 2, []byte("hi"), rand.Reader)
	} else {
		val, _ = record.NewSignedV2(a, nonce, 4, []byte("name record"))
		enc, _ = record.NewEncryptedV2(a, b.ID(), nonce, 2, []byte("hi"))
	}
	imm, _ := record.NewImmutable([]byte("blob"))
	p1, _ := record.NewPeer(a, nil, 0, 1, "tcp://203.0.113.9:443", nil)
	p2, _ := record.NewPeer(a, b, 3, -5, "https://alice.ela.city/", []byte(`{"x":1}`))
	q1, _ := record.NewPeerV2(a, b.ID(), b.ID(), 8090, "")
	q2, _ := record.NewPeerV2(a, b.ID(), a.ID(), 20000, "alice.pc2.net")

	ms := []Message{
		{Type: TypeRequest, Method: MethodPing, Txid: 1, Version: v},
		{Type: TypeResponse, Method: MethodPing, Txid: 1, Version: v},
		{Type: TypeRequest, Method: MethodFindNode, Txid: 2, Version: v, Target: target, Want: WantIPv4 | WantIPv6 | WantToken},
		{Type: TypeResponse, Method: MethodFindNode, Txid: 2, Version: v, Nodes4: n4, Nodes6: n6, Token: -123456},
		{Type: TypeResponse, Method: MethodFindNode, Txid: 2},
		{Type: TypeRequest, Method: MethodFindValue, Txid: 3, Target: target, Want: WantIPv4, CAS: 7, HasCAS: true},
		{Type: TypeRequest, Method: MethodFindValue, Txid: 3, Target: target, Want: WantIPv6},
		{Type: TypeResponse, Method: MethodFindValue, Txid: 3, Value: val, HasValue: true},
		{Type: TypeResponse, Method: MethodFindValue, Txid: 3, Value: enc, HasValue: true},
		{Type: TypeResponse, Method: MethodFindValue, Txid: 3, Value: imm, HasValue: true, Nodes4: n4},
		{Type: TypeResponse, Method: MethodFindValue, Txid: 3, Nodes6: n6},
		{Type: TypeRequest, Method: MethodStoreValue, Txid: 4, Token: 99, Value: val, HasValue: true, CAS: 3, HasCAS: true},
		{Type: TypeRequest, Method: MethodStoreValue, Txid: 4, Token: -1, Value: enc, HasValue: true},
		{Type: TypeRequest, Method: MethodStoreValue, Txid: 4, Token: 5, Value: imm, HasValue: true},
		{Type: TypeResponse, Method: MethodStoreValue, Txid: 4},
		{Type: TypeResponse, Method: MethodAnnouncePeer, Txid: 5},
		{Type: TypeRequest, Method: MethodFindPeer, Txid: 6, Target: target, Want: WantIPv4},
		{Type: TypeError, Method: MethodFindPeer, Txid: 6, Err: Error{Code: CodeInvalidToken, Message: "invalid token"}},
		{Type: TypeError, Method: MethodPing, Txid: 6, Err: Error{Code: CodeProtocol}},
	}
	if d == V3 {
		ms = append(ms,
			Message{Type: TypeRequest, Method: MethodFindPeer, Txid: 6, Target: target, Want: WantIPv6, CAS: 2, HasCAS: true, Count: 4},
			Message{Type: TypeResponse, Method: MethodFindPeer, Txid: 6, Peers: []record.PeerInfo{p1, p2}},
			Message{Type: TypeResponse, Method: MethodFindPeer, Txid: 6, Nodes4: n4},
			Message{Type: TypeRequest, Method: MethodAnnouncePeer, Txid: 7, Token: 77, Peer: p1},
			Message{Type: TypeRequest, Method: MethodAnnouncePeer, Txid: 7, Token: 77, Peer: p2, CAS: 2, HasCAS: true},
		)
	} else {
		// v2 sends a token with every FIND_VALUE and FIND_PEER response.
		ms[7].Token, ms[10].Token = 11, 12
		x := q1
		x.NodeID, x.Origin = identity.ID{}, identity.ID{} // announcing itself: no x
		ms = append(ms,
			Message{Type: TypeResponse, Method: MethodFindPeer, Txid: 6, Token: 13, PeersV2: []record.PeerInfoV2{q1, q2}},
			Message{Type: TypeRequest, Method: MethodAnnouncePeer, Txid: 7, Token: 77, PeerV2: x},
			Message{Type: TypeRequest, Method: MethodAnnouncePeer, Txid: 7, Token: 77, PeerV2: record.PeerInfoV2{ID: q2.ID, NodeID: q2.NodeID, Port: q2.Port, Alt: q2.Alt, Sig: q2.Sig}},
		)
	}
	return ms
}

func TestRoundTripAllKinds(t *testing.T) {
	for _, d := range []Dialect{V3, V2} {
		for i, m := range sampleMessages(t, d) {
			name := fmt.Sprintf("%v/%d/%v", d, i, &m)
			b, err := m.Append(nil, d)
			if err != nil {
				t.Fatalf("%s: encode: %v", name, err)
			}
			var got Message
			if err := got.Decode(b, d); err != nil {
				t.Fatalf("%s: decode: %v\n%x", name, err, b)
			}
			if !got.Equal(&m) {
				t.Fatalf("%s: round trip changed the message\n got %+v\nwant %+v", name, got, m)
			}
			// Records survive the trip with valid signatures.
			if got.HasValue {
				validate := got.Value.Validate
				if d == V2 {
					validate = got.Value.ValidateV2
				}
				if err := validate(); err != nil {
					t.Errorf("%s: value: %v", name, err)
				}
			}
			for j := range got.Peers {
				if err := got.Peers[j].Validate(); err != nil {
					t.Errorf("%s: peer %d: %v", name, j, err)
				}
			}
			for j := range got.PeersV2 {
				if err := got.PeersV2[j].Validate(); err != nil {
					t.Errorf("%s: v2 peer %d: %v", name, j, err)
				}
			}
			if got.Method == MethodAnnouncePeer && got.Type == TypeRequest {
				if d == V3 {
					if err := got.Peer.Validate(); err != nil {
						t.Errorf("%s: announced peer: %v", name, err)
					}
				} else {
					// A self-announce (no x) comes from the node B itself; the
					// delegated one from A, its origin.
					sender := keyPair(t, 0).ID()
					if got.PeerV2.NodeID.IsZero() {
						sender = keyPair(t, 0x20).ID()
					}
					p := got.AnnouncedPeerV2(sender)
					if err := p.Validate(); err != nil {
						t.Errorf("%s: announced v2 peer: %v", name, err)
					}
				}
			}
		}
	}
}

// TestV2FieldOrder pins the v2 body layouts (boson.md §2.7).
func TestV2FieldOrder(t *testing.T) {
	ms := sampleMessages(t, V2)
	keysOf := func(m *Message) []string {
		b, err := m.Append(nil, V2)
		if err != nil {
			t.Fatal(err)
		}
		it, _ := parseItem(t, b)
		body := it.kids[5] // y, t, body
		var ks []string
		for i := 0; i < len(body.kids); i += 2 {
			ks = append(ks, string(body.kids[i].str))
		}
		return ks
	}
	check := func(m *Message, want string) {
		t.Helper()
		if got := fmt.Sprint(keysOf(m)); got != want {
			t.Errorf("%v: keys %s, want %s", m, got, want)
		}
	}
	check(&ms[5], "[t w seq]")                   // find_value request uses seq, not cas
	check(&ms[11], "[tok k n sig seq cas v]")    // store_value request
	check(&ms[12], "[tok k rec n sig seq v]")    // encrypted, no cas
	check(&ms[7], "[tok k n seq sig v]")         // find_value response: tok always
	check(&ms[len(ms)-3], "[tok p]")             // find_peer response
	check(&ms[len(ms)-2], "[tok t p sig]")       // announce by the node itself: no x
	check(&ms[len(ms)-1], "[tok t x p alt sig]") // delegated announce
	check(&ms[17], "[c m]")                      // error
	check(&ms[18], "[c m]")                      // v2 always writes m
}

func TestEncodeRejects(t *testing.T) {
	for name, m := range map[string]Message{
		"zero txid":         {Type: TypeRequest, Method: MethodPing},
		"method 0":          {Type: TypeRequest, Txid: 1},
		"type 0x60":         {Type: 0x60, Method: MethodPing, Txid: 1},
		"store no value":    {Type: TypeRequest, Method: MethodStoreValue, Txid: 1},
		"want 8":            {Type: TypeRequest, Method: MethodFindNode, Txid: 1, Want: 8},
		"node with no addr": {Type: TypeResponse, Method: MethodFindNode, Txid: 1, Nodes4: []NodeInfo{{}}},
		"announce no peer":  {Type: TypeRequest, Method: MethodAnnouncePeer, Txid: 1},
	} {
		if _, err := m.Append(nil, V3); !errors.Is(err, ErrEncode) {
			t.Errorf("%s: %v", name, err)
		}
	}
	big := Message{Type: TypeRequest, Method: MethodPing, Txid: 1 << 31}
	if _, err := big.Append(nil, V2); err == nil {
		t.Error("v2 txid above int32 accepted")
	}
	if _, err := big.Append(nil, V3); err != nil {
		t.Error(err)
	}
}

// TestZeroAllocHotPath: decoding into a reused Message and encoding into a
// buffer with room allocate nothing (benchmarks report the same with
// -benchmem; this makes a regression fail the ordinary test run).
func TestZeroAllocHotPath(t *testing.T) {
	gs := loadGoldens(t)
	for _, g := range gs {
		if g.name != "findNodeResponses/V46Token" && g.name != "findValueResponses/Encrypted" && g.name != "storeValueRequests/SignedCas" {
			continue
		}
		var m Message
		buf := make([]byte, 0, 2048)
		_ = m.Decode(g.cbor, V3)
		allocs := testing.AllocsPerRun(100, func() {
			if err := m.Decode(g.cbor, V3); err != nil {
				t.Fatal(err)
			}
			if _, err := m.Append(buf[:0], V3); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %.1f allocations per decode+encode", g.name, allocs)
		}
	}
}
