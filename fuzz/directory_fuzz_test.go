package fuzz

import (
	"bytes"
	"testing"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/transport/peer/directory"
)

// FuzzPeerRecord decodes untrusted record bytes: no panic, and whatever
// decodes re-encodes to bytes that decode to the same encoding.
func FuzzPeerRecord(f *testing.F) {
	f.Add([]byte(`{"t":1800000000,"nat":"endpoint-independent","udp":["203.0.113.5:4000"],"tcp":["[2001:db8::1]:4001"]}`))
	f.Add([]byte(`{"t":1800000000,"hard":true,"relays":[{"id":"x","addr":"1.2.3.4:5"}]}`))
	f.Add([]byte(`{"t":1800000000,"x":1}`))
	var id identity.ID
	id[0] = 7
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := directory.Decode(id, b)
		if err != nil {
			return
		}
		enc, err := r.Encode()
		if err != nil {
			t.Fatalf("decoded record does not encode: %v", err)
		}
		r2, err := directory.Decode(id, enc)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		enc2, err := r2.Encode()
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("unstable: %q vs %q (%v)", enc, enc2, err)
		}
	})
}
