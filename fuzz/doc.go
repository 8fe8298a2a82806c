// Package fuzz holds the native Go fuzz targets for every decoder of
// untrusted bytes, with their seed corpora under testdata/fuzz/. Run one
// with: go test ./fuzz -run '^$' -fuzz '^FuzzClientHello$' -fuzztime 10s
package fuzz
