package deadline_test

import (
	"runtime"
	"testing"
	"time"

	"github.com/elacity/pc2/core/deadline"
)

func passed(d *deadline.Deadline) bool {
	select {
	case <-d.Wait():
		return true
	default:
		return false
	}
}

func TestDeadline(t *testing.T) {
	d := deadline.New()
	if passed(d) {
		t.Fatal("a new deadline has passed")
	}
	d.Set(time.Unix(1, 0))
	if !passed(d) {
		t.Fatal("a deadline in the past has not passed")
	}
	d.Set(time.Time{})
	if passed(d) {
		t.Fatal("a cleared deadline has passed")
	}
	at := time.Now().Add(20 * time.Millisecond)
	d.Set(at)
	if passed(d) && time.Now().Before(at) { // a descheduled test may see it pass in time
		t.Fatal("a future deadline passed before its time")
	}
	select {
	case <-d.Wait():
	case <-time.After(5 * time.Second):
		t.Fatal("the deadline never passed")
	}
	// Moving it away before it passes: it does not fire.
	d.Set(time.Now().Add(10 * time.Millisecond))
	w := d.Wait()
	d.Set(time.Now().Add(time.Hour))
	select {
	case <-d.Wait():
		t.Fatal("a deadline moved an hour away passed")
	case <-time.After(50 * time.Millisecond):
	}
	_ = w
}

// A deadline moved away just as its timer fires must not pass: the timer's
// close of the old channel may land after Set has looked at it.
func TestDeadlineMovedAsItFires(t *testing.T) {
	d := deadline.New()
	for i := range 20000 {
		d.Set(time.Now().Add(time.Duration(i%50) * time.Microsecond))
		d.Set(time.Now().Add(time.Hour))
		for range i % 3 {
			runtime.Gosched()
		}
		if passed(d) {
			t.Fatalf("iteration %d: a deadline an hour away has passed", i)
		}
	}
}
