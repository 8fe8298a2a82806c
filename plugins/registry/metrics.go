package registry

import (
	"errors"

	"github.com/elacity/pc2/core/metrics"
	"github.com/elacity/pc2/plugins/registry/wire"
)

// regMetrics are the registry's counters. Labels come from closed sets
// (ops and codes), never from request data, so their number is bounded.
type regMetrics struct {
	outcomes      map[wire.Op]map[wire.Code]metrics.Counter // code "" = ok
	expired       metrics.Counter
	publishErrors metrics.Counter
}

var codes = []wire.Code{"", wire.CodeBadRequest, wire.CodeBadSignature, wire.CodeStale, wire.CodeForbidden,
	wire.CodeQuota, wire.CodeNotFound, wire.CodeTaken, wire.CodeReplay, wire.CodeTooLarge,
	wire.CodeRateLimited, wire.CodeInternal, wire.CodeUnavailable}

func newRegMetrics(reg *metrics.Registry, r *Registry) *regMetrics {
	if reg == nil {
		reg = metrics.New()
	}
	m := &regMetrics{outcomes: map[wire.Op]map[wire.Code]metrics.Counter{}}
	for _, op := range append([]wire.Op{"invalid"}, wire.Ops...) {
		m.outcomes[op] = map[wire.Code]metrics.Counter{}
		for _, c := range codes {
			result := string(c)
			if c == "" {
				result = "ok"
			}
			m.outcomes[op][c] = reg.Counter("requests_total", "op", string(op), "result", result)
		}
	}
	m.expired = reg.Counter("expired_total")
	m.publishErrors = reg.Counter("publish_errors_total")
	reg.Gauge("names", func() float64 { return float64(r.Len()) })
	return m
}

// outcome counts one request by op and result.
func (m *regMetrics) outcome(op wire.Op, err error) {
	byCode, ok := m.outcomes[op]
	if !ok {
		byCode = m.outcomes["invalid"]
	}
	code := wire.Code("")
	if err != nil {
		code = wire.CodeInternal
		var e *Error
		if errors.As(err, &e) {
			code = e.Code
		}
	}
	if c, ok := byCode[code]; ok {
		c.Inc()
	}
}
