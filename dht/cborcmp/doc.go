// Package cborcmp measures the DHT message codec of dht/message against the
// same job done with github.com/fxamacker/cbor/v2: decoding and re-encoding
// a FIND_NODE response with 8 IPv4 nodes (Boson's CompatibilityTests golden)
// into the same Go types, producing the same bytes.
//
// It is a separate module so that the comparison library never becomes a
// dependency of PC2 itself. Run it with
//
//	cd dht/cborcmp && go test -run . -bench . -benchmem
//
// The results are recorded in dht/BENCH.md.
package cborcmp
