package main

import (
	"fmt"
	"io"
	"strings"
)

func printReport(w io.Writer, rs []result, s *suite) {
	fmt.Fprintf(w, "| metric | %s |\n", joinNames(rs))
	fmt.Fprintf(w, "|---|%s\n", strings.Repeat("---|", len(rs)))
	row := func(label string, f func(r result) string) {
		cells := make([]string, len(rs))
		for i, r := range rs {
			cells[i] = f(r)
		}
		fmt.Fprintf(w, "| %s | %s |\n", label, strings.Join(cells, " | "))
	}
	na := func(ok bool, f func() string) string {
		if !ok {
			return "–"
		}
		return f()
	}
	d := rs[0]
	row(fmt.Sprintf("new connections/s, hello → first byte (c=%d, %s in %d rounds)", s.concurrency, s.rateTime, s.rounds), func(r result) string {
		if r.ConnErrors > 0 {
			return fmt.Sprintf("%.0f (%d errors)", r.ConnsPerS, r.ConnErrors)
		}
		return fmt.Sprintf("%.0f", r.ConnsPerS)
	})
	row(fmt.Sprintf("first byte p50 / p99 µs (sequential, n=%d)", s.latencyN), func(r result) string { return fmt.Sprintf("%.0f / %.0f", r.P50us, r.P99us) })
	row("added p50 / p99 µs vs direct", func(r result) string {
		return fmt.Sprintf("%+.0f / %+.0f", r.P50us-d.P50us, r.P99us-d.P99us)
	})
	row(fmt.Sprintf("raw bulk 1 stream MB/s (%s in %d rounds)", s.bulkTime, s.rounds), func(r result) string { return fmt.Sprintf("%.0f", r.Bulk1MBps) })
	row("raw bulk 8 streams MB/s", func(r result) string { return fmt.Sprintf("%.0f", r.Bulk8MBps) })
	if d.TLSBulk1MBs > 0 {
		row(fmt.Sprintf("TLS bulk 1 / 8 streams MB/s (%s each)", s.tlsBulkTime), func(r result) string {
			return fmt.Sprintf("%.0f / %.0f", r.TLSBulk1MBs, r.TLSBulk8MBs)
		})
	}
	// CPU cost per unit: what bounds rate and throughput when the 2 cores
	// are shared by the load generator, the proxy and the backend.
	perConn := func(t int64, n int64) string {
		if n == 0 {
			return "–"
		}
		return fmt.Sprintf("%.0f", float64(t)*1e4/float64(n)) // ticks are 10 ms
	}
	perGB := func(t int64, b int64) string {
		if b == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f", float64(t)/100/(float64(b)/1e9))
	}
	row("CPU µs per connection: proxy / backend / client", func(r result) string {
		p := "–"
		if r.Name != "direct" {
			p = perConn(r.RateCPU[0], r.RateN)
		}
		return p + " / " + perConn(r.RateCPU[1], r.RateN) + " / " + perConn(r.RateCPU[2], r.RateN)
	})
	row("CPU s per GB, bulk 1: proxy / backend / client", func(r result) string {
		p := "–"
		if r.Name != "direct" {
			p = perGB(r.Bulk1CPU[0], r.Bulk1B)
		}
		return p + " / " + perGB(r.Bulk1CPU[1], r.Bulk1B) + " / " + perGB(r.Bulk1CPU[2], r.Bulk1B)
	})
	row("CPU s per GB, bulk 8: proxy / backend / client", func(r result) string {
		p := "–"
		if r.Name != "direct" {
			p = perGB(r.Bulk8CPU[0], r.Bulk8B)
		}
		return p + " / " + perGB(r.Bulk8CPU[1], r.Bulk8B) + " / " + perGB(r.Bulk8CPU[2], r.Bulk8B)
	})
	mib := func(kb int64) string { return fmt.Sprintf("%.1f", float64(kb)/1024) }
	row("RSS MiB: at start / max under load", func(r result) string {
		return na(r.RSSStartKB > 0, func() string { return mib(r.RSSStartKB) + " / " + mib(r.RSSLoadKB) })
	})
	row("RSS MiB: before / with idle conns", func(r result) string {
		return na(r.IdleConns > 0, func() string {
			return fmt.Sprintf("%s / %s (%d conns)", mib(r.RSSBaseKB), mib(r.RSSIdleKB), r.IdleConns)
		})
	})
	row(fmt.Sprintf("**RSS per idle established conn, KiB** (after %s idle)", s.idleWait), func(r result) string {
		return na(r.IdleConns > 0, func() string { return fmt.Sprintf("%.2f", idlePer(r)) })
	})
	row("kernel TCP memory per idle conn, KiB (namespace-wide, both ends)", func(r result) string {
		return na(r.IdleConns > 0, func() string { return fmt.Sprintf("%.2f", float64(r.IdleKernKB)/float64(r.IdleConns)) })
	})
	row("slowloris: pending held / reopened by proxy", func(r result) string {
		return na(r.Slow != nil, func() string { return fmt.Sprintf("%d / %d", r.Slow.Held, r.Slow.Reopened) })
	})
	row("**slowloris RSS bytes per pending conn**", func(r result) string {
		return na(r.Slow != nil, func() string { return fmt.Sprintf("%.0f", slowPer(r.Slow)) })
	})
	row("slowloris kernel TCP bytes per pending conn (both ends)", func(r result) string {
		return na(r.Slow != nil, func() string {
			return fmt.Sprintf("%.0f", float64(r.Slow.KernKB-r.Slow.KernBaseKB)*1024/float64(max(r.Slow.Held, 1)))
		})
	})
	row("slowloris: legit first byte p50 / p99 µs, failed", func(r result) string {
		return na(r.Slow != nil, func() string {
			return fmt.Sprintf("%.0f / %.0f, %d/%d", r.Slow.LegitP50us, r.Slow.LegitP99us, r.Slow.LegitFail, r.Slow.LegitN)
		})
	})

	var ours *result
	for i := range rs {
		if rs[i].Name == "ours" {
			ours = &rs[i]
		}
	}
	if ours == nil {
		return
	}
	ratio := func(a, b float64) string {
		if b == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	fmt.Fprintf(w, "\nRatios ours/peer (>1 better for ours on rate and throughput; <1 better for ours on latency and memory):\n\n")
	fmt.Fprintf(w, "| peer | conns/s | proxy CPU per conn | added p50 | added p99 | bulk 1 | bulk 8 | proxy CPU per GB (bulk 1) | RSS per idle conn | RSS per pending conn |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		if r.Name == "ours" {
			continue
		}
		idle, slow := "–", "–"
		if r.IdleConns > 0 && ours.IdleConns > 0 {
			idle = ratio(idlePer(*ours), idlePer(r))
		}
		if r.Slow != nil && ours.Slow != nil {
			slow = ratio(slowPer(ours.Slow), slowPer(r.Slow))
		}
		addP50, addP99 := "–", "–"
		if r.Name != "direct" {
			addP50 = ratio(ours.P50us-d.P50us, r.P50us-d.P50us)
			addP99 = ratio(ours.P99us-d.P99us, r.P99us-d.P99us)
		}
		cpuConn, cpuGB := "–", "–"
		if r.Name != "direct" && r.RateN > 0 && ours.RateN > 0 && r.RateCPU[0] > 0 {
			cpuConn = ratio(float64(ours.RateCPU[0])/float64(ours.RateN), float64(r.RateCPU[0])/float64(r.RateN))
		}
		if r.Name != "direct" && r.Bulk1B > 0 && ours.Bulk1B > 0 && r.Bulk1CPU[0] > 0 {
			cpuGB = ratio(float64(ours.Bulk1CPU[0])/float64(ours.Bulk1B), float64(r.Bulk1CPU[0])/float64(r.Bulk1B))
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Name,
			ratio(ours.ConnsPerS, r.ConnsPerS), cpuConn, addP50, addP99,
			ratio(ours.Bulk1MBps, r.Bulk1MBps), ratio(ours.Bulk8MBps, r.Bulk8MBps), cpuGB, idle, slow)
	}

	find := func(name string) *result {
		for i := range rs {
			if rs[i].Name == name {
				return &rs[i]
			}
		}
		return nil
	}
	fmt.Fprintf(w, "\nGoals (issue 5):\n\n| goal | measured | met |\n|---|---|---|\n")
	goal := func(name, measured string, met bool) {
		fmt.Fprintf(w, "| %s | %s | %s |\n", name, measured, map[bool]string{true: "yes", false: "**no**"}[met])
	}
	if d.Bulk1MBps > 0 {
		goal("bulk 1 stream ≥ 0.9× direct", fmt.Sprintf("%.2f×", ours.Bulk1MBps/d.Bulk1MBps), ours.Bulk1MBps >= 0.9*d.Bulk1MBps)
		goal("bulk 8 streams ≥ 0.9× direct", fmt.Sprintf("%.2f×", ours.Bulk8MBps/d.Bulk8MBps), ours.Bulk8MBps >= 0.9*d.Bulk8MBps)
	}
	if h := find("haproxy"); h != nil {
		if h.ConnsPerS > 0 {
			goal("connections/s ≥ 2× HAProxy", fmt.Sprintf("%.2f× (%.2f× direct)", ours.ConnsPerS/h.ConnsPerS, ours.ConnsPerS/d.ConnsPerS), ours.ConnsPerS >= 2*h.ConnsPerS)
		}
		if h.IdleConns > 0 && ours.IdleConns > 0 {
			goal("RSS per idle connection < HAProxy's", fmt.Sprintf("%.2f vs %.2f KiB", idlePer(*ours), idlePer(*h)), idlePer(*ours) < idlePer(*h))
		}
	}
	if n := find("nginx"); n != nil && n.P99us > 0 {
		goal("added p99 < nginx's", fmt.Sprintf("%+.0f vs %+.0f µs", ours.P99us-d.P99us, n.P99us-d.P99us), ours.P99us-d.P99us < n.P99us-d.P99us)
	}
	if ours.Slow != nil {
		sl := ours.Slow
		goal(fmt.Sprintf("slowloris: %d pending, bounded memory, legit served", sl.Target),
			fmt.Sprintf("%d held, %.0f B each, legit %d/%d failed, p99 %.0f µs", sl.Held, slowPer(sl), sl.LegitFail, sl.LegitN, sl.LegitP99us),
			sl.LegitFail == 0 && sl.Held >= int64(sl.Target)*9/10)
	}
}

func idlePer(r result) float64 {
	return float64(r.RSSIdleKB-r.RSSBaseKB) / float64(r.IdleConns)
}

func slowPer(s *slowResult) float64 {
	return float64(s.RSSKB-s.RSSBaseKB) * 1024 / float64(max(s.Held, 1))
}

func joinNames(rs []result) string {
	names := make([]string, len(rs))
	for i, r := range rs {
		names[i] = r.Name
	}
	return strings.Join(names, " | ")
}
