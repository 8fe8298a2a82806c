package httproute

import "github.com/elacity/pc2/core/metrics"

type httpMetrics struct {
	proxied, redirected, unknown, backendErrors, badRequests metrics.Counter
}

func newHTTPMetrics(reg *metrics.Registry) *httpMetrics {
	if reg == nil {
		reg = metrics.New()
	}
	c := func(result string) metrics.Counter { return reg.Counter("requests_total", "result", result) }
	return &httpMetrics{
		proxied: c("proxied"), redirected: c("redirected"), unknown: c("unknown_host"),
		backendErrors: c("backend_error"), badRequests: c("bad_request"),
	}
}
