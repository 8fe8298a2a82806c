package registry

import (
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/plugins/registry/wire"
)

// nonceCache remembers the nonces of accepted requests until their
// timestamp leaves the skew window; after that the timestamp check alone
// refuses a replay. It is bounded in total and per id: when an id (or the
// cache) is full of live nonces, new requests are refused rather than old
// nonces forgotten, because forgetting would let a replay through.
//
// It is guarded by Registry.writeMu. Nonces are also written to disk in
// the same transaction as the change they belong to, and reloaded by
// Open, so a restart does not reopen the window either.
type nonceCache struct {
	max, maxPerID int
	exp           map[nonceKey]int64 // Unix second after which the nonce is dead
	perID         map[identity.ID]int
}

func newNonceCache(max, maxPerID int) nonceCache {
	return nonceCache{max: max, maxPerID: maxPerID, exp: map[nonceKey]int64{}, perID: map[identity.ID]int{}}
}

func idOf(k nonceKey) (id identity.ID) {
	copy(id[:], k[:identity.IDSize])
	return id
}

func (c *nonceCache) seen(k nonceKey, now int64) bool {
	e, ok := c.exp[k]
	return ok && e > now
}

// room makes space for one more nonce of id, purging dead ones if the
// cache or the id is full, and refuses when it cannot.
func (c *nonceCache) room(id identity.ID, now int64) error {
	if len(c.exp) < c.max && c.perID[id] < c.maxPerID {
		return nil
	}
	c.remove(c.expired(now, len(c.exp)))
	if c.perID[id] >= c.maxPerID {
		return refuse(wire.CodeRateLimited, "too many requests from this id within the replay window")
	}
	if len(c.exp) >= c.max {
		return refuse(wire.CodeUnavailable, "replay cache full; try again in a minute")
	}
	return nil
}

func (c *nonceCache) add(k nonceKey, exp int64) {
	if _, ok := c.exp[k]; !ok {
		c.perID[idOf(k)]++
	}
	c.exp[k] = exp
}

// expired returns up to max dead nonces.
func (c *nonceCache) expired(now int64, max int) []nonceKey {
	var out []nonceKey
	for k, e := range c.exp {
		if len(out) >= max {
			break
		}
		if e <= now {
			out = append(out, k)
		}
	}
	return out
}

func (c *nonceCache) remove(keys []nonceKey) {
	for _, k := range keys {
		if _, ok := c.exp[k]; !ok {
			continue
		}
		delete(c.exp, k)
		id := idOf(k)
		if c.perID[id]--; c.perID[id] <= 0 {
			delete(c.perID, id)
		}
	}
}
