package sniproxy

import (
	"github.com/VictoriaMetrics/metrics"
)

// Metrics are the proxy's counters. Build them with NewMetrics on the
// node's *metrics.Set; a nil *Metrics in Config disables them.
type Metrics struct {
	Accepted      *metrics.Counter // connections accepted
	Active        *metrics.Gauge   // connections open now
	Pending       *metrics.Gauge   // connections still sending their ClientHello
	RejectedPerIP *metrics.Counter // closed: too many pending hellos from one IP

	HelloTimeout    *metrics.Counter
	HelloNotTLS     *metrics.Counter
	HelloTooLarge   *metrics.Counter
	HelloTruncated  *metrics.Counter
	HelloMalformed  *metrics.Counter
	HelloNoName     *metrics.Counter // no SNI or an invalid one
	HelloReadErrors *metrics.Counter
	HelloSeconds    *metrics.Histogram // time from accept to a complete hello

	Routed       *metrics.Counter
	RouteUnknown *metrics.Counter
	RouteErrors  *metrics.Counter
	DialErrors   *metrics.Counter

	BytesUp    *metrics.Counter // client to backend incl. the replayed hello; relayed bytes are added when a connection ends
	BytesDown  *metrics.Counter // backend to client, added when a connection ends
	IdleClosed *metrics.Counter
}

// NewMetrics registers the counters in set under the pc2_sni_ prefix.
func NewMetrics(set *metrics.Set) *Metrics {
	hello := func(reason string) *metrics.Counter {
		return set.NewCounter(`pc2_sni_hello_errors_total{reason="` + reason + `"}`)
	}
	route := func(result string) *metrics.Counter {
		return set.NewCounter(`pc2_sni_routes_total{result="` + result + `"}`)
	}
	return &Metrics{
		Accepted:        set.NewCounter("pc2_sni_connections_total"),
		Active:          set.NewGauge("pc2_sni_connections_active", nil),
		Pending:         set.NewGauge("pc2_sni_hellos_pending", nil),
		RejectedPerIP:   set.NewCounter(`pc2_sni_rejected_total{reason="pending_per_ip"}`),
		HelloTimeout:    hello("timeout"),
		HelloNotTLS:     hello("not_tls"),
		HelloTooLarge:   hello("too_large"),
		HelloTruncated:  hello("truncated"),
		HelloMalformed:  hello("malformed"),
		HelloNoName:     hello("no_name"),
		HelloReadErrors: hello("read"),
		HelloSeconds:    set.NewHistogram("pc2_sni_hello_duration_seconds"),
		Routed:          route("ok"),
		RouteUnknown:    route("unknown"),
		RouteErrors:     route("error"),
		DialErrors:      set.NewCounter("pc2_sni_dial_errors_total"),
		BytesUp:         set.NewCounter(`pc2_sni_bytes_total{dir="up"}`),
		BytesDown:       set.NewCounter(`pc2_sni_bytes_total{dir="down"}`),
		IdleClosed:      set.NewCounter("pc2_sni_idle_closed_total"),
	}
}

// orNop returns m, or unregistered metrics when m is nil, so the hot path
// needs no nil checks.
func (m *Metrics) orNop() *Metrics {
	if m != nil {
		return m
	}
	return NewMetrics(metrics.NewSet())
}
