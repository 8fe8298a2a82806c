package metrics

import (
	"bytes"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestScopedNamesAndLabels(t *testing.T) {
	r := New()
	gw := r.Scope("gate-way")
	gw.Counter("conns_total").Add(3)
	gw.Counter("bytes_total", "dir", "in").Add(10)
	gw.Counter("routes_total", "name", "a\"b\\c").Inc()
	r.Gauge("up", func() float64 { return 1 }, "service", "dht")
	var out bytes.Buffer
	r.WritePrometheus(&out)
	for _, want := range []string{
		"pc2_gate_way_conns_total 3\n",
		`pc2_gate_way_bytes_total{dir="in"} 10`,
		`pc2_gate_way_routes_total{name="a\"b\\c"} 1`,
		`pc2_up{service="dht"} 1`,
		"go_goroutines",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("missing %q in:\n%s", want, out.String())
		}
	}
	gw.Counter("conns_total").Inc() // same counter again
	out.Reset()
	r.WritePrometheus(&out)
	if !strings.Contains(out.String(), "pc2_gate_way_conns_total 4\n") {
		t.Error("GetOrCreate returned a new counter")
	}
	if !r.Unregister("up", "service", "dht") || r.Unregister("up", "service", "dht") {
		t.Error("Unregister")
	}
}

func TestHandler(t *testing.T) {
	r := New()
	r.Counter("x_total").Inc()
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	if !strings.Contains(string(body), "pc2_x_total 1") || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain") {
		t.Fatalf("bad response: %s", body)
	}
}

func BenchmarkCounterInc(b *testing.B) {
	c := New().Scope("gw").Counter("conns_total")
	b.ReportAllocs()
	for b.Loop() {
		c.Inc()
	}
}
