package registry

import (
	"context"
	"sort"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/store"
	"github.com/elacity/pc2/plugins/registry/wire"
)

// Claims tells the registry about names claimed at other supernodes of
// the federation (federation/mesh implements it). A new registration of a
// name that another id holds elsewhere is refused as taken, so the
// federation stays first come, first served as far as this supernode
// knows; simultaneous claims are settled by the federation's rule and
// Evict.
type Claims interface {
	ClaimedElsewhere(name string, id identity.ID) bool
}

// Records calls fn with every live record, sorted by name; the mesh sends
// them to a supernode that (re)joins.
func (r *Registry) Records(fn func(*wire.Record)) error {
	now := r.o.Clock.Now().Unix()
	r.mu.RLock()
	live := make([]string, 0, len(r.index))
	for name, e := range r.index {
		if e.expires > now {
			live = append(live, name)
		}
	}
	r.mu.RUnlock()
	sort.Strings(live)
	for _, name := range live {
		rec, err := r.readRecord(name)
		if err != nil {
			continue // deleted since the index was read
		}
		fn(rec)
	}
	return nil
}

// Evict removes name when owner still holds it here: the federation gave
// the name to another claimant. The deletion is on disk before Evict
// returns and is published like any other; the evicted owner learns it
// on its next request (register answers taken while the winner's claim is
// known). It reports whether a record was removed.
func (r *Registry) Evict(ctx context.Context, name string, owner identity.ID) (bool, error) {
	r.writeMu.Lock()
	r.mu.RLock()
	e := r.index[name]
	r.mu.RUnlock()
	if e == nil || e.owner != owner {
		r.writeMu.Unlock()
		return false, nil
	}
	err := r.o.Storage.Update(func(tx *store.Tx) error {
		nt, err := tx.Sub(bucketNames)
		if err != nil {
			return err
		}
		return nt.Delete([]byte(name))
	})
	if err != nil {
		r.writeMu.Unlock()
		return false, err
	}
	r.mu.Lock()
	if cur := r.index[name]; cur != nil {
		r.dropOwner(cur.owner)
		delete(r.index, name)
	}
	r.mu.Unlock()
	r.writeMu.Unlock()
	r.o.Logger.Info("registry: name evicted, the federation gave it to an earlier claim", "name", name, "owner", owner)
	if err := r.o.Publisher.Unpublish(ctx, name); err != nil {
		r.m.publishErrors.Inc()
	}
	return true, nil
}

// Records: see Registry.Records; nothing before Start.
func (s *Service) Records(fn func(*wire.Record)) error {
	if r := s.reg.Load(); r != nil {
		return r.Records(fn)
	}
	return nil
}

// Evict: see Registry.Evict.
func (s *Service) Evict(ctx context.Context, name string, owner identity.ID) (bool, error) {
	if r := s.reg.Load(); r != nil {
		return r.Evict(ctx, name, owner)
	}
	return false, nil
}

// Get: see Registry.Get.
func (s *Service) Get(name string) (*wire.Record, error) {
	if r := s.reg.Load(); r != nil {
		return r.Get(name)
	}
	return nil, &Error{Code: wire.CodeNotFound, Msg: "registry not started"}
}

// Len: see Registry.Len; 0 before Start.
func (s *Service) Len() int {
	if r := s.reg.Load(); r != nil {
		return r.Len()
	}
	return 0
}
