//go:build race

package node

// raceEnabled: under the race detector, timing is distorted several-fold
// and unevenly, so latency comparisons are logged but not asserted.
const raceEnabled = true
