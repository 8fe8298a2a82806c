// Package routing is the Kademlia routing table of one DHT node for one
// address family (the node keeps one table for IPv4 and one for IPv6).
//
// It exists to decide, deterministically and without owning sockets,
// goroutines or clocks, which peers a node remembers, which it hands out
// to others, and whom it should ping next. The caller feeds it events
// (a peer answered, a request timed out, a peer contacted us) with the
// current time, and asks it for the closest contacts, the liveness checks
// that are due and the buckets that need a refresh lookup. Because it has
// no hidden time source, the same code runs in the node and in the
// 10,000-node simulator (package dht/sim).
//
// Defenses built in (see shared/research/nat-dht.md §B3):
//   - victim injection: Closest with onlyVerified hands out only contacts
//     that answered a request of ours at that very address;
//   - Sybil and eclipse: at most MaxPerSubnetBucket contacts per source
//     unit (IPv4 /24, IPv6 /64) per bucket and MaxPerSubnetTable per table,
//     replacements included (geth's 2/10 rule);
//   - staleness: liveness checks on the table's own schedule (the
//     contacts closest to us more often), eviction after MaxFailures
//     consecutive failures, promotion from a per-bucket replacement
//     cache; a verified contact is never displaced by an unverified
//     newcomer, nor is its address re-pointed by one;
//   - bogons: loopback, private, documentation and other non-global
//     addresses are refused unless DeveloperMode is on.
//
// Buckets are indexed by the length of the prefix an id shares with the
// node's own id; the last bucket holds everything at least that close and
// splits when full (mldht/libp2p "lazily unfolded" buckets), so the table
// is fine-grained around the node's own id and coarse far away. A bucket
// still needed to make up the K contacts closest to our own id (a "home"
// bucket) keeps the closest it hears of, up to 2K, rather than K random
// ones: that is what lets nearly every node hold its k closest nodes
// (rfm19 found 61% for IPFS), which in turn makes lookups exact.
//
// A Table is not safe for concurrent use: the node serialises access (one
// owner goroutine, or a mutex around it).
package routing
