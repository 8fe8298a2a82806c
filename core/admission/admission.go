// Package admission is the one rule for which node ids may use a service
// that serves other nodes, such as the tunnel server and the relay: a deny
// list that always wins, then an allow list or an "admit all" switch, then
// the nodes a registry knows. It exists so every service facing other
// nodes parses its lists and applies the rule the same way.
package admission

import (
	"errors"
	"fmt"

	"github.com/elacity/pc2/core/identity"
)

// ErrDenied is returned for a node id on the deny list.
var ErrDenied = errors.New("node id is on the deny list")

// Registered reports whether a node id is known to a registry (for
// example owns a name); services define where the answer comes from.
type Registered interface {
	Registered(id identity.ID) bool
}

// ParseIDs parses a list of node ids in any form identity.ParseID takes;
// the error names the entry that is not an id.
func ParseIDs(ids []string) (map[identity.ID]bool, error) {
	m := make(map[identity.ID]bool, len(ids))
	for _, v := range ids {
		id, err := identity.ParseID(v)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", v, err)
		}
		m[id] = true
	}
	return m, nil
}

// Policy is a parsed rule. The zero Policy admits nobody.
type Policy struct {
	Allow, Deny map[identity.ID]bool
	All         bool       // admit every id not denied
	Registry    Registered // nil: no registry
	// Refusal is the error text for an id that is neither allowed nor
	// registered ("not admitted" when empty).
	Refusal string
}

// AdmitsNobody reports whether only a non-empty allow list or a registry
// could admit anyone, and neither is there.
func (p *Policy) AdmitsNobody() bool {
	return !p.All && len(p.Allow) == 0 && p.Registry == nil
}

// Admit returns nil when id may use the service.
func (p *Policy) Admit(id identity.ID) error {
	switch {
	case p.Deny[id]:
		return ErrDenied
	case p.All, p.Allow[id]:
		return nil
	case p.Registry != nil && p.Registry.Registered(id):
		return nil
	}
	if p.Refusal == "" {
		return errors.New("node id is not admitted")
	}
	return errors.New(p.Refusal)
}
