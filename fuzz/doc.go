// Package fuzz holds the fuzz targets of every decoder of untrusted bytes
// in pc2, in one place so that CI can list and run them all briefly
// (`make fuzz-ci`) and longer by hand (`make fuzz FUZZTIME=10m`). Each
// target checks a property (round trip, error instead of panic, bounded
// work), not only that the parser returns. Seed corpora live in
// testdata/fuzz/<Target>/.
package fuzz
