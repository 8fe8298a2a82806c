package registry

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/ratelimit"
	"github.com/elacity/pc2/gateway/connlimit"
	"github.com/elacity/pc2/plugins/registry/wire"
)

// APIOptions configure the HTTP API. Zero values take the defaults shown.
type APIOptions struct {
	RatePerIP      float64       // 2 requests per second per source IP (IPv6: per /64)
	BurstPerIP     int           // 20
	MaxSources     int           // 100,000 source buckets remembered
	ReadTimeout    time.Duration // 5 s for a whole request
	WriteTimeout   time.Duration // 5 s for a whole response
	IdleTimeout    time.Duration // 30 s between keep-alive requests
	MaxConns       int           // 1024 connections served at once
	MaxConnsPerIP  int           // 32
	MaxHeaderBytes int           // 4096
}

func (o *APIOptions) defaults() {
	if o.RatePerIP <= 0 {
		o.RatePerIP = 2
	}
	setInt := func(p *int, v int) {
		if *p <= 0 {
			*p = v
		}
	}
	setInt(&o.BurstPerIP, 20)
	setInt(&o.MaxSources, 100_000)
	setInt(&o.MaxConns, 1024)
	setInt(&o.MaxConnsPerIP, 32)
	setInt(&o.MaxHeaderBytes, 4096)
	setDur := func(p *time.Duration, v time.Duration) {
		if *p <= 0 {
			*p = v
		}
	}
	setDur(&o.ReadTimeout, 5*time.Second)
	setDur(&o.WriteTimeout, 5*time.Second)
	setDur(&o.IdleTimeout, 30*time.Second)
}

// API serves the registry over HTTP:
//
//	POST /v1/names                 a signed wire.Request (JSON)
//	GET  /v1/names/<name>          the record of a name
//	GET  /v1/owners/<id>/names     the names of an id
//
// Every answer is a wire.Response.
type API struct {
	reg     *Registry
	o       APIOptions
	ipLimit *ratelimit.Limiter[netip.Addr]
	srv     *fasthttp.Server
}

// NewAPI returns the API of reg.
func NewAPI(reg *Registry, o APIOptions) *API {
	o.defaults()
	a := &API{reg: reg, o: o, ipLimit: ratelimit.New[netip.Addr](o.RatePerIP, o.BurstPerIP, o.MaxSources)}
	a.srv = &fasthttp.Server{
		Handler:               a.Handle,
		ErrorHandler:          a.handleError,
		Name:                  "pc2-registry",
		ReadTimeout:           o.ReadTimeout,
		WriteTimeout:          o.WriteTimeout,
		IdleTimeout:           o.IdleTimeout,
		Concurrency:           o.MaxConns,
		ReadBufferSize:        o.MaxHeaderBytes,
		MaxRequestBodySize:    wire.MaxRequestSize,
		NoDefaultContentType:  true,
		NoDefaultDate:         true,
		CloseOnShutdown:       true,
		SecureErrorLogMessage: true,
		Logger:                discardLogger{},
	}
	return a
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}

// Serve answers requests on ln until Shutdown, with at most MaxConns
// connections, MaxConnsPerIP from one source.
func (a *API) Serve(ln net.Listener) error {
	return a.srv.Serve(connlimit.New(ln, a.o.MaxConns, a.o.MaxConnsPerIP))
}

// Shutdown stops accepting, lets open requests finish until ctx ends,
// then closes everything.
func (a *API) Shutdown(ctx context.Context) error { return a.srv.ShutdownWithContext(ctx) }

var httpStatus = map[wire.Code]int{
	wire.CodeBadRequest:   fasthttp.StatusBadRequest,
	wire.CodeBadSignature: fasthttp.StatusUnauthorized,
	wire.CodeStale:        fasthttp.StatusUnauthorized,
	wire.CodeForbidden:    fasthttp.StatusForbidden,
	wire.CodeQuota:        fasthttp.StatusForbidden,
	wire.CodeNotFound:     fasthttp.StatusNotFound,
	wire.CodeTaken:        fasthttp.StatusConflict,
	wire.CodeReplay:       fasthttp.StatusConflict,
	wire.CodeTooLarge:     fasthttp.StatusRequestEntityTooLarge,
	wire.CodeRateLimited:  fasthttp.StatusTooManyRequests,
	wire.CodeInternal:     fasthttp.StatusInternalServerError,
	wire.CodeUnavailable:  fasthttp.StatusServiceUnavailable,
}

// Handle serves one request.
func (a *API) Handle(ctx *fasthttp.RequestCtx) {
	now := a.reg.o.Clock.Now()
	if !a.ipLimit.Allow(connlimit.Source(ctx.RemoteAddr()), now) {
		a.reg.m.outcome("invalid", refuse(wire.CodeRateLimited, ""))
		a.fail(ctx, refuse(wire.CodeRateLimited, "too many requests from this address"))
		return
	}
	path := string(ctx.Path())
	switch {
	case path == "/v1/names":
		if !ctx.IsPost() {
			a.methodNotAllowed(ctx, "POST")
			return
		}
		a.write(ctx)
	case strings.HasPrefix(path, "/v1/names/"):
		if !ctx.IsGet() {
			a.methodNotAllowed(ctx, "GET")
			return
		}
		rec, err := a.reg.Get(strings.TrimPrefix(path, "/v1/names/"))
		if err != nil {
			a.fail(ctx, err)
			return
		}
		a.reply(ctx, fasthttp.StatusOK, &wire.Response{Record: rec})
	case strings.HasPrefix(path, "/v1/owners/") && strings.HasSuffix(path, "/names"):
		if !ctx.IsGet() {
			a.methodNotAllowed(ctx, "GET")
			return
		}
		id, err := identity.ParseID(strings.TrimSuffix(strings.TrimPrefix(path, "/v1/owners/"), "/names"))
		if err != nil {
			a.fail(ctx, refuse(wire.CodeBadRequest, "%v", err))
			return
		}
		recs, err := a.reg.List(id)
		if err != nil {
			a.fail(ctx, err)
			return
		}
		a.reply(ctx, fasthttp.StatusOK, &wire.Response{Records: recs})
	default:
		a.fail(ctx, refuse(wire.CodeNotFound, "no such endpoint"))
	}
}

func (a *API) write(ctx *fasthttp.RequestCtx) {
	q, err := wire.Decode(ctx.PostBody())
	if err != nil {
		code := wire.CodeBadRequest
		if errors.Is(err, wire.ErrTooLarge) {
			code = wire.CodeTooLarge
		}
		a.reg.m.outcome("invalid", refuse(code, ""))
		a.fail(ctx, refuse(code, "%v", err))
		return
	}
	rec, err := a.reg.Apply(context.Background(), q) // not ctx: fasthttp's RequestCtx as a context races with Shutdown
	if err != nil {
		a.fail(ctx, err)
		return
	}
	a.reply(ctx, fasthttp.StatusOK, &wire.Response{Record: rec})
}

func (a *API) methodNotAllowed(ctx *fasthttp.RequestCtx, allow string) {
	ctx.Response.Header.Set("Allow", allow)
	a.reply(ctx, fasthttp.StatusMethodNotAllowed, &wire.Response{Code: wire.CodeBadRequest, Error: "method not allowed"})
}

func (a *API) fail(ctx *fasthttp.RequestCtx, err error) {
	var e *Error
	if !errors.As(err, &e) {
		e = refuse(wire.CodeInternal, "%v", err)
	}
	a.reply(ctx, httpStatus[e.Code], &wire.Response{Code: e.Code, Error: e.Msg})
}

func (a *API) reply(ctx *fasthttp.RequestCtx, status int, resp *wire.Response) {
	resp.Now = a.reg.o.Clock.Now().Unix()
	body, err := json.Marshal(resp)
	if err != nil {
		status, body = fasthttp.StatusInternalServerError, []byte(`{"code":"internal","error":"encode"}`)
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
}

// handleError answers requests fasthttp could not read: too large, too
// slow, malformed.
func (a *API) handleError(ctx *fasthttp.RequestCtx, err error) {
	code := wire.CodeBadRequest
	if errors.Is(err, fasthttp.ErrBodyTooLarge) {
		code = wire.CodeTooLarge
	}
	a.reg.m.outcome("invalid", refuse(code, ""))
	ctx.SetConnectionClose()
	a.reply(ctx, httpStatus[code], &wire.Response{Code: code, Error: "cannot read request"})
}
