package record

import (
	"errors"
	"fmt"
)

// Store-rule errors. The node answers them with the Boson error codes noted.
var (
	ErrCASFail               = errors.New("record: stored sequence number does not match cas")                // 301
	ErrSeqNotMonotonic       = errors.New("record: sequence number lower than the stored one")                // 302 (v2)
	ErrImmutableSubstitution = errors.New("record: mutable and immutable values cannot replace each other")   // 303
	ErrAuthDowngrade         = errors.New("record: authenticated peer record cannot lose or change its node") // 402
)

// StoreAction is what a storing node does with a valid incoming record.
type StoreAction uint8

const (
	// Replace stores the incoming record in place of the existing one.
	Replace StoreAction = iota
	// Keep keeps the existing content and only refreshes its timestamp
	// (a re-announce of the same or an older version).
	Keep
)

func (a StoreAction) String() string {
	if a == Replace {
		return "replace"
	}
	return "keep"
}

// CheckValueStore applies the v3.1 store rules to a validated incoming value.
// existing is nil when nothing is stored under the id. cas < 0 means no cas.
//
//   - mixing mutable and immutable: ErrImmutableSubstitution (303);
//   - cas >= 0 and the stored seq is greater than cas: ErrCASFail (301);
//   - a strictly higher seq replaces the content, anything else keeps the
//     first write (and refreshes it).
func CheckValueStore(existing, incoming *Value, cas int32) (StoreAction, error) {
	if existing == nil {
		return Replace, nil
	}
	if existing.Mutable() != incoming.Mutable() {
		return Keep, ErrImmutableSubstitution
	}
	if cas >= 0 && existing.Seq > cas {
		return Keep, fmt.Errorf("%w: stored %d, cas %d", ErrCASFail, existing.Seq, cas)
	}
	if incoming.Seq > existing.Seq {
		return Replace, nil
	}
	return Keep, nil
}

// CheckValueStoreV2 applies the v2 store rules (boson.md §4.3): a lower seq
// fails with ErrSeqNotMonotonic (302), cas >= 0 must equal the stored seq
// (301), and anything else replaces.
func CheckValueStoreV2(existing, incoming *Value, cas int32) (StoreAction, error) {
	if existing == nil {
		return Replace, nil
	}
	if existing.Mutable() != incoming.Mutable() {
		return Keep, ErrImmutableSubstitution
	}
	if !incoming.Mutable() {
		return Replace, nil
	}
	if incoming.Seq < existing.Seq {
		return Keep, fmt.Errorf("%w: stored %d, got %d", ErrSeqNotMonotonic, existing.Seq, incoming.Seq)
	}
	if cas >= 0 && existing.Seq != cas {
		return Keep, fmt.Errorf("%w: stored %d, cas %d", ErrCASFail, existing.Seq, cas)
	}
	return Replace, nil
}

// CheckPeerStore applies the v3.1 store rules to a validated incoming peer
// record with the same (id, fingerprint) as existing (nil when none):
// cas >= 0 below the stored seq fails with ErrCASFail, a strictly higher seq
// replaces, anything else keeps. An authenticated record may only be
// replaced by one authenticated by the same node (boson.md §4.4); Boson's
// Java storage leaves that rule to its builder, PC2 also enforces it here.
func CheckPeerStore(existing, incoming *PeerInfo, cas int32) (StoreAction, error) {
	if existing == nil {
		return Replace, nil
	}
	if cas >= 0 && existing.Seq > cas {
		return Keep, fmt.Errorf("%w: stored %d, cas %d", ErrCASFail, existing.Seq, cas)
	}
	if incoming.Seq <= existing.Seq {
		return Keep, nil
	}
	if existing.Authenticated() && incoming.Node != existing.Node {
		return Keep, fmt.Errorf("%w: stored node %s, got %s", ErrAuthDowngrade, existing.Node, incoming.Node)
	}
	return Replace, nil
}
