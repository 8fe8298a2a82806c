package directory

import (
	"crypto/rand"
	"testing"

	"github.com/elacity/pc2/core/identity"
)

func BenchmarkEncodeSign(b *testing.B) {
	kp, _ := identity.Generate(rand.Reader)
	rec := testRecord()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Sign(kp, rec); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeVerify(b *testing.B) {
	kp, _ := identity.Generate(rand.Reader)
	v, _ := Sign(kp, testRecord())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Open(kp.ID(), &v); err != nil {
			b.Fatal(err)
		}
	}
}
