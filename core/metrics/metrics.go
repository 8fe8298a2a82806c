// Package metrics is the node's metrics registry and its Prometheus text
// endpoint.
//
// It wraps github.com/VictoriaMetrics/metrics rather than the Prometheus
// client: counters are single atomics with no label-map lookup once created,
// which matters on per-connection and per-packet paths, the package is small,
// and it writes the Prometheus text format directly. Each host has its own
// registry (no global state), so tests and devnets can run several hosts in
// one process; each service gets a scope that prefixes its metric names with
// pc2_<service>_.
package metrics

import (
	"fmt"
	"io"
	"net/http"
	"strings"

	vm "github.com/VictoriaMetrics/metrics"
)

// Counter, Gauge and Histogram are the metric types services use.
type (
	Counter   = vm.Counter
	Gauge     = vm.Gauge
	Histogram = vm.Histogram
)

// Registry holds metrics. The zero value is not usable; use New.
type Registry struct {
	set    *vm.Set
	prefix string
}

// New returns an empty registry whose names start with "pc2_".
func New() *Registry { return &Registry{set: vm.NewSet(), prefix: "pc2_"} }

// Scope returns a view of r whose metric names are prefixed with name_.
func (r *Registry) Scope(name string) *Registry {
	return &Registry{set: r.set, prefix: r.prefix + sanitize(name) + "_"}
}

// Counter returns the counter name{labels}, creating it on first use.
// labels are key, value pairs. Callers keep the result on hot paths: the
// lookup builds a string.
func (r *Registry) Counter(name string, labels ...string) *Counter {
	return r.set.GetOrCreateCounter(r.fullName(name, labels))
}

// Gauge registers a gauge whose value f reports at scrape time. Registering
// the same name twice returns the first gauge.
func (r *Registry) Gauge(name string, f func() float64, labels ...string) *Gauge {
	return r.set.GetOrCreateGauge(r.fullName(name, labels), f)
}

// Histogram returns the histogram name{labels}.
func (r *Registry) Histogram(name string, labels ...string) *Histogram {
	return r.set.GetOrCreateHistogram(r.fullName(name, labels))
}

// Unregister removes name{labels}; it reports whether it existed.
func (r *Registry) Unregister(name string, labels ...string) bool {
	return r.set.UnregisterMetric(r.fullName(name, labels))
}

// WritePrometheus writes every metric in the Prometheus text format,
// followed by the process and Go runtime metrics.
func (r *Registry) WritePrometheus(w io.Writer) {
	r.set.WritePrometheus(w)
	vm.WriteProcessMetrics(w)
}

// Handler serves WritePrometheus over HTTP.
func (r *Registry) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		r.WritePrometheus(w)
	})
}

func (r *Registry) fullName(name string, labels []string) string {
	if len(labels) == 0 {
		return r.prefix + name
	}
	if len(labels)%2 != 0 {
		// A programming error, not input: make it visible in the output
		// rather than crash a running node.
		labels = append(labels, "")
	}
	var b strings.Builder
	b.WriteString(r.prefix)
	b.WriteString(name)
	b.WriteByte('{')
	for i := 0; i < len(labels); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%q", sanitize(labels[i]), escapeLabel(labels[i+1]))
	}
	b.WriteByte('}')
	return b.String()
}

// escapeLabel keeps label values printable; %q then adds Prometheus-style
// quoting of backslash, quote and newline.
func escapeLabel(v string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\n' {
			return '_'
		}
		return r
	}, v)
}

// sanitize maps a name to [a-zA-Z0-9_].
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_':
			return r
		}
		return '_'
	}, s)
}
