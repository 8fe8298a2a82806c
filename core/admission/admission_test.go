package admission

import (
	"crypto/rand"
	"errors"
	"testing"

	"github.com/elacity/pc2/core/identity"
)

type known map[identity.ID]bool

func (k known) Registered(id identity.ID) bool { return k[id] }

func id(b byte) identity.ID {
	var i identity.ID
	i[0] = b
	return i
}

func TestPolicy(t *testing.T) {
	a, b, c, d := id(1), id(2), id(3), id(4)
	p := &Policy{
		Allow:    map[identity.ID]bool{a: true, b: true},
		Deny:     map[identity.ID]bool{b: true, c: true},
		Registry: known{c: true, d: true},
		Refusal:  "owns no name here",
	}
	for _, tc := range []struct {
		id   identity.ID
		want error
	}{{a, nil}, {b, ErrDenied}, {c, ErrDenied}, {d, nil}} {
		if err := p.Admit(tc.id); !errors.Is(err, tc.want) && (err == nil) != (tc.want == nil) {
			t.Errorf("Admit(%x): %v, want %v", tc.id[0], err, tc.want)
		}
	}
	if err := p.Admit(id(5)); err == nil || err.Error() != "owns no name here" {
		t.Errorf("unknown id: %v", err)
	}
	p.All = true
	if err := p.Admit(id(5)); err != nil {
		t.Errorf("admit all: %v", err)
	}
	if err := p.Admit(c); !errors.Is(err, ErrDenied) {
		t.Errorf("deny must win over admit all: %v", err)
	}
	if !(&Policy{}).AdmitsNobody() || (&Policy{Registry: known{}}).AdmitsNobody() {
		t.Error("AdmitsNobody")
	}
	if err := (&Policy{}).Admit(a); err == nil {
		t.Error("the zero Policy admitted an id")
	}
}

func TestParseIDs(t *testing.T) {
	kp, err := identity.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseIDs([]string{kp.ID().String(), kp.ID().DID()})
	if err != nil || len(m) != 1 || !m[kp.ID()] {
		t.Fatalf("ParseIDs: %v %v", m, err)
	}
	if _, err := ParseIDs([]string{"not-an-id"}); err == nil {
		t.Fatal("a bad id parsed")
	}
}
