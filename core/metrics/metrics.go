// Package metrics is the node's metrics registry and its Prometheus text
// endpoint.
//
// It wraps github.com/prometheus/client_golang, the reference
// implementation, behind a small get-or-create API: services ask for a
// metric by name and labels and keep the result, so hot paths touch only a
// single atomic. (VictoriaMetrics/metrics was tried first: lighter, but it
// logs to stderr from a package initializer on hosts without cgroup PSI,
// so every pc2 command, even `pc2 id new`, printed a stray line inside
// containers.) Each host has its own registry, no global state, so tests
// and devnets can run several hosts in one process; each service gets a
// scope that prefixes its names with pc2_<service>_.
package metrics

import (
	"bytes"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// Counter, Gauge, UpDown and Histogram are the metric types services use.
type (
	Counter   = prometheus.Counter
	Gauge     = prometheus.GaugeFunc
	UpDown    = prometheus.Gauge // a gauge set by Inc, Dec, Add or Set
	Histogram = prometheus.Histogram
)

// Registry holds metrics. The zero value is not usable; use New.
type Registry struct {
	shared *shared
	prefix string
}

type shared struct {
	reg     *prometheus.Registry
	mu      sync.Mutex
	metrics map[string]prometheus.Collector // by full name and labels
}

// New returns an empty registry whose names start with "pc2_", holding
// the process and Go runtime collectors.
func New() *Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), collectors.NewGoCollector())
	return &Registry{shared: &shared{reg: reg, metrics: map[string]prometheus.Collector{}}, prefix: "pc2_"}
}

// Scope returns a view of r whose metric names are prefixed with name_.
func (r *Registry) Scope(name string) *Registry {
	return &Registry{shared: r.shared, prefix: r.prefix + sanitize(name) + "_"}
}

// Counter returns the counter name{labels}, creating it on first use.
// labels are key, value pairs. Callers keep the result on hot paths.
func (r *Registry) Counter(name string, labels ...string) Counter {
	return getOrCreate(r, name, labels, func(o prometheus.Opts) Counter {
		return prometheus.NewCounter(prometheus.CounterOpts(o))
	})
}

// Gauge registers a gauge whose value f reports at scrape time. Registering
// the same name and labels twice returns the first gauge.
func (r *Registry) Gauge(name string, f func() float64, labels ...string) Gauge {
	return getOrCreate(r, name, labels, func(o prometheus.Opts) Gauge {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts(o), f)
	})
}

// UpDown returns the gauge name{labels} that the caller moves with Inc,
// Dec, Add and Set (open connections, pending handshakes).
func (r *Registry) UpDown(name string, labels ...string) UpDown {
	return getOrCreate(r, name, labels, func(o prometheus.Opts) UpDown {
		return prometheus.NewGauge(prometheus.GaugeOpts(o))
	})
}

// Value returns the current value of a counter or gauge (the sum of
// observations for a histogram), for tests and status pages.
func Value(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		return 0
	}
	switch {
	case d.Counter != nil:
		return d.Counter.GetValue()
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	case d.Histogram != nil:
		return d.Histogram.GetSampleSum()
	}
	return 0
}

// Histogram returns the histogram name{labels} with latency buckets from
// 100 µs to about 26 s.
func (r *Registry) Histogram(name string, labels ...string) Histogram {
	return getOrCreate(r, name, labels, func(o prometheus.Opts) Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: o.Namespace, Name: o.Name, Help: o.Help, ConstLabels: o.ConstLabels,
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		})
	})
}

// Unregister removes name{labels}; it reports whether it existed.
func (r *Registry) Unregister(name string, labels ...string) bool {
	key, _, _ := r.key(name, labels)
	s := r.shared
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.metrics[key]
	if !ok {
		return false
	}
	delete(s.metrics, key)
	return s.reg.Unregister(c)
}

func getOrCreate[T prometheus.Collector](r *Registry, name string, labels []string, create func(prometheus.Opts) T) T {
	key, full, constLabels := r.key(name, labels)
	s := r.shared
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.metrics[key]; ok {
		if t, ok := c.(T); ok {
			return t
		}
	}
	m := create(prometheus.Opts{Name: full, Help: full, ConstLabels: constLabels})
	// Registration fails only for a programming error (the same name with
	// another type or label set); the metric then still counts, unexported,
	// rather than crash a running node.
	_ = s.reg.Register(m)
	s.metrics[key] = m
	return m
}

func (r *Registry) key(name string, labels []string) (key, full string, constLabels prometheus.Labels) {
	full = r.prefix + sanitize(name)
	if len(labels)%2 != 0 {
		labels = append(labels, "")
	}
	var b strings.Builder
	b.WriteString(full)
	if len(labels) > 0 {
		constLabels = prometheus.Labels{}
		keys := make([]string, 0, len(labels)/2)
		for i := 0; i < len(labels); i += 2 {
			k := sanitize(labels[i])
			constLabels[k] = labels[i+1]
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			b.WriteByte(0)
			b.WriteString(k)
			b.WriteByte(0)
			b.WriteString(constLabels[k])
		}
	}
	return b.String(), full, constLabels
}

// WritePrometheus writes every metric in the Prometheus text format.
func (r *Registry) WritePrometheus(w io.Writer) error {
	mfs, err := r.shared.reg.Gather()
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&buf, mf); err != nil {
			return err
		}
	}
	_, err = w.Write(buf.Bytes())
	return err
}

// Handler serves the metrics over HTTP.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.shared.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
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
