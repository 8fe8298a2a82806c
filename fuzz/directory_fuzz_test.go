package fuzz

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/transport/peer/directory"
)

func peerRecordSeeds() [][]byte {
	return [][]byte{
		[]byte(`{"t":1800000000,"nat":"endpoint-independent","udp":["203.0.113.7:4000","[2001:db8::1]:4000"],"relays":[{"id":"HZXXs9LTfNQjrDKvvexRhuMk8TTJhYCfrHwaj3jUzuhZ","addr":"198.51.100.1:39004"}]}`),
		[]byte(`{"t":1800000000,"hard":true,"tcp":["203.0.113.7:443"],"sn":["HZXXs9LTfNQjrDKvvexRhuMk8TTJhYCfrHwaj3jUzuhZ"]}`),
		[]byte(`{"t":1800000000,"x":1}`),
		[]byte(`{"t":1800000000,"udp":["0.0.0.0:1"]}`),
		[]byte(`{"t":1e30}`),
		[]byte(`[]`),
		[]byte(`{"t":1800000000}{"t":1}`),
		{},
	}
}

// FuzzPeerRecord checks the peer record decoder of transport/peer/directory:
// no panic; a refusal is ErrMalformed; an accepted payload re-encodes to a
// payload that decodes to the same record (decode → encode → decode stable)
// and fits the DHT's signed value limit.
func FuzzPeerRecord(f *testing.F) {
	for _, s := range peerRecordSeeds() {
		f.Add(s)
	}
	id := identity.ID{1, 2, 3}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := directory.Unmarshal(id, b)
		if err != nil {
			if !errors.Is(err, directory.ErrMalformed) {
				t.Fatalf("refused without ErrMalformed: %v", err)
			}
			return
		}
		enc, err := r.Marshal()
		if err != nil {
			t.Fatalf("accepted record does not re-encode: %v", err)
		}
		r2, err := directory.Unmarshal(id, enc)
		if err != nil || !reflect.DeepEqual(r, r2) {
			t.Fatalf("unstable: %+v → %s → %+v, %v", r, enc, r2, err)
		}
		enc2, _ := r2.Marshal()
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding not canonical after one round: %s vs %s", enc, enc2)
		}
	})
}
