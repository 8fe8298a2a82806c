package fuzz

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/routing"
)

// FuzzRoutingSnapshot: a persisted routing-table snapshot (bytes from the
// node's database) either fails with an error or decodes to at most max
// contacts that re-encode to the same bytes; restoring them never makes a
// contact visible to Closest(onlyVerified) before it answers.
func FuzzRoutingSnapshot(f *testing.F) {
	var id1, id2 identity.ID
	id1[0], id2[0] = 1, 2
	good := routing.AppendSnapshot(nil, []routing.Contact{
		{ID: id1, Addr: netip.MustParseAddrPort("11.2.3.4:39001")},
		{ID: id2, Addr: netip.MustParseAddrPort("[2a01::1]:39001")},
	})
	for _, seed := range [][]byte{good, routing.AppendSnapshot(nil, nil), []byte("RT\x01"), []byte("RT\x01\xff\xff\xff\xff\x0f"), good[:len(good)-3], nil} {
		f.Add(seed)
	}
	const max = 64
	f.Fuzz(func(t *testing.T, b []byte) {
		cs, err := routing.ParseSnapshot(b, max)
		if err != nil {
			if cs != nil {
				t.Fatal("contacts returned with an error")
			}
			return
		}
		if len(cs) > max {
			t.Fatalf("%d contacts, max %d", len(cs), max)
		}
		if again := routing.AppendSnapshot(nil, cs); !slices.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", b, again)
		}
		var self identity.ID
		self[0] = 0xee
		tb := routing.New(routing.Config{Self: self, DeveloperMode: true})
		tb.Restore(cs, time.Unix(1_800_000_000, 0))
		if got := tb.Closest(nil, identity.ID{}, 16, true); len(got) != 0 {
			t.Fatalf("restored contacts handed out before answering: %v", got)
		}
	})
}
