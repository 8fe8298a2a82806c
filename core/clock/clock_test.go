package clock

import (
	"testing"
	"time"
)

func TestFakeTimer(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	f := NewFake(start)
	tm := f.NewTimer(10 * time.Second)
	f.Advance(9 * time.Second)
	select {
	case <-tm.C():
		t.Fatal("fired early")
	default:
	}
	f.Advance(time.Second)
	select {
	case got := <-tm.C():
		if !got.Equal(start.Add(10 * time.Second)) {
			t.Fatalf("fired at %v", got)
		}
	default:
		t.Fatal("did not fire when due")
	}
	if tm.Stop() {
		t.Fatal("Stop of a fired timer reported active")
	}
	tm.Reset(time.Second)
	if !tm.Stop() {
		t.Fatal("Stop of a reset timer reported inactive")
	}
	f.Advance(time.Hour)
	select {
	case <-tm.C():
		t.Fatal("stopped timer fired")
	default:
	}
	if !f.Now().Equal(start.Add(time.Hour + 10*time.Second)) {
		t.Fatalf("Now = %v", f.Now())
	}
}

func TestFakeZeroDurationFiresAtOnce(t *testing.T) {
	f := NewFake(time.Unix(0, 0))
	select {
	case <-f.NewTimer(0).C():
	default:
		t.Fatal("zero timer did not fire")
	}
}
