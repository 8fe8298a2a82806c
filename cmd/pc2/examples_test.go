package main

import (
	fedmesh "github.com/elacity/pc2/federation/mesh"
	"path/filepath"
	"testing"

	"github.com/elacity/pc2/core/config"
	dhtnode "github.com/elacity/pc2/dht/node"
	"github.com/elacity/pc2/gateway/dns"
	"github.com/elacity/pc2/gateway/httproute"
	"github.com/elacity/pc2/gateway/sniproxy"
	"github.com/elacity/pc2/plugins/registry"
	"github.com/elacity/pc2/plugins/registry/client"
	"github.com/elacity/pc2/relay/circuit"
	"github.com/elacity/pc2/relay/tunnel"
	"github.com/elacity/pc2/transport/nat"
	"github.com/elacity/pc2/transport/peer"
	"github.com/elacity/pc2/transport/stun"
)

// The documented examples must always load, every section strictly into
// its service's config: docs that rot are worse than none.
func TestConfigExamplesLoad(t *testing.T) {
	sectionTypes := map[string]func() any{
		"dht":           func() any { c := dhtnode.DefaultConfig(false); return &c },
		"registry":      func() any { c := registry.DefaultConfig(false); return &c },
		"dns":           func() any { c := dns.DefaultConfig(false); return &c },
		"http":          func() any { c := httproute.DefaultConfig(false); return &c },
		"sni":           func() any { c := sniproxy.DefaultServiceConfig(false); return &c },
		"tunnel":        func() any { return &tunnel.ServerServiceConfig{} },
		"names":         func() any { c := client.DefaultConfig(); return &c },
		"tunnel-client": func() any { return &tunnel.ClientServiceConfig{} },
		"relay":         func() any { c := circuit.DefaultServiceConfig(false, true); return &c },
		"stun":          func() any { c := stun.DefaultServiceConfig(false); return &c },
		"nat":           func() any { c := nat.DefaultConfig(false); return &c },
		"mesh":          func() any { c := fedmesh.DefaultConfig(false); return &c },
		"peer":          func() any { return &peer.ServiceConfig{} },
	}
	for file, r := range map[string]role{"supernode.yaml": roleSupernode, "node.yaml": roleNode} {
		var sections []string
		for _, s := range r.services() {
			sections = append(sections, s.Name())
		}
		cfg, err := config.Load(filepath.Join("..", "..", "docs", "config", file), r.role, false, sections)
		if err != nil {
			t.Errorf("%s: %v", file, err)
			continue
		}
		for _, name := range sections {
			sec := cfg.Section(name)
			if !sec.Present() {
				continue
			}
			newCfg, ok := sectionTypes[name]
			if !ok {
				t.Errorf("%s: no config type known for section %q", file, name)
				continue
			}
			if err := sec.Decode(newCfg()); err != nil {
				t.Errorf("%s: %v", file, err)
			}
		}
	}
}
