// Package hosttest runs services in a real host for tests, the way `pc2`
// runs them: the config text is loaded with the role's rules, services
// start in order, and the host stops (and must stop cleanly) when the
// test ends. It exists so that every service's tests exercise config
// loading, readiness and shutdown like the binary, without each package
// writing its own harness.
package hosttest

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/elacity/pc2/core/clock"
	"github.com/elacity/pc2/core/config"
	"github.com/elacity/pc2/core/host"
)

// Run starts svcs in a developer-mode host configured by cfgBody (YAML)
// for role, with clk as its clock (nil: the system clock), and returns its
// Info once every service has started. A config or start error is
// returned; the host is stopped at the test's cleanup.
func Run(t testing.TB, cfgBody string, role config.Role, clk clock.Clock, svcs ...host.Service) (host.Info, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pc2.yaml")
	if err := os.WriteFile(p, []byte(cfgBody), 0o600); err != nil {
		t.Fatal(err)
	}
	sections := make([]string, 0, len(svcs))
	for _, s := range svcs {
		sections = append(sections, s.Name())
	}
	cfg, err := config.Load(p, role, true, sections)
	if err != nil {
		return host.Info{}, err
	}
	cfg.DataDir = t.TempDir()
	h, err := host.New(host.Options{Config: cfg, Services: svcs, Log: io.Discard, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan host.Info, 1), make(chan error, 1)
	go func() { done <- h.Run(ctx, func(i host.Info) { ready <- i }) }()
	select {
	case info := <-ready:
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("host stop: %v", err)
			}
		})
		return info, nil
	case err := <-done:
		cancel()
		return host.Info{}, err
	case <-time.After(20 * time.Second):
		cancel()
		t.Fatal("host not ready after 20 s")
	}
	return host.Info{}, nil
}
