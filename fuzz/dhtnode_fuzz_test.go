package fuzz

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/node"
	"github.com/elacity/pc2/dht/packet"
	"github.com/elacity/pc2/dht/record"
	"github.com/elacity/pc2/dht/storage"
)

// FuzzStoredEntry: a database entry of the DHT's record store either
// fails with storage.ErrEntry or parses to an entry that encodes back to
// the same key and parses again to the same entry; parsing allocates at
// most allocBound of the input.
func FuzzStoredEntry(f *testing.F) {
	a, b := dhtKey(f, 0), dhtKey(f, 0x20)
	signed, _ := record.NewSigned(a, 3, []byte("hello boson"))
	imm, _ := record.NewImmutable([]byte("hello boson"))
	var nonce [24]byte
	v2, _ := record.NewSignedV2(a, nonce, 3, []byte("hello boson"))
	peer, _ := record.NewPeer(a, b, 1, 4660, "https://example.com/", []byte(`{"k":1}`))
	peer2, _ := record.NewPeerV2(a, b.ID(), identity.ID{}, 8090, "abc.pc2.net")
	at := time.Unix(1_700_000_000, 0)
	for _, e := range []storage.Entry{
		{Kind: storage.KindValue, Time: at, Value: signed},
		{Kind: storage.KindValue, Time: at, Value: imm},
		{Kind: storage.KindValueV2, Time: at, Value: v2},
		{Kind: storage.KindPeer, Time: at, Peer: peer},
		{Kind: storage.KindPeerV2, Time: at, PeerV2: peer2},
	} {
		f.Add(storage.AppendKey(nil, &e), storage.AppendValue(nil, &e))
	}
	f.Fuzz(func(t *testing.T, key, val []byte) {
		var e storage.Entry
		var err error
		if n := allocated(func() { e, err = storage.ParseEntry(key, val) }); n > allocBound(len(key)+len(val)) {
			t.Fatalf("parsing %d bytes allocated %d", len(key)+len(val), n)
		}
		if err != nil {
			return
		}
		k2, v2 := storage.AppendKey(nil, &e), storage.AppendValue(nil, &e)
		if string(k2) != string(key) {
			t.Fatalf("key does not round-trip: %x vs %x", k2, key)
		}
		back, err := storage.ParseEntry(k2, v2)
		if err != nil {
			t.Fatalf("re-encoded entry does not parse: %v", err)
		}
		if back.Kind != e.Kind || !back.Time.Equal(e.Time) || !back.Value.Equal(&e.Value) ||
			!back.Peer.Equal(&e.Peer) || back.PeerV2 != e.PeerV2 {
			t.Fatal("round trip changed the entry")
		}
	})
}

// FuzzBootstrapAddr: ParseBootstrap either fails or gives a node whose
// String form parses back to the same node.
func FuzzBootstrapAddr(f *testing.F) {
	for _, s := range []string{
		"FAe4sisG95oZ42w7buUn5qEE4TAnfTTFPiguZUHmhiF@155.138.245.211:39001",
		"did:boson:FAe4sisG95oZ42w7buUn5qEE4TAnfTTFPiguZUHmhiF@[2001:db8::1]:39001",
		"0x03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8@boot.example.com:1",
		"FAe4sisG95oZ42w7buUn5qEE4TAnfTTFPiguZUHmhiF@[::ffff:1.2.3.4]:65535",
		"x@y:z", "@:", "FAe4@[fe80::1%eth0]:1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := node.ParseBootstrap(s)
		if err != nil {
			return
		}
		again, err := node.ParseBootstrap(b.String())
		if err != nil {
			t.Fatalf("%q parsed, its form %q does not: %v", s, b.String(), err)
		}
		if again != b {
			t.Fatalf("%q: %+v, then %+v", s, b, again)
		}
	})
}

var (
	fuzzNodeOnce sync.Once
	fuzzNode     *node.Node
	fuzzPeer     *packet.Codec
)

// FuzzNodeServe feeds arbitrary messages, sealed by a genuine peer, to a
// running node's request path. Whatever they are, the node does not
// panic and never answers the (unverified) source with more bytes than
// the datagram it received: the no-amplification rule.
func FuzzNodeServe(f *testing.F) {
	for _, g := range dhtGoldens(f) {
		f.Add(g)
	}
	fuzzNodeOnce.Do(func() {
		cfg := node.DefaultConfig(true)
		cfg.Bind6 = "off"
		cfg.RateLimit = node.RateLimit{PacketsPerSecond: 1e9, Burst: 1 << 30}
		n, err := node.New(cfg, node.Options{Identity: dhtKey(f, 0x40)})
		if err != nil {
			f.Fatal(err)
		}
		if err := n.Start(context.Background()); err != nil {
			f.Fatal(err)
		}
		fuzzNode = n
		if fuzzPeer, err = packet.New(dhtKey(f, 0x60), packet.Config{}); err != nil {
			f.Fatal(err)
		}
	})
	from := netip.MustParseAddrPort("127.0.0.1:9") // discard: nobody answers the node's challenges
	f.Fuzz(func(t *testing.T, msg []byte) {
		for _, fr := range []packet.Framing{packet.FramingV3, packet.FramingV2} {
			var dg []byte
			var err error
			if fr == packet.FramingV2 {
				dg, err = fuzzPeer.SealV2(nil, fuzzNode.ID(), msg, packet.IPv4)
			} else {
				dg, err = fuzzPeer.Seal(nil, fuzzNode.ID(), msg, packet.IPv4)
			}
			if err != nil {
				return // too big for a datagram
			}
			reply := fuzzNode.ServeDatagram(make([]byte, 0, packet.BufferSize), dg, from)
			if len(reply) > len(dg) {
				t.Fatalf("%v: %d-byte answer to a %d-byte request from an unverified address", fr, len(reply), len(dg))
			}
			if len(reply) > 0 {
				if _, plain, _, err := fuzzPeer.OpenAny(nil, reply, packet.IPv4); err != nil || len(plain) == 0 || plain[0] != 0xbf {
					t.Fatalf("answer is not a sealed Boson message: %v", err)
				}
			}
		}
	})
}
