package httproute

// Backend is where the plain HTTP requests of one name go.
type Backend struct {
	// Addr is the node's HTTP host:port; empty when the node serves no
	// plain HTTP (requests are then redirected to https).
	Addr string
	// RedirectHTTPS answers every request except ACME HTTP-01 challenges
	// with a 308 to the same URL over https.
	RedirectHTTPS bool
}

// Router finds the backend of a Host header value (any case, optional
// :port and trailing dot). It must not allocate on the hot path.
type Router interface {
	HTTPBackend(host []byte) (Backend, bool)
}
