package directory_test

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/elacity/pc2/dht/record"
	"github.com/elacity/pc2/transport/peer/directory"
)

// full is a record with every list at its limit and IPv6 candidates: the
// largest record a node can be asked to publish.
func full(t testing.TB) directory.Record {
	r := directory.Record{Issued: time.Now().Unix(), NAT: "address-and-port-dependent", Hard: true}
	for i := range directory.MaxCandidates {
		r.UDP = append(r.UDP, netip.AddrPortFrom(netip.MustParseAddr("2001:db8:1234:5678:9abc:def0:1234:5678"), uint16(40000+i)))
		r.TCP = append(r.TCP, netip.AddrPortFrom(netip.MustParseAddr("2001:db8:1234:5678:9abc:def0:1234:5679"), uint16(40000+i)))
	}
	for i := range directory.MaxRelays {
		r.Relays = append(r.Relays, directory.Relay{ID: newKey(t).ID(), Addr: netip.AddrPortFrom(netip.MustParseAddr("198.51.100.1"), uint16(39004+i))})
	}
	for range directory.MaxSupernodes {
		r.Supernodes = append(r.Supernodes, newKey(t).ID())
	}
	return r
}

func TestFitFullRecord(t *testing.T) {
	r := full(t)
	b, err := r.Marshal()
	if err == nil {
		t.Fatalf("a full IPv6 record fits (%d bytes): the test no longer tests trimming", len(b))
	}
	kp := newKey(t)
	v, err := directory.Value(kp, r)
	if err != nil {
		t.Fatalf("Value of a full record: %v", err)
	}
	if len(v.Data) > record.MaxSignedData {
		t.Fatalf("%d bytes signed", len(v.Data))
	}
	got, err := directory.FromValue(kp.ID(), &v, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	f := r.Fit()
	if !slices.Equal(got.UDP, f.UDP) || !slices.Equal(got.Relays, f.Relays) || len(got.TCP) != len(f.TCP) {
		t.Fatalf("stored %+v, Fit says %+v", got, f)
	}
	// Least useful first: TCP candidates go before supernodes, and both
	// before any UDP candidate or relay; what stays is each list's head.
	if len(got.TCP) != 0 && len(got.Supernodes) != directory.MaxSupernodes {
		t.Fatalf("supernodes cut while %d TCP candidates kept", len(got.TCP))
	}
	if (len(got.TCP) != 0 || len(got.Supernodes) != 0) &&
		(len(got.UDP) != directory.MaxCandidates || len(got.Relays) != directory.MaxRelays) {
		t.Fatalf("UDP/relays cut (%d, %d) while TCP %d, supernodes %d kept",
			len(got.UDP), len(got.Relays), len(got.TCP), len(got.Supernodes))
	}
	if len(got.UDP) < 2 || len(got.Relays) < 1 {
		t.Fatalf("kept %d UDP, %d relays", len(got.UDP), len(got.Relays))
	}
	if !slices.Equal(got.UDP, r.UDP[:len(got.UDP)]) || !slices.Equal(got.Supernodes, r.Supernodes[:len(got.Supernodes)]) {
		t.Fatalf("not the heads of the lists: %v %v", got.UDP, got.Supernodes)
	}
	// Fit copies: the caller's lists are unchanged.
	if len(r.TCP) != directory.MaxCandidates || len(r.UDP) != directory.MaxCandidates || len(r.Supernodes) != directory.MaxSupernodes {
		t.Fatal("Fit shortened the caller's record")
	}
	t.Logf("full record trimmed to %d bytes: %d UDP, %d TCP, %d relays, %d supernodes",
		len(v.Data), len(got.UDP), len(got.TCP), len(got.Relays), len(got.Supernodes))
}

func TestFitLeavesSmallRecord(t *testing.T) {
	r := sample(t)
	r.TCP = []netip.AddrPort{netip.MustParseAddrPort("203.0.113.7:443")}
	r.Supernodes = append(r.Supernodes, newKey(t).ID())
	f := r.Fit()
	if !slices.Equal(f.UDP, r.UDP) || !slices.Equal(f.TCP, r.TCP) || !slices.Equal(f.Relays, r.Relays) || !slices.Equal(f.Supernodes, r.Supernodes) {
		t.Fatalf("Fit changed a record that fits: %+v → %+v", r, f)
	}
}

// BenchmarkEncodeSign is a publish's cost before the network (strict
// encoding, Ed25519 signature), for a typical and a full (trimmed) record.
func BenchmarkEncodeSign(b *testing.B) {
	kp := newKey(b)
	for _, c := range []struct {
		name string
		r    directory.Record
	}{{"typical", sample(b)}, {"full", full(b)}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := directory.Value(kp, c.r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDecodeVerify is a lookup's cost after the network (owner,
// signature, strict decoding, age).
func BenchmarkDecodeVerify(b *testing.B) {
	kp := newKey(b)
	for _, c := range []struct {
		name string
		r    directory.Record
	}{{"typical", sample(b)}, {"full", full(b)}} {
		v, err := directory.Value(kp, c.r)
		if err != nil {
			b.Fatal(err)
		}
		now := time.Now()
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(v.Data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := directory.FromValue(kp.ID(), &v, now); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
