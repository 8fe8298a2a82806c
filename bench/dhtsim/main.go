// Command dhtsim runs the deterministic DHT simulator (package dht/sim) at
// full scale and prints the figures compared with the goals D1–D5 and D10
// of shared/research/nat-dht.md §C2. The CI-sized version of the same
// scenarios is dht/sim's test.
//
//	go run ./bench/dhtsim                      # 10,000 nodes, every scenario
//	go run ./bench/dhtsim -scenarios base -nodes 2000
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/elacity/pc2/dht/sim"
)

func main() {
	var (
		nodes     = flag.Int("nodes", 10_000, "network size")
		lookups   = flag.Int("lookups", 10_000, "measured lookups per batch")
		seed      = flag.Uint64("seed", 1, "PRNG seed")
		scenarios = flag.String("scenarios", "base,churn,sybil,inject,liars", "comma-separated scenarios")
		churnFor  = flag.Duration("churn-for", time.Hour, "virtual time under churn before measuring")
		cpuprof   = flag.String("cpuprofile", "", "write a CPU profile")
	)
	flag.Parse()
	if *cpuprof != "" {
		f, err := os.Create(*cpuprof)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	want := map[string]bool{}
	for _, s := range strings.Split(*scenarios, ",") {
		want[strings.TrimSpace(s)] = true
	}
	fmt.Printf("# dhtsim: %d nodes, seed %d, k=16, α=3, link RTT log-normal median 50ms σ=0.5\n\n", *nodes, *seed)
	if want["base"] || want["sybil"] || want["inject"] {
		base(*nodes, *lookups, *seed, want)
	}
	if want["churn"] {
		churn(*nodes, *lookups, *seed, *churnFor)
	}
	if want["liars"] {
		liars(*nodes, *lookups, *seed)
	}
}

type stopwatch struct {
	wall time.Time
	cpu  time.Duration
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func start() stopwatch { return stopwatch{time.Now(), cpuTime()} }

func (s stopwatch) String() string {
	return fmt.Sprintf("%.1fs wall, %.1fs CPU", time.Since(s.wall).Seconds(), (cpuTime() - s.cpu).Seconds())
}

func bootstrap(cfg sim.Config) *sim.Sim {
	sw := start()
	s := sim.New(cfg)
	s.Bootstrap(5 * time.Minute)
	e, b := s.TableStats()
	fmt.Printf("bootstrap of %d nodes (%s): %d events, %d datagrams, %.0f contacts and %.1f buckets per table, heap %.1f KiB per node\n",
		cfg.Nodes, sw, s.Events, s.Datagrams, e, b, float64(s.HeapPerNode())/1024)
	return s
}

func base(nodes, lookups int, seed uint64, want map[string]bool) {
	fmt.Printf("## base: no churn, no loss\n\n")
	sw := start()
	s := bootstrap(sim.Config{Nodes: nodes, Seed: seed})
	fmt.Printf("table health (D5): %.2f%% of nodes hold all k closest\n\n", 100*s.TableHealth())
	if want["base"] {
		for _, p := range []sim.LookupPlan{
			{Name: "strict (the k closest must answer)", Count: lookups, Window: 5 * time.Minute, Publish: true},
			{Name: "beta (the 3 closest must answer)", Count: lookups, Window: 5 * time.Minute, Confirm: 3},
		} {
			lw := start()
			m := s.Plan(p)
			s.RunFor(p.Window + time.Minute)
			fmt.Printf("%s(%s)\n\n", m, lw)
		}
		fmt.Printf("base total: %s, %d events\n\n", sw, s.Events)
	}
	if want["sybil"] {
		sw := start()
		r := s.SybilAttack(1000, 100, 10*time.Minute)
		fmt.Printf("## sybil (D10): %d attacker ids in one /24, each aimed at one of %d victims' buckets (%s)\n\n", r.IDs, r.Victims, sw)
		fmt.Printf("victims: max %d attacker slots in one bucket, max %d in one table (%d/%d victims hold any)\n",
			r.MaxPerBucketVictim, r.MaxPerTableVictim, r.VictimsReached, r.Victims)
		fmt.Printf("all honest nodes: max %d per bucket, max %d per table\n\n", r.MaxPerBucketAnyNode, r.MaxPerTableAnyNode)
	}
	if want["inject"] {
		sw := start()
		s.Plan(sim.LookupPlan{Name: "background", Count: lookups, Window: 5 * time.Minute}) // answers to watch
		r := s.Inject(nodes, 5*time.Minute)
		fmt.Printf("## victim injection: %d forged contacts entered tables, each at its own victim address in 44.0.0.0/8 (%s)\n\n", r.Injected, sw)
		fmt.Printf("FIND_NODE answers naming a victim: %d of %d (+%d probes); datagrams sent to victims: %d (at most one check per injected contact)\n\n",
			r.HandedOut, r.Answers, r.Probes, r.ToVictim)
	}
}

func churn(nodes, lookups int, seed uint64, churnFor time.Duration) {
	fmt.Printf("## churn: 10%%/hour, 5%% datagram loss\n\n")
	sw := start()
	s := bootstrap(sim.Config{Nodes: nodes, Seed: seed + 1, ChurnPerHour: 0.10, Loss: 0.05})
	s.RunFor(churnFor)
	fmt.Printf("after %v of churn: %d nodes ever, %d alive; table health (D5) %.2f%%\n", churnFor, s.Nodes(), s.Alive(), 100*s.TableHealth())
	for _, p := range []sim.LookupPlan{
		{Name: "strict under churn+loss", Count: lookups, Window: 10 * time.Minute, Publish: true},
		{Name: "beta under churn+loss", Count: lookups, Window: 10 * time.Minute, Confirm: 3},
	} {
		m := s.Plan(p)
		s.RunFor(p.Window + time.Minute)
		fmt.Printf("%s\n", m)
	}
	fmt.Printf("table health at the end (D5): %.2f%%; churn total %s, %d events\n\n", 100*s.TableHealth(), sw, s.Events)
}

func liars(nodes, lookups int, seed uint64) {
	fmt.Printf("## liars (D10): 20%% colluding nodes answer FIND_NODE with the liars closest to the target\n\n")
	sw := start()
	s := bootstrap(sim.Config{Nodes: nodes, Seed: seed + 2, Liars: 0.2})
	n := max(lookups/5, 100)
	for _, d := range []int{1, 3} {
		m := s.Plan(sim.LookupPlan{Name: fmt.Sprintf("d=%d disjoint paths", d), Count: n, Window: 5 * time.Minute, Paths: d})
		s.RunFor(6 * time.Minute)
		fmt.Printf("%s\n", m)
	}
	fmt.Printf("liars total %s\n\n", sw)
}
