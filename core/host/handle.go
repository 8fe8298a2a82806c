package host

import (
	"crypto/rand"
	"log/slog"

	"github.com/elacity/pc2/core/clock"
	"github.com/elacity/pc2/core/config"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/metrics"
	"github.com/elacity/pc2/core/store"
)

var randReader = rand.Reader

// handle is a Host seen from one service.
type handle struct {
	h   *Host
	svc string
}

func (h *Host) handle(s Service) *handle { return &handle{h: h, svc: s.Name()} }

func (x *handle) Identity() *identity.KeyPair { return x.h.id }
func (x *handle) Config() *config.Config      { return x.h.cfg }
func (x *handle) Section() *config.Section    { return x.h.cfg.Section(x.svc) }
func (x *handle) Logger() *slog.Logger        { return x.h.log.With("service", x.svc) }
func (x *handle) Metrics() *metrics.Registry  { return x.h.metrics.Scope(x.svc) }
func (x *handle) Storage() *store.Namespace   { return x.h.db.Namespace(x.svc) }
func (x *handle) Clock() clock.Clock          { return x.h.clock }

// Advertiser is implemented by handles whose host publishes endpoints in
// its Info (run file, readiness line), e.g. the gateway's listen address.
type Advertiser interface {
	Advertise(key, value string)
}

func (x *handle) Advertise(key, value string) { x.h.extra[x.svc+"."+key] = value }
