package message

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/record"
)

type golden struct {
	name string
	json string
	cbor []byte
}

// loadGoldens reads testdata/compat_goldens.txt: the CBOR messages and JSON
// forms of Boson's CompatibilityTests (data, not code).
func loadGoldens(t testing.TB) []golden {
	t.Helper()
	f, err := os.Open("testdata/compat_goldens.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []golden
	var cur golden
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		k, v, _ := strings.Cut(line, " ")
		switch k {
		case "name":
			cur = golden{name: v}
		case "json":
			cur.json = v
		case "cbor":
			b, err := hex.DecodeString(v)
			if err != nil {
				t.Fatalf("%s: %v", cur.name, err)
			}
			cur.cbor = b
			out = append(out, cur)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCompatibilityGoldens decodes every CBOR golden of Boson's
// CompatibilityTests, checks the decoded fields against the JSON form that
// the same test pins (through an independent JSON renderer below), and
// re-encodes to the identical bytes.
func TestCompatibilityGoldens(t *testing.T) {
	gs := loadGoldens(t)
	if len(gs) != 59 {
		t.Fatalf("%d goldens, want 59", len(gs))
	}
	for _, g := range gs {
		t.Run(g.name, func(t *testing.T) {
			var m Message
			if err := m.Decode(g.cbor, V3); err != nil {
				t.Fatalf("decode: %v", err)
			}
			if got := bosonJSON(&m); got != g.json {
				t.Errorf("decoded fields differ from the golden JSON\n got %s\nwant %s", got, g.json)
			}
			out, err := m.Append(nil, V3)
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			if !bytes.Equal(out, g.cbor) {
				t.Errorf("re-encoding differs\n got %x\nwant %x", out, g.cbor)
			}
		})
	}
}

// TestDocGoldens pins the vectors quoted in boson.md §8.1.
func TestDocGoldens(t *testing.T) {
	target, _ := identity.ParseID("HVG7zCqPqKVyxwwwKtC43EasxA3U7uVDLDU2EkRdKoA5")
	fvTarget, _ := identity.ParseID("CA2GZdWvehqS6zH16xpUzNRgHpqAayo1asd9xUAJwRmB")
	orca := MakeVersion("OR", 1)
	if orca != 0x4F520001 {
		t.Fatalf("MakeVersion = %#x", orca)
	}
	imm, _ := record.NewImmutable([]byte("This is a immutable value"))
	cases := []struct {
		name string
		m    Message
		hex  string
	}{
		{"ping request", Message{Type: TypeRequest, Method: MethodPing, Txid: 10, Version: orca},
			"bf6179182161740a61761a4f520001ff"},
		{"ping response", Message{Type: TypeResponse, Method: MethodPing, Txid: 10, Version: orca},
			"bf6179184161740a61761a4f520001ff"},
		{"find_node request", Message{Type: TypeRequest, Method: MethodFindNode, Txid: 1234, Version: orca, Target: target, Want: WantIPv4},
			"bf6179182261741904d26171bf61745820f4f859a871aac9a88f23ff8c95a59efb94f35b7d0781c3b84322caf6f462ced6617701ff61761a4f520001ff"},
		{"find_value request", Message{Type: TypeRequest, Method: MethodFindValue, Txid: 99876543210, Version: orca, Target: fvTarget, Want: WantIPv4},
			"bf6179182661741b00000017411b1aea6171bf61745820a5c037b2666ac6ce9f92e11c5434d237bd361e36be0b374c058a7f263191b4c2617701ff61761a4f520001ff"},
		{"find_value request cas=0", Message{Type: TypeRequest, Method: MethodFindValue, Txid: 99876543210, Version: orca, Target: fvTarget, Want: WantIPv4, HasCAS: true},
			"bf6179182661741b00000017411b1aea6171bf61745820a5c037b2666ac6ce9f92e11c5434d237bd361e36be0b374c058a7f263191b4c26177016363617300ff61761a4f520001ff"},
		{"find_value response", Message{Type: TypeResponse, Method: MethodFindValue, Txid: 18, Version: orca, Value: imm, HasValue: true},
			"bf617918466174126172bf6176581954686973206973206120696d6d757461626c652076616c7565ff61761a4f520001ff"},
		{"store_value request", Message{Type: TypeRequest, Method: MethodStoreValue, Txid: 33, Version: orca, Token: 87654321, Value: imm, HasValue: true},
			"bf61791825617418216171bf63746f6b1a05397fb16176581954686973206973206120696d6d757461626c652076616c7565ff61761a4f520001ff"},
		{"store_value response", Message{Type: TypeResponse, Method: MethodStoreValue, Txid: 2, Version: orca},
			"bf6179184561740261761a4f520001ff"},
		{"announce_peer response", Message{Type: TypeResponse, Method: MethodAnnouncePeer, Txid: 5678, Version: orca},
			"bf61791843617419162e61761a4f520001ff"},
		{"error store_value", Message{Type: TypeError, Method: MethodStoreValue, Txid: 123, Version: orca, Err: Error{Code: 0x76543210}},
			"bf6179056174187b6165bf61631a76543210ff61761a4f520001ff"},
		{"error find_node", Message{Type: TypeError, Method: MethodFindNode, Txid: 456, Version: orca, Err: Error{Code: -1000, Message: "Test error message"}},
			"bf61790261741901c86165bf61633903e7616d7254657374206572726f72206d657373616765ff61761a4f520001ff"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := c.m.Append(nil, V3)
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(out) != c.hex {
				t.Fatalf("encode\n got %x\nwant %s", out, c.hex)
			}
			var back Message
			if err := back.Decode(out, V3); err != nil {
				t.Fatal(err)
			}
			if !back.Equal(&c.m) {
				t.Fatalf("decode gave %+v", back)
			}
		})
	}
	// w = 2,3,5,6,7 differ only in the byte after 6177.
	for _, w := range []Want{2, 3, 5, 6, 7} {
		m := cases[2].m
		m.Want = w
		out, _ := m.Append(nil, V3)
		want := strings.Replace(cases[2].hex, "617701ff", fmt.Sprintf("6177%02xff", w), 1)
		if hex.EncodeToString(out) != want {
			t.Errorf("w=%d: %x", w, out)
		}
	}
}

// TestCompatSignatures checks the researcher's finding (boson.md §8.1): of
// the records inside the CompatibilityTests goldens only the encrypted
// values verify under the 3.1 rules; the signed values and peers were signed
// by the 3.0 rules and must fail.
func TestCompatSignatures(t *testing.T) {
	want := map[string]bool{
		"findValueResponses/Signed":       false,
		"findValueResponses/Encrypted":    true,
		"storeValueRequests/Signed":       false,
		"storeValueRequests/SignedCas":    false,
		"storeValueRequests/Encrypted":    true,
		"storeValueRequests/EncryptedCas": true,
		"storeValueRequests/Immutable":    true,
		"findValueResponses/Immutable":    true,
	}
	seen := 0
	for _, g := range loadGoldens(t) {
		var m Message
		if err := m.Decode(g.cbor, V3); err != nil {
			t.Fatal(err)
		}
		if ok, listed := want[g.name]; listed {
			seen++
			if err := m.Value.Validate(); (err == nil) != ok {
				t.Errorf("%s: Validate = %v, want valid=%v", g.name, err, ok)
			}
		}
		if strings.HasPrefix(g.name, "announcePeerRequests/") {
			if err := m.Peer.Validate(); err == nil {
				t.Errorf("%s: stale 3.0 peer signature verified under 3.1", g.name)
			}
		}
		for i := range m.Peers {
			if err := m.Peers[i].Validate(); err == nil {
				t.Errorf("%s: stale peer %d verified", g.name, i)
			}
		}
	}
	if seen != len(want) {
		t.Fatalf("found %d of %d listed goldens", seen, len(want))
	}
}

// ---- Boson JSON renderer: an independent oracle for decoded fields. ----

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func jstr(s string) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return strings.TrimSuffix(buf.String(), "\n")
}

type jobj struct{ parts []string }

func (o *jobj) add(k, v string)       { o.parts = append(o.parts, jstr(k)+":"+v) }
func (o *jobj) str() string           { return "{" + strings.Join(o.parts, ",") + "}" }
func (o *jobj) num(k string, v int64) { o.add(k, strconv.FormatInt(v, 10)) }

func jnodes(ns []NodeInfo) string {
	var parts []string
	for _, n := range ns {
		e := []string{jstr(n.ID.String())}
		if n.Addr4.IsValid() {
			e = append(e, jstr(n.Addr4.Addr().String()), strconv.Itoa(int(n.Addr4.Port())))
		}
		if n.Addr6.IsValid() {
			e = append(e, jstr(n.Addr6.Addr().String()), strconv.Itoa(int(n.Addr6.Port())))
		}
		parts = append(parts, "["+strings.Join(e, ",")+"]")
	}
	return "[" + strings.Join(parts, ",") + "]"
}

func jvalue(o *jobj, v *record.Value) {
	if v.Mutable() {
		o.add("k", jstr(v.Owner.String()))
	}
	if !v.Recipient.IsZero() {
		o.add("rec", jstr(v.Recipient.String()))
	}
	if v.HasNonce {
		o.add("n", jstr(b64(v.Nonce[:])))
	}
	if v.Seq != 0 {
		o.num("seq", int64(v.Seq))
	}
	if v.Mutable() {
		o.add("sig", jstr(b64(v.Sig[:])))
	}
	o.add("v", jstr(b64(v.Data)))
}

func jpeer(o *jobj, p *record.PeerInfo, idKey string, alwaysF bool) {
	o.add(idKey, jstr(p.ID.String()))
	if p.Seq != 0 {
		o.num("seq", int64(p.Seq))
	}
	if p.Authenticated() {
		o.add("o", jstr(p.Node.String()))
		o.add("os", jstr(b64(p.NodeSig[:])))
	}
	o.add("sig", jstr(b64(p.Sig[:])))
	if p.Fingerprint != 0 || alwaysF {
		o.num("f", p.Fingerprint)
	}
	o.add("e", jstr(p.Endpoint))
	if len(p.Extra) > 0 {
		o.add("ex", jstr(b64(p.Extra)))
	}
}

func bosonJSON(m *Message) string {
	var o jobj
	o.num("y", int64(m.Y()))
	o.num("t", int64(m.Txid))
	var body jobj
	hasBody := true
	switch {
	case m.Type == TypeError:
		body.num("c", int64(m.Err.Code))
		if m.Err.Message != "" {
			body.add("m", jstr(m.Err.Message))
		}
		o.add("e", "")
	case m.Type == TypeRequest && m.Method.isLookup():
		body.add("t", jstr(m.Target.String()))
		body.num("w", int64(m.Want))
		if m.HasCAS {
			body.num("cas", int64(m.CAS))
		}
		if m.Count != 0 {
			body.num("e", int64(m.Count))
		}
		o.add("q", "")
	case m.Type == TypeRequest && m.Method == MethodStoreValue:
		body.num("tok", int64(m.Token))
		if m.HasCAS {
			body.num("cas", int64(m.CAS))
		}
		jvalue(&body, &m.Value)
		o.add("q", "")
	case m.Type == TypeRequest && m.Method == MethodAnnouncePeer:
		body.num("tok", int64(m.Token))
		if m.HasCAS {
			body.num("cas", int64(m.CAS))
		}
		jpeer(&body, &m.Peer, "k", true)
		o.add("q", "")
	case m.Type == TypeResponse && m.hasBody():
		if len(m.Nodes4) > 0 {
			body.add("n4", jnodes(m.Nodes4))
		}
		if len(m.Nodes6) > 0 {
			body.add("n6", jnodes(m.Nodes6))
		}
		if m.Token != 0 {
			body.num("tok", int64(m.Token))
		}
		if m.HasValue {
			jvalue(&body, &m.Value)
		}
		if len(m.Peers) > 0 {
			var ps []string
			for i := range m.Peers {
				var po jobj
				jpeer(&po, &m.Peers[i], "id", false)
				ps = append(ps, po.str())
			}
			body.add("p", "["+strings.Join(ps, ",")+"]")
		}
		o.add("r", "")
	default:
		hasBody = false
	}
	if hasBody {
		o.parts[len(o.parts)-1] += body.str()
	}
	if m.Version != 0 {
		o.num("v", int64(m.Version))
	}
	return o.str()
}
