// Package natlab builds NAT laboratories out of Linux network namespaces and
// nftables: an "internet" segment with public hosts, NAT routers with named
// behaviours (full cone, address-restricted, port-restricted, symmetric,
// hairpinning, double NAT/CGNAT, mapping timeouts, loss, bandwidth limits,
// an optional UPnP/NAT-PMP gateway) and private hosts behind them.
//
// It exists because NAT traversal can only be tested honestly against real
// kernels doing real address translation: every later hole-punching, relay and
// port-mapping test of PC2 runs inside a lab built here, and researchers use the
// same lab (through `pc2 natlab`) to reproduce traversal results.
//
// The package also carries a tiny probe protocol (RFC 5780-style mapping and
// filtering discovery, hand-written rather than STUN so that the lab checks
// itself with a minimal, fuzzed decoder) and the agents that speak it. The
// probe server also answers STUN Binding requests with CHANGE-REQUEST, only
// because miniupnpd accepts the lab's documentation-prefix WAN addresses
// after a STUN test and not otherwise (see startPortMapper). Agents run as real processes inside the namespaces: the
// lab re-executes the current executable through a [Launcher].
//
// Everything a lab creates lives in network namespaces named with a per-run
// prefix ("pc2lab-<id>-"); interfaces and bridges exist only inside those
// namespaces, so deleting the namespaces (after killing their processes) removes
// everything. Namespaces of crashed runs are detected by a dead owner pid and
// removed by the next lab that starts.
package natlab
