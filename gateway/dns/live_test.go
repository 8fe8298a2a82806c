package dns

import (
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"

	mdns "github.com/miekg/dns"
)

// liveSource is a federation's source: its live supernodes change.
type liveSource struct {
	*fakeSource
	live atomic.Pointer[[]netip.Addr]
}

func (l *liveSource) LiveAddrs() []netip.Addr { return *l.live.Load() }

// TestLiveSupernodes: a federated source's live supernodes answer for
// registered names, with the short liveTTL, and follow its changes; the
// owner's direct address still wins; no live list falls back to own.
func TestLiveSupernodes(t *testing.T) {
	src := &liveSource{fakeSource: newSource()}
	three := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")}
	src.live.Store(&three)
	cfg := testConfig()
	h, err := NewHandler(src, cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ask := func(name string) ([]string, uint32) {
		resp := h.answerUnlimited(new(mdns.Msg).SetQuestion(name, mdns.TypeA), false)
		var out []string
		var ttl uint32
		for _, rr := range resp.Answer {
			out = append(out, rr.(*mdns.A).A.String())
			ttl = rr.Header().Ttl
		}
		slices.Sort(out)
		return out, ttl
	}
	got, ttl := ask("alice.ela.city.")
	if !slices.Equal(got, []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"}) || ttl != 10 {
		t.Fatalf("three live: %v ttl %d", got, ttl)
	}
	two := three[1:]
	src.live.Store(&two)
	if got, _ := ask("alice.ela.city."); !slices.Equal(got, []string{"192.0.2.2", "192.0.2.3"}) {
		t.Fatalf("after one died: %v", got)
	}
	if got, ttl := ask("direct.ela.city."); !slices.Equal(got, []string{"198.51.100.7"}) || ttl != 60 {
		t.Fatalf("direct: %v ttl %d", got, ttl)
	}
	none := []netip.Addr{}
	src.live.Store(&none)
	if got, ttl := ask("alice.ela.city."); !slices.Equal(got, []string{"203.0.113.10"}) || ttl != 60 {
		t.Fatalf("no live list: %v ttl %d", got, ttl)
	}
}
