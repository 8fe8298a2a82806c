package httproute

import (
	"context"
	"encoding/hex"
	"net"
	"strings"

	"github.com/elacity/pc2/core/identity"
)

// Backend is where the plain HTTP requests of one name go.
type Backend struct {
	// Addr is the node's HTTP host:port; empty when the node serves no
	// plain HTTP (requests are then redirected to https) or when Tunnel
	// is set.
	Addr string
	// Tunnel, when not zero, is the node whose tunnel to this supernode
	// carries the requests (the name's http is "tunnel"); without such a
	// tunnel the visitor gets a 502 at once.
	Tunnel identity.ID
	// RedirectHTTPS answers every request except ACME HTTP-01 challenges
	// with a 308 to the same URL over https.
	RedirectHTTPS bool
}

// Router finds the backend of a Host header value (any case, optional
// :port and trailing dot). It must not allocate on the hot path.
type Router interface {
	HTTPBackend(host []byte) (Backend, bool)
}

// Tunnels opens visitor streams on node tunnels; relay/tunnel implements
// it.
type Tunnels interface {
	Has(id identity.ID) bool
	Dial(ctx context.Context, id identity.ID, service string, visitor net.Addr) (net.Conn, error)
}

// TunnelService is the node-side service plain HTTP visitors are sent to
// through a tunnel.
const TunnelService = "http"

// tunnelHostSuffix marks the backend address of a tunnelled node for the
// client's dialer: "<hex id>.tunnel:80". Hex, because the HTTP client
// lowercases host names and Base58 ids are case-sensitive.
const tunnelHostSuffix = ".tunnel"

func tunnelAddr(id identity.ID) string { return hex.EncodeToString(id[:]) + tunnelHostSuffix + ":80" }

func parseTunnelAddr(addr string) (identity.ID, bool) {
	var id identity.ID
	h, ok := strings.CutSuffix(addr, tunnelHostSuffix+":80")
	if !ok || len(h) != 2*len(id) {
		return id, false
	}
	if _, err := hex.Decode(id[:], []byte(h)); err != nil {
		return id, false
	}
	return id, true
}
