package sniproxy

import (
	"time"

	"github.com/elacity/pc2/core/metrics"
)

// Metrics are the proxy's counters, registered on the node's registry
// scope; a nil *Metrics in Config gives unexported ones, so the hot path
// needs no nil checks.
type Metrics struct {
	Accepted      metrics.Counter // connections accepted
	Active        metrics.UpDown  // connections open now
	Pending       metrics.UpDown  // connections still sending their ClientHello
	RejectedPerIP metrics.Counter // closed: too many pending hellos from one IP
	// PendingEvicted counts pending connections closed to make room for a
	// newer one (MaxConns or MaxPending reached).
	PendingEvicted metrics.Counter

	HelloTimeout    metrics.Counter
	HelloNotTLS     metrics.Counter
	HelloTooLarge   metrics.Counter
	HelloTruncated  metrics.Counter
	HelloMalformed  metrics.Counter
	HelloNoName     metrics.Counter // no SNI or an invalid one
	HelloReadErrors metrics.Counter
	HelloSeconds    metrics.Histogram // time from accept to a complete hello

	Routed       metrics.Counter
	RouteUnknown metrics.Counter
	RouteErrors  metrics.Counter
	DialErrors   metrics.Counter

	BytesUp    metrics.Counter // client to backend incl. the replayed hello; relayed bytes are added when a connection ends
	BytesDown  metrics.Counter // backend to client, added when a connection ends
	IdleClosed metrics.Counter
}

// NewMetrics registers the counters in r (give it the service's scope; the
// names below get its prefix, e.g. pc2_gateway_sni_...).
func NewMetrics(r *metrics.Registry) *Metrics {
	r = r.Scope("sni")
	hello := func(reason string) metrics.Counter { return r.Counter("hello_errors_total", "reason", reason) }
	route := func(result string) metrics.Counter { return r.Counter("routes_total", "result", result) }
	return &Metrics{
		Accepted:        r.Counter("connections_total"),
		Active:          r.UpDown("connections_active"),
		Pending:         r.UpDown("hellos_pending"),
		RejectedPerIP:   r.Counter("rejected_total", "reason", "pending_per_ip"),
		PendingEvicted:  r.Counter("pending_evicted_total"),
		HelloTimeout:    hello("timeout"),
		HelloNotTLS:     hello("not_tls"),
		HelloTooLarge:   hello("too_large"),
		HelloTruncated:  hello("truncated"),
		HelloMalformed:  hello("malformed"),
		HelloNoName:     hello("no_name"),
		HelloReadErrors: hello("read"),
		HelloSeconds:    r.Histogram("hello_duration_seconds"),
		Routed:          route("ok"),
		RouteUnknown:    route("unknown"),
		RouteErrors:     route("error"),
		DialErrors:      r.Counter("dial_errors_total"),
		BytesUp:         r.Counter("bytes_total", "dir", "up"),
		BytesDown:       r.Counter("bytes_total", "dir", "down"),
		IdleClosed:      r.Counter("idle_closed_total"),
	}
}

func (m *Metrics) orNop() *Metrics {
	if m != nil {
		return m
	}
	return NewMetrics(metrics.New())
}

func observeSince(h metrics.Histogram, start time.Time) { h.Observe(time.Since(start).Seconds()) }
