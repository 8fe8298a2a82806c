// Package registry is the supernode's name registry: who owns
// alice.ela.city and where its traffic goes. It exists so that a node
// behind any address can claim a name with nothing but its Ed25519 key,
// and so that the gateway (SNI on :443, Host on :80) and the DNS server
// route that name without asking anyone.
//
// Shape (as a CoreDNS or Caddy plugin): setup.go reads and checks the
// "registry" config section and runs the Service; registry.go holds the
// store logic (first come first served, owner-only changes, expiry,
// quotas, replay protection, durable writes); api.go is the fasthttp
// API; routes.go the zero-allocation lookups the gateway calls;
// wire/ the signed request format shared with client/, the node side.
// README.md documents the protocol, including the exact signed bytes.
//
// Every accepted change is written to the store and fsynced before the
// API answers, together with its nonce, so neither a crash nor a restart
// loses an acknowledged registration or reopens a replay window.
package registry
