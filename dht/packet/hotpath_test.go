package packet

import (
	"net/netip"
	"testing"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/message"
)

// node is the per-request work of a DHT node without the socket: open a
// FIND_NODE request, decode it, build the response with 8 nodes, encode and
// seal it. It is the hot path the package APIs are shaped for.
type node struct {
	codec      *Codec
	req, reply message.Message
	closest    []message.NodeInfo
}

func (n *node) serve(pkt []byte, in, plain, out *[BufferSize]byte) ([]byte, error) {
	from, p, err := n.codec.Open(plain[:0], pkt, IPv4)
	if err != nil {
		return nil, err
	}
	if err := n.req.Decode(p, message.V3); err != nil {
		return nil, err
	}
	n.reply.Respond(&n.req)
	n.reply.Nodes4 = append(n.reply.Nodes4, n.closest...)
	n.reply.Token = 12345
	body, err := n.reply.Append(in[:0], message.V3)
	if err != nil {
		return nil, err
	}
	return n.codec.Seal(out[:0], from, body, IPv4)
}

func setupHotPath(tb testing.TB) (*node, *Codec, identity.ID, []byte) {
	a, b := seedKey(tb, 0), seedKey(tb, 0x20)
	client := newCodec(tb, a, Config{})
	srv := &node{codec: newCodec(tb, b, Config{})}
	for i := range 8 {
		var id identity.ID
		id[0], id[1] = 7, byte(i)
		srv.closest = append(srv.closest, message.NodeInfo{ID: id, Addr4: netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(i + 1)}), 39001)})
	}
	req := message.Message{Type: message.TypeRequest, Method: message.MethodFindNode, Txid: 42,
		Version: message.MakeVersion("PC", 1), Target: a.ID(), Want: message.WantIPv4 | message.WantToken}
	body, err := req.Append(nil, message.V3)
	if err != nil {
		tb.Fatal(err)
	}
	return srv, client, b.ID(), body
}

func TestHotPathZeroAlloc(t *testing.T) {
	srv, client, to, body := setupHotPath(t)
	in, plain, out := GetBuffer(), GetBuffer(), GetBuffer()
	defer PutBuffer(in)
	defer PutBuffer(plain)
	defer PutBuffer(out)
	pkts := make([][]byte, 2)
	for i := range pkts {
		pkts[i], _ = client.Seal(nil, to, body, IPv4)
	}
	if _, err := srv.serve(pkts[0], in, plain, out); err != nil { // warm: context cached
		t.Fatal(err)
	}
	i := 1
	allocs := testing.AllocsPerRun(50, func() {
		if _, err := srv.serve(pkts[i&1], in, plain, out); err != nil {
			t.Fatal(err)
		}
		i++
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per request", allocs)
	}
	// The client can read the answer.
	resp, _ := srv.serve(pkts[i&1], in, plain, out)
	_, p, err := client.Open(nil, resp, IPv4)
	if err != nil {
		t.Fatal(err)
	}
	var m message.Message
	if err := m.Decode(p, message.V3); err != nil || len(m.Nodes4) != 8 || m.Txid != 42 {
		t.Fatalf("response %v %v", &m, err)
	}
}

// BenchmarkServeFindNode is one FIND_NODE request served end to end (open,
// decode, respond with 8 nodes, encode, seal), socket excluded.
func BenchmarkServeFindNode(b *testing.B) {
	srv, client, to, body := setupHotPath(b)
	in, plain, out := GetBuffer(), GetBuffer(), GetBuffer()
	pkts := make([][]byte, 2)
	for i := range pkts {
		pkts[i], _ = client.Seal(nil, to, body, IPv4)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := srv.serve(pkts[i&1], in, plain, out); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
