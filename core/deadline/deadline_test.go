package deadline_test

import (
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
	d.Set(time.Now().Add(20 * time.Millisecond))
	if passed(d) {
		t.Fatal("a future deadline passed at once")
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
