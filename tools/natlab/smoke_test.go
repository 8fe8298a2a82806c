package natlab_test

import (
	"context"
	"testing"
	"time"

	"github.com/elacity/pc2/tools/natlab"
)

func TestSmoke(t *testing.T) {
	a, _ := natlab.ParseNATSpec("prc")
	b, _ := natlab.ParseNATSpec("fc,hairpin")
	t0 := time.Now()
	l := upLab(t, natlab.PairTopology(a, b, 2))
	t.Logf("up in %v", time.Since(t0))
	ctx := context.Background()
	for _, h := range []string{"a1", "b1"} {
		r, err := l.Classify(ctx, h, natlab.ProbeTiming{})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %+v", h, r)
	}
}
