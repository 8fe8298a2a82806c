package natlab_test

import (
	"context"
	"testing"
	"time"

	"github.com/elacity/pc2/tools/natlab"
)

// TestSelfTest brings up every profile (hairpin off and on) and two double
// NATs, classifies each private host with the probe agent and requires the
// observed behaviour to equal the declared one.
func TestSelfTest(t *testing.T) {
	t0 := time.Now()
	l := upLab(t, natlab.ZooTopology())
	up := time.Since(t0)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	hosts := l.Hosts(natlab.KindPrivate)
	res, err := l.ClassifyHosts(ctx, hosts, natlab.ProbeTiming{})
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range hosts {
		want := natlab.Expected(l.Nodes, h)
		got := res[i].Behaviour()
		var chain []string
		for _, r := range natlab.NATChain(l.Nodes, h) {
			chain = append(chain, r.Name+"("+r.Options.String()+")")
		}
		t.Logf("%-8s behind %v: %v (mapped %v, %d ms)", h, chain, got, res[i].Mapped, res[i].Millis)
		if got != want {
			t.Errorf("%s: observed %v, declared %v", h, got, want)
		}
		// The probe server sees the outermost NAT's public address.
		nats := natlab.NATChain(l.Nodes, h)
		if outer := nats[len(nats)-1].Addrs[0]; res[i].Mapped.Addr() != outer {
			t.Errorf("%s: mapped to %v, want the outermost NAT's address %v", h, res[i].Mapped, outer)
		}
	}
	t.Logf("self-test: lab up %v, total %v", up.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
}
