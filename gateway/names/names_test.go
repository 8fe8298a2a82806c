package names

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	r, err := NewRules([]string{"ela.city", "pc2.net", "ela.net", "Pc2.Localhost."})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		in   string
		want string
		err  error
	}{
		{"alice.ela.city", "alice.ela.city", nil},
		{"Alice.ELA.city.", "alice.ela.city", nil},
		{"  bob-2.pc2.net ", "bob-2.pc2.net", nil},
		{"a1b.pc2.localhost", "a1b.pc2.localhost", nil},
		{strings.Repeat("a", 63) + ".ela.net", strings.Repeat("a", 63) + ".ela.net", nil},
		{"", "", ErrEmpty},
		{".", "", ErrEmpty},
		{"ab.ela.city", "", ErrLabelLength},
		{strings.Repeat("a", 64) + ".ela.net", "", ErrLabelLength},
		{"-abc.ela.city", "", ErrHyphen},
		{"abc-.ela.city", "", ErrHyphen},
		{"a_c.ela.city", "", ErrCharacter},
		{"héllo.ela.city", "", ErrCharacter},
		{"xn--bcher-kva.ela.city", "", ErrPunycode},
		{"ab--c.ela.city", "", ErrPunycode},
		{"a--bc.ela.city", "a--bc.ela.city", nil}, // "--" elsewhere is plain LDH
		{"www.ela.city", "", ErrReserved},
		{"Admin.pc2.net", "", ErrReserved},
		{"alice.example.com", "", ErrSuffix},
		{"ela.city", "", ErrSuffix},
		{"alice.xela.city", "", ErrSuffix}, // ends with "ela.city" as a string, not as labels
		{"a.alice.ela.city", "", ErrDepth},
		{"alice..ela.city", "", ErrDepth},
		{strings.Repeat("abc.", 70) + "ela.city", "", ErrTooLong},
	} {
		n, err := r.Parse(tc.in)
		if tc.err != nil {
			var ne *Error
			if !errors.Is(err, tc.err) || !errors.As(err, &ne) {
				t.Errorf("Parse(%q) = %v, %v; want %v", tc.in, n, err, tc.err)
			}
			continue
		}
		if err != nil || n.String() != tc.want {
			t.Errorf("Parse(%q) = %q, %v; want %q", tc.in, n, err, tc.want)
		}
	}
}

func TestXelaIsNotUnderEla(t *testing.T) {
	r, _ := NewRules([]string{"ela.city"})
	// "alice.xela.city" ends with "ela.city" as a string but not as labels.
	if _, err := r.Parse("alice.xela.city"); !errors.Is(err, ErrSuffix) && !errors.Is(err, ErrDepth) {
		t.Fatalf("got %v", err)
	}
	if _, _, ok := r.Zone("xela.city"); ok {
		t.Fatal("xela.city matched zone ela.city")
	}
}

func TestLongestSuffixWins(t *testing.T) {
	r, err := NewRules([]string{"localhost", "pc2.localhost"})
	if err != nil {
		t.Fatal(err)
	}
	n, err := r.Parse("alice.pc2.localhost")
	if err != nil || n.Suffix != "pc2.localhost" || n.Label != "alice" {
		t.Fatalf("got %+v %v", n, err)
	}
	head, suf, ok := r.Zone("pc2.localhost")
	if !ok || head != "" || suf != "pc2.localhost" {
		t.Fatalf("apex: %q %q %v", head, suf, ok)
	}
	head, suf, ok = r.Zone("_acme-challenge.alice.pc2.localhost")
	if !ok || head != "_acme-challenge.alice" || suf != "pc2.localhost" {
		t.Fatalf("deep: %q %q %v", head, suf, ok)
	}
}

func TestNewRulesRejects(t *testing.T) {
	for _, bad := range [][]string{{"ela.city", "ELA.city"}, {"bad_suffix.net"}, {"-x.net"}, {""}, {"a..b"}, {strings.Repeat("a.", 130) + "com"}} {
		if _, err := NewRules(bad); err == nil {
			t.Errorf("NewRules(%q) accepted", bad)
		}
	}
	r, err := NewRules(nil)
	if err != nil || !slices.Equal(slices.Sorted(slices.Values(r.Suffixes())), []string{"ela.city", "ela.net", "pc2.net"}) {
		t.Fatalf("defaults: %v %v", r.Suffixes(), err)
	}
}

func TestReservedSortedAndChecked(t *testing.T) {
	if !slices.IsSorted(reserved) {
		t.Fatal("reserved list not sorted")
	}
	for _, l := range Reserved() {
		if !IsReserved(l) || !errors.Is(CheckLabel(l), ErrReserved) {
			t.Errorf("%q not refused", l)
		}
		if len(l) < MinLabel {
			t.Errorf("%q is shorter than MinLabel: listing it is dead weight", l)
		}
	}
	if IsReserved("alice") {
		t.Fatal("alice reserved")
	}
}

func TestFold(t *testing.T) {
	var buf [MaxName]byte
	for in, want := range map[string]string{
		"Alice.ELA.City.":    "alice.ela.city",
		"alice.ela.city:80":  "alice.ela.city",
		"ALICE.ela.city.:80": "alice.ela.city",
		"[::1]:80":           "[::1]",
		"::1":                "::1",
	} {
		b, ok := Fold(buf[:], in)
		if !ok || string(b) != want {
			t.Errorf("Fold(%q) = %q %v, want %q", in, b, ok, want)
		}
	}
	for _, bad := range []string{"", ".", ":80", strings.Repeat("a", MaxName+1)} {
		if _, ok := Fold(buf[:], bad); ok {
			t.Errorf("Fold(%q) ok", bad)
		}
	}
	m := map[string]int{"alice.ela.city": 1}
	allocs := testing.AllocsPerRun(100, func() {
		b, _ := Fold(buf[:], "ALICE.ela.city.")
		if m[string(b)] != 1 {
			t.Fatal("miss")
		}
	})
	if allocs != 0 {
		t.Fatalf("Fold + lookup allocates %v", allocs)
	}
}

func BenchmarkParse(b *testing.B) {
	r, _ := NewRules(nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Parse("alice.ela.city"); err != nil {
			b.Fatal(err)
		}
	}
}
