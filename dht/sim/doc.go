// Package sim is a deterministic, single-threaded discrete-event
// simulator of a Kademlia network built from the real dht/routing and
// dht/lookup code: N nodes (10,000 by default) exchange PING, FIND_NODE
// and STORE over an in-memory network with a virtual clock.
//
// It exists to measure the DHT against the goals D1–D5 and D10 of
// shared/research/nat-dht.md §C2 (hops, latency, RPCs, success, table
// health, Sybil and liar attacks) at a scale no test network reaches, and
// to catch regressions of those figures in CI at 1,000 nodes.
//
// Determinism: one seeded PRNG, one event queue ordered by (time, sequence
// number), no goroutines, no map iteration. Virtual time never sleeps: the
// clock jumps to the next event. The same seed gives the same figures.
//
// Model:
//   - link RTT per node pair is log-normal (median LinkMedian, shape
//     LinkSigma), each one-way trip gets up to +10% jitter; every datagram
//     is lost independently with probability Loss;
//   - a node joins through BootstrapPeers random live nodes: a lookup of
//     its own id, then one lookup per bucket; afterwards every TickInterval
//     it pings what its table says is due and refreshes buckets idle for
//     RefreshInterval (Boson: 15 min);
//   - the RPC layer (here: the simulator) records every answer in the
//     table as Verified with its RTT, every timeout as Failed, and every
//     inbound request as AddUnverified, which is what the node will do;
//   - churn replaces random live nodes by new ones (new id and address) as
//     a Poisson process of ChurnPerHour × N events per hour;
//   - liars answer FIND_NODE with the liars closest to the target (they
//     collude and know each other) and otherwise behave.
package sim
