// Package lookup runs iterative Kademlia lookups: ask the α closest known
// nodes for nodes closer to a target, again and again, until the k
// closest have answered.
//
// It exists as a state machine (Lookup: Next, OnResponse, OnFailure) with
// no sockets, goroutines or clock of its own, so that one implementation
// serves both the node (Run drives it over an RPC interface with real
// deadlines) and the deterministic simulator (dht/sim drives it from an
// event queue on virtual time).
//
// Properties:
//   - termination: a path ends when its Confirm (default k) closest
//     non-failed candidates have all answered, or nothing is left to ask;
//     when α answers in a row bring nothing closer, the remaining queries
//     among the k closest go out at once (the Kademlia paper's final
//     round) instead of α at a time;
//   - adaptive timeouts: each query's soft timeout comes from
//     Config.Timeout, normally Timeouts (per-peer SRTT+4·RTTVAR, else the
//     node-wide estimate, bounded to [Min, Max]); at the soft timeout the
//     query leaves the α window and is retransmitted (MaxAttempts in all,
//     UDP has no retransmission of its own), and the node counts as failed
//     only at the last attempt's hard deadline (HardFactor × soft), so a
//     slow or lossy live node delays a lookup instead of dropping out of
//     its result;
//   - input hygiene: at most MaxPerResponse contacts are taken from one
//     answer; the node itself, the zero id, duplicates and unroutable
//     addresses are dropped; the candidate list per path is bounded;
//   - S/Kademlia disjoint paths: with Paths = d > 1 the seeds are dealt
//     round-robin to d independent paths and no node is used by two
//     paths, so d-1 paths may be captured by colluding liars and the
//     lookup still finds the true closest nodes through the last one;
//     when all paths end, their candidates are merged and the K closest
//     of them all confirmed (candidates a captured path was told of but
//     never asked get asked). Measured effect: bench/RESULTS-dht-sim.md.
//
// Tokens returned with FIND_NODE answers are opaque here: they are kept
// per answering node and handed back to the store function by Publish.
package lookup
