package natlab_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/elacity/pc2/tools/natlab"
)

// punchable is the theory of nat-dht.md §A1: simultaneous-send punching with
// peer-reflexive answers fails only port-restricted↔symmetric (both orders)
// and symmetric↔symmetric.
func punchable(a, b natlab.Profile) bool {
	hard := func(p natlab.Profile) bool { return p.Mapping != natlab.EIM }
	strict := func(p natlab.Profile) bool { return p.Filtering == natlab.APDF }
	switch {
	case hard(a) && hard(b):
		return false
	case hard(a) && strict(b), hard(b) && strict(a):
		return false
	}
	return true
}

// TestPunchMatrix punches every ordered pair of the four profiles between two
// distinct routers and compares with the theory: 13 punchable, 3 not.
func TestPunchMatrix(t *testing.T) {
	var opts []natlab.NATOptions
	for _, p := range natlab.Profiles() {
		opts = append(opts, natlab.NATOptions{Profile: p})
	}
	t0 := time.Now()
	l := upLab(t, natlab.MatrixTopology(opts))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	type cell struct {
		a, b   natlab.Profile
		ok     bool
		detail string
	}
	var cells []cell
	for _, pa := range natlab.Profiles() {
		for _, pb := range natlab.Profiles() {
			cells = append(cells, cell{a: pa, b: pb})
		}
	}
	// Each host takes part in several pairs; pairs without a common host run
	// concurrently in rounds of four (a latin-square schedule).
	n := len(natlab.Profiles())
	for round := range n {
		err := parallelDo(ctx, n, func(i int) error {
			c := &cells[i*n+(i+round)%n]
			ha, hb := c.a.Alias+"-a1", c.b.Alias+"-b1"
			ra, rb, err := l.Punch(ctx, ha, hb, 1500*time.Millisecond)
			if err != nil {
				return fmt.Errorf("%s↔%s: %w", ha, hb, err)
			}
			c.ok = ra.OK && rb.OK
			c.detail = fmt.Sprintf("%s mapped %v ack=%v (%d ms, %d sent) | %s mapped %v ack=%v (%d ms, %d sent)",
				ha, ra.Mapped, ra.OK, ra.Millis, ra.Sent, hb, rb.Mapped, rb.OK, rb.Millis, rb.Sent)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	var okCount int
	var table strings.Builder
	fmt.Fprintf(&table, "%-16s", "A \\ B")
	for _, p := range natlab.Profiles() {
		fmt.Fprintf(&table, "%-17s", p.Name)
	}
	for i, c := range cells {
		if i%n == 0 {
			fmt.Fprintf(&table, "\n%-16s", c.a.Name)
		}
		mark := "fail"
		if c.ok {
			mark = "OK"
			okCount++
		}
		fmt.Fprintf(&table, "%-17s", mark)
		if c.ok != punchable(c.a, c.b) {
			t.Errorf("%s → %s: punched=%v, theory says %v; %s", c.a.Name, c.b.Name, c.ok, punchable(c.a, c.b), c.detail)
		}
	}
	t.Logf("UDP punch matrix (%d/%d punched, %v):\n%s", okCount, len(cells), time.Since(t0).Round(time.Millisecond), table.String())
	if okCount != 13 {
		t.Errorf("punched %d of 16 ordered pairs, theory says 13", okCount)
	}
}

// parallelDo runs f(0..n-1) concurrently and returns the first error.
func parallelDo(ctx context.Context, n int, f func(int) error) error {
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- f(i) }()
	}
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}
