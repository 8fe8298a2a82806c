// Package httproute is the supernode's plain HTTP entry on :80: it reads
// the Host header, asks a Router which node serves that name, and either
// reverse-proxies the request to the node's HTTP endpoint (bodies
// streamed both ways) or answers 308 to https.
//
// It exists mainly so that ACME HTTP-01 challenges reach the node that
// asked for a certificate (TLS is end to end: the node holds its key, so
// the supernode cannot answer for it), and so that http:// links to a
// name work. ACME paths (/.well-known/acme-challenge/) are proxied even
// when the name asked for redirects, because the first certificate does
// not exist yet when the CA checks.
//
// fasthttp (github.com/valyala/fasthttp) serves and proxies: it parses
// with bounded buffers and reuses request and response objects, so a
// routed request costs a map lookup and the copy to the backend. Unknown
// hosts get 404 with a short text; every phase has a size or time bound.
package httproute

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/elacity/pc2/core/metrics"
	"github.com/elacity/pc2/gateway/connlimit"
)

// Config is the "http" section of a supernode's configuration.
type Config struct {
	// Listen is host:port. Default ":80"; dev: "127.0.0.1:0".
	Listen string `yaml:"listen"`
	// MaxHeaderBytes bounds the request line and headers (default 8 KiB).
	MaxHeaderBytes int `yaml:"maxHeaderBytes"`
	// MaxBodyBytes bounds a request body (default 64 MiB). Bodies are
	// streamed to the node, not buffered.
	MaxBodyBytes int `yaml:"maxBodyBytes"`
	// HeaderTimeout bounds reading the request headers (default 10 s).
	HeaderTimeout time.Duration `yaml:"headerTimeout"`
	// BodyTimeout bounds reading a request body (default 5 min).
	BodyTimeout time.Duration `yaml:"bodyTimeout"`
	// WriteTimeout bounds writing a response, body included (default 10 min).
	WriteTimeout time.Duration `yaml:"writeTimeout"`
	// IdleTimeout closes idle keep-alive connections (default 60 s).
	IdleTimeout time.Duration `yaml:"idleTimeout"`
	// DialTimeout bounds connecting to a node (default 5 s).
	DialTimeout time.Duration `yaml:"dialTimeout"`
	// BackendTimeout bounds each read from and write to a node
	// (default 60 s: a node that sends nothing for a minute is cut).
	BackendTimeout time.Duration `yaml:"backendTimeout"`
	// MaxConns and MaxConnsPerIP bound client connections (10000, 64).
	MaxConns      int `yaml:"maxConns"`
	MaxConnsPerIP int `yaml:"maxConnsPerIP"`
	// MaxConnsPerBackend bounds connections to one node (default 64).
	MaxConnsPerBackend int `yaml:"maxConnsPerBackend"`
}

// DefaultConfig returns the defaults of a supernode, or of a dev one.
func DefaultConfig(dev bool) Config {
	c := Config{
		Listen:             ":80",
		MaxHeaderBytes:     8 << 10,
		MaxBodyBytes:       64 << 20,
		HeaderTimeout:      10 * time.Second,
		BodyTimeout:        5 * time.Minute,
		WriteTimeout:       10 * time.Minute,
		IdleTimeout:        60 * time.Second,
		DialTimeout:        5 * time.Second,
		BackendTimeout:     60 * time.Second,
		MaxConns:           10000,
		MaxConnsPerIP:      64,
		MaxConnsPerBackend: 64,
	}
	if dev {
		c.Listen = "127.0.0.1:0"
	}
	return c
}

// Server routes plain HTTP by Host.
type Server struct {
	// Tunnels, set before Serve, carries the requests of names whose http
	// is "tunnel" (Backend.Tunnel); nil: such names get a 502.
	Tunnels Tunnels

	router Router
	cfg    Config
	srv    *fasthttp.Server
	client *fasthttp.Client
	m      *httpMetrics
}

var acmePrefix = []byte("/.well-known/acme-challenge/")

// NewServer returns a server routing with r. m may be nil.
func NewServer(r Router, cfg Config, m *metrics.Registry) *Server {
	s := &Server{router: r, cfg: cfg, m: newHTTPMetrics(m)}
	dialer := &net.Dialer{Timeout: cfg.DialTimeout}
	s.client = &fasthttp.Client{
		Name:                          "-",
		NoDefaultUserAgentHeader:      true,
		DisableHeaderNamesNormalizing: true,
		DisablePathNormalizing:        true,
		StreamResponseBody:            true,
		ReadTimeout:                   cfg.BackendTimeout,
		WriteTimeout:                  cfg.BackendTimeout,
		MaxConnsPerHost:               cfg.MaxConnsPerBackend,
		MaxIdleConnDuration:           30 * time.Second,
		MaxResponseBodySize:           0, // streamed: the node's content is the node's business
		ReadBufferSize:                cfg.MaxHeaderBytes,
		Dial: func(addr string) (net.Conn, error) {
			if id, ok := parseTunnelAddr(addr); ok && s.Tunnels != nil {
				ctx, cancel := context.WithTimeout(context.Background(), cfg.DialTimeout)
				defer cancel()
				return s.Tunnels.Dial(ctx, id, TunnelService, nil)
			}
			return dialer.Dial("tcp", addr)
		},
	}
	s.srv = &fasthttp.Server{
		Handler:      s.Handle,
		ErrorHandler: s.handleError,
		HeaderReceived: func(*fasthttp.RequestHeader) fasthttp.RequestConfig {
			return fasthttp.RequestConfig{ReadTimeout: cfg.BodyTimeout, WriteTimeout: cfg.WriteTimeout}
		},
		Name:                          "",
		NoDefaultServerHeader:         true,
		NoDefaultContentType:          true,
		NoDefaultDate:                 true,
		DisableHeaderNamesNormalizing: true,
		DisablePreParseMultipartForm:  true,
		StreamRequestBody:             true,
		ReadTimeout:                   cfg.HeaderTimeout,
		WriteTimeout:                  cfg.WriteTimeout,
		IdleTimeout:                   cfg.IdleTimeout,
		Concurrency:                   cfg.MaxConns,
		ReadBufferSize:                cfg.MaxHeaderBytes,
		// With streaming, fasthttp's limit is only the size up to which
		// a body is buffered before the handler runs; larger bodies are
		// streamed and MaxBodyBytes is enforced in Handle.
		MaxRequestBodySize:    bufferedBody,
		CloseOnShutdown:       true,
		SecureErrorLogMessage: true,
		Logger:                discard{},
	}
	return s
}

type discard struct{}

func (discard) Printf(string, ...any) {}

// bufferedBody is the largest body read before the handler runs.
const bufferedBody = 64 << 10

// Serve answers on ln until Shutdown, with at most MaxConns connections,
// MaxConnsPerIP from one source.
func (s *Server) Serve(ln net.Listener) error {
	return s.srv.Serve(connlimit.New(ln, s.cfg.MaxConns, s.cfg.MaxConnsPerIP))
}

// Shutdown stops accepting and waits for open requests until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.ShutdownWithContext(ctx)
	s.client.CloseIdleConnections()
	return err
}

// hopHeaders are per connection (RFC 9110 §7.6.1) and are not forwarded.
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "TE", "Trailer", "Upgrade"}

// Handle routes one request.
func (s *Server) Handle(ctx *fasthttp.RequestCtx) {
	host := ctx.Host()
	be, ok := s.router.HTTPBackend(host)
	if !ok {
		s.m.unknown.Inc()
		ctx.SetConnectionClose()
		ctx.Error("unknown host\n", fasthttp.StatusNotFound)
		return
	}
	acme := bytes.HasPrefix(ctx.Path(), acmePrefix)
	tunnelled := !be.Tunnel.IsZero()
	if (be.Addr == "" && !tunnelled) || (be.RedirectHTTPS && !acme) {
		s.redirect(ctx, host)
		return
	}
	if tunnelled {
		if s.Tunnels == nil || !s.Tunnels.Has(be.Tunnel) {
			s.m.backendErrors.Inc()
			ctx.SetConnectionClose()
			ctx.Error("node offline: it holds no tunnel to this supernode\n", fasthttp.StatusBadGateway)
			return
		}
		s.proxy(ctx, tunnelAddr(be.Tunnel))
		return
	}
	s.proxy(ctx, be.Addr)
}

func (s *Server) redirect(ctx *fasthttp.RequestCtx, host []byte) {
	if i := bytes.LastIndexByte(host, ':'); i >= 0 && bytes.IndexByte(host, ']') < i {
		host = host[:i]
	}
	u := make([]byte, 0, 8+len(host)+len(ctx.RequestURI()))
	u = append(u, "https://"...)
	u = append(u, host...)
	u = append(u, ctx.RequestURI()...)
	ctx.Response.Header.SetBytesV("Location", u)
	ctx.SetStatusCode(fasthttp.StatusPermanentRedirect)
	s.m.redirected.Inc()
}

func (s *Server) proxy(ctx *fasthttp.RequestCtx, addr string) {
	in := &ctx.Request
	n := in.Header.ContentLength()
	if n > s.cfg.MaxBodyBytes {
		s.m.badRequests.Inc()
		ctx.SetConnectionClose()
		ctx.Error("request body too large\n", fasthttp.StatusRequestEntityTooLarge)
		return
	}
	// The outgoing request is a copy of the headers with the incoming
	// body stream behind a limit; the incoming request keeps owning its
	// stream, which the server releases when the handler returns.
	out := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(out)
	in.Header.CopyTo(&out.Header)
	for _, h := range hopHeaders {
		out.Header.Del(h)
	}
	if body := ctx.RequestBodyStream(); body != nil && n != 0 {
		out.SetBodyStream(&limitReader{r: body, left: int64(s.cfg.MaxBodyBytes)}, n)
	}
	if ip, ok := netip.AddrFromSlice(ctx.RemoteIP()); ok {
		var buf [64]byte
		xff := ip.Unmap().AppendTo(buf[:0])
		if prior := in.Header.Peek("X-Forwarded-For"); len(prior) > 0 {
			xff = append(append(append([]byte{}, prior...), ", "...), xff...)
		}
		out.Header.SetBytesV("X-Forwarded-For", xff)
	}
	out.Header.Set("X-Forwarded-Proto", "http")
	out.Header.SetBytesV("X-Forwarded-Host", in.Header.Host())
	out.UseHostHeader = true // keep Host: alice.ela.city; connect to addr
	out.URI().SetScheme("http")
	out.URI().SetHost(addr)

	resp := &ctx.Response
	if err := s.client.Do(out, resp); err != nil {
		s.m.backendErrors.Inc()
		resp.Reset()
		ctx.SetConnectionClose()
		switch {
		case errors.Is(err, errBodyTooLarge):
			ctx.Error("request body too large\n", fasthttp.StatusRequestEntityTooLarge)
		case errors.Is(err, fasthttp.ErrTimeout) || errors.Is(err, fasthttp.ErrDialTimeout):
			ctx.Error("node timed out\n", fasthttp.StatusGatewayTimeout)
		default:
			ctx.Error("node unreachable\n", fasthttp.StatusBadGateway)
		}
		return
	}
	for _, h := range hopHeaders {
		resp.Header.Del(h)
	}
	s.m.proxied.Inc()
}

func (s *Server) handleError(ctx *fasthttp.RequestCtx, err error) {
	s.m.badRequests.Inc()
	ctx.SetConnectionClose()
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		ctx.Error("request body too large\n", fasthttp.StatusRequestEntityTooLarge)
	case isHeaderTooLarge(err):
		ctx.Error("request headers too large\n", fasthttp.StatusRequestHeaderFieldsTooLarge)
	default:
		ctx.Error("bad request\n", fasthttp.StatusBadRequest)
	}
}

func isHeaderTooLarge(err error) bool {
	var small *fasthttp.ErrSmallBuffer
	return errors.As(err, &small)
}

// errBodyTooLarge ends a chunked upload that passed MaxBodyBytes; the
// node sees a cut body and the client a failed request.
var errBodyTooLarge = errors.New("request body too large")

type limitReader struct {
	r    io.Reader
	left int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.left < 0 {
		return 0, errBodyTooLarge
	}
	if int64(len(p)) > l.left+1 {
		p = p[:l.left+1]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	if l.left < 0 {
		return 0, errBodyTooLarge
	}
	return n, err
}
