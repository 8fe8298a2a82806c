package directory

import (
	"crypto/rand"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
)

func testRecord() Record {
	return Record{
		Issued: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC),
		NAT:    "endpoint-independent",
		UDP:    []netip.AddrPort{netip.MustParseAddrPort("203.0.113.5:4000"), netip.MustParseAddrPort("[2001:db8::1]:4000")},
		TCP:    []netip.AddrPort{netip.MustParseAddrPort("203.0.113.5:4001")},
	}
}

func TestSignOpenRoundTrip(t *testing.T) {
	kp, _ := identity.Generate(rand.Reader)
	other, _ := identity.Generate(rand.Reader)
	v, err := Sign(kp, testRecord())
	if err != nil {
		t.Fatal(err)
	}
	got, err := Open(kp.ID(), &v)
	if err != nil {
		t.Fatal(err)
	}
	want := testRecord()
	if got.ID != kp.ID() || !got.Issued.Equal(want.Issued) || got.NAT != want.NAT || len(got.UDP) != 2 || got.UDP[1] != want.UDP[1] {
		t.Fatalf("got %+v", got)
	}
	if _, err := Open(other.ID(), &v); !errors.Is(err, ErrMalformed) {
		t.Fatalf("wrong owner: %v", err)
	}
	bad := v.Clone()
	bad.Sig[0] ^= 1
	if _, err := Open(kp.ID(), &bad); !errors.Is(err, ErrMalformed) {
		t.Fatalf("tampered sig: %v", err)
	}
}

func TestDecodeStrict(t *testing.T) {
	var id identity.ID
	id[0] = 1
	for name, in := range map[string]string{
		"unknown":  `{"t":1800000000,"x":1}`,
		"badaddr":  `{"t":1800000000,"udp":["1.2.3.4"]}`,
		"trailing": `{"t":1800000000}{}`,
		"oldtime":  `{"t":5}`,
		"toomany":  `{"t":1800000000,"udp":["1.1.1.1:1","1.1.1.1:2","1.1.1.1:3","1.1.1.1:4","1.1.1.1:5","1.1.1.1:6","1.1.1.1:7","1.1.1.1:8","1.1.1.1:9"]}`,
		"oversize": `{"t":1800000000,"nat":"` + strings.Repeat("a", 900) + `"}`,
	} {
		if _, err := Decode(id, []byte(in)); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	if _, err := Decode(id, []byte(`{"t":1800000000,"udp":["1.2.3.4:5"]}`)); err != nil {
		t.Fatal(err)
	}
}

func TestCheckAge(t *testing.T) {
	r := testRecord()
	if err := CheckAge(r, r.Issued.Add(time.Hour), 0); err != nil {
		t.Fatal(err)
	}
	if err := CheckAge(r, r.Issued.Add(2*time.Hour+time.Second), 0); !errors.Is(err, ErrExpired) {
		t.Fatalf("old: %v", err)
	}
	if err := CheckAge(r, r.Issued.Add(-6*time.Minute), 0); !errors.Is(err, ErrFuture) {
		t.Fatalf("future: %v", err)
	}
}
