package dns

import (
	mdns "github.com/miekg/dns"

	"github.com/elacity/pc2/core/metrics"
)

type dnsMetrics struct {
	byRcode   map[int]metrics.Counter
	other     metrics.Counter
	limited   metrics.Counter
	slipped   metrics.Counter
	truncated metrics.Counter
}

func newDNSMetrics(reg *metrics.Registry) *dnsMetrics {
	if reg == nil {
		reg = metrics.New()
	}
	m := &dnsMetrics{byRcode: map[int]metrics.Counter{}}
	for _, rc := range []int{mdns.RcodeSuccess, mdns.RcodeNameError, mdns.RcodeRefused, mdns.RcodeFormatError, mdns.RcodeNotImplemented, mdns.RcodeBadVers} {
		m.byRcode[rc] = reg.Counter("queries_total", "rcode", mdns.RcodeToString[rc])
	}
	m.other = reg.Counter("queries_total", "rcode", "other")
	m.limited = reg.Counter("rate_limited_total", "action", "drop")
	m.slipped = reg.Counter("rate_limited_total", "action", "slip")
	m.truncated = reg.Counter("truncated_total")
	return m
}

func (m *dnsMetrics) rcode(rc int) {
	if c, ok := m.byRcode[rc]; ok {
		c.Inc()
		return
	}
	m.other.Inc()
}
