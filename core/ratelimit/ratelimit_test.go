package ratelimit

import (
	"testing"
	"time"
)

func TestBurstThenRate(t *testing.T) {
	l := New[string](10, 5, 100)
	now := time.Unix(1000, 0)
	for i := range 5 {
		if !l.Allow("a", now) {
			t.Fatalf("burst token %d refused", i)
		}
	}
	if l.Allow("a", now) {
		t.Fatal("sixth event in the same instant allowed")
	}
	if !l.Allow("b", now) {
		t.Fatal("another key was limited by a's use")
	}
	now = now.Add(100 * time.Millisecond) // one token at 10/s
	if !l.Allow("a", now) || l.Allow("a", now) {
		t.Fatal("refill wrong")
	}
	now = now.Add(time.Hour)
	n := 0
	for l.Allow("a", now) {
		n++
	}
	if n != 5 {
		t.Fatalf("refill capped at %d, want burst 5", n)
	}
}

func TestBoundedKeys(t *testing.T) {
	l := New[int](1, 1, 100)
	now := time.Unix(0, 0)
	for i := range 10_000 {
		l.Allow(i, now)
	}
	if l.Len() != 100 {
		t.Fatalf("%d keys kept, want 100", l.Len())
	}
	// Recently used keys survive; they are still limited.
	if l.Allow(9_999, now) {
		t.Fatal("recent key lost its state")
	}
}

func TestClockGoingBackwardsDoesNotMint(t *testing.T) {
	l := New[string](1, 1, 10)
	now := time.Unix(100, 0)
	l.Allow("a", now)
	if l.Allow("a", now.Add(-time.Hour)) {
		t.Fatal("backwards clock minted a token")
	}
}

func BenchmarkAllowHit(b *testing.B) {
	l := New[[4]byte](1e9, 1e9, 10_000)
	now := time.Unix(0, 0)
	key := [4]byte{198, 51, 100, 7}
	b.ReportAllocs()
	for b.Loop() {
		l.Allow(key, now)
	}
}

func BenchmarkAllowChurn(b *testing.B) {
	l := New[uint32](1, 1, 10_000)
	now := time.Unix(0, 0)
	b.ReportAllocs()
	i := uint32(0)
	for b.Loop() {
		i++
		l.Allow(i, now)
	}
}
