package directory

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/node"
)

// Age limits applied by Lookup.
const (
	DefaultMaxAge = 2 * time.Hour
	MaxSkew       = 5 * time.Minute
)

// Publish signs rec with kp and stores it in the DHT. The DHT keeps a stored
// value unless the new seq is strictly higher, so a caller republishing within
// the same second must advance rec.Issued past the last one (Publisher does).
func Publish(ctx context.Context, n *node.Node, kp *identity.KeyPair, rec Record) error {
	v, err := Sign(kp, rec)
	if err != nil {
		return err
	}
	if _, err := n.PutValue(ctx, v, node.PutOptions{}); err != nil {
		return fmt.Errorf("directory: publish: %w", err)
	}
	return nil
}

// Lookup finds id's record in the DHT and checks owner, signature, encoding
// and age against now (maxAge <= 0 means DefaultMaxAge).
func Lookup(ctx context.Context, n *node.Node, id identity.ID, now time.Time, maxAge time.Duration) (Record, error) {
	v, err := n.GetValue(ctx, id, node.GetOptions{})
	if errors.Is(err, node.ErrNotFound) {
		return Record{}, fmt.Errorf("%w: %v", ErrNotFound, id)
	}
	if err != nil {
		return Record{}, fmt.Errorf("directory: lookup %v: %w", id, err)
	}
	r, err := Open(id, &v)
	if err != nil {
		return Record{}, err
	}
	return r, CheckAge(r, now, maxAge)
}

// CheckAge rejects a record older than maxAge or issued more than MaxSkew in
// the future.
func CheckAge(r Record, now time.Time, maxAge time.Duration) error {
	if maxAge <= 0 {
		maxAge = DefaultMaxAge
	}
	if now.Sub(r.Issued) > maxAge {
		return fmt.Errorf("%w: issued %v, max age %v", ErrExpired, r.Issued, maxAge)
	}
	if r.Issued.Sub(now) > MaxSkew {
		return fmt.Errorf("%w: issued %v", ErrFuture, r.Issued)
	}
	return nil
}
