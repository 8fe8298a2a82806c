package client_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/elacity/pc2/core/clock"
	"github.com/elacity/pc2/core/config"
	"github.com/elacity/pc2/core/host"
	"github.com/elacity/pc2/core/host/hosttest"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/gateway/dns"
	"github.com/elacity/pc2/gateway/httproute"
	"github.com/elacity/pc2/plugins/registry"
	"github.com/elacity/pc2/plugins/registry/client"
	"github.com/elacity/pc2/plugins/registry/wire"
)

func writeConfig(t *testing.T, body string) string {
	p := filepath.Join(t.TempDir(), "pc2.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// runHost starts a host and returns its Info; the host stops at cleanup.
func runHost(t *testing.T, cfgBody string, role config.Role, clk clock.Clock, svcs ...host.Service) host.Info {
	t.Helper()
	info, err := hosttest.Run(t, cfgBody, role, clk, svcs...)
	if err != nil {
		t.Fatalf("host failed: %v", err)
	}
	return info
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSupernodeAndNode wires the services the way cmd/pc2 will: a
// supernode host with the registry, DNS and HTTP router, and a node host
// whose names service registers and renews a name through the API.
func TestSupernodeAndNode(t *testing.T) {
	clk := clock.NewFake(time.Now())
	// The node's own web server: what :80 must reach.
	web, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	websrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the node, host %s", r.Host)
	})}
	go websrv.Serve(web)
	defer websrv.Close()

	reg := registry.New()
	super := runHost(t, "metrics:\n  listen: \"off\"\nregistry:\n  lifetime: 240h\n", config.RoleSupernode, clk,
		reg, dns.New(reg), httproute.New(reg))
	api := super.Extra["registry.api"]
	dnsAddr := super.Extra["dns.listen"]
	httpAddr := super.Extra["http.listen"]
	if api == "" || dnsAddr == "" || httpAddr == "" {
		t.Fatalf("advertised: %v", super.Extra)
	}

	names := client.NewService()
	runHost(t, fmt.Sprintf(`metrics:
  listen: "off"
names:
  registry: %s
  renewBefore: 48h
  names:
    - name: Alice.pc2.localhost
      target: 127.0.0.1:9443
      http: %s
`, api, web.Addr()), config.RoleNode, clk, names)

	eventually(t, "registration at start", func() bool {
		st := names.Status()
		return len(st) == 1 && !st[0].Expires.IsZero()
	})
	if _, ok := reg.TLSTarget("alice.pc2.localhost"); !ok {
		t.Fatal("acknowledged but not routed")
	}
	st := names.Status()
	if len(st) != 1 || st[0].Err != nil || !st[0].Expires.Equal(time.Unix(clk.Now().Unix(), 0).Add(240*time.Hour)) {
		t.Fatalf("status %+v", st)
	}
	firstExpiry := st[0].Expires

	// DNS answers for it, with this supernode's (dev: loopback) address.
	m := new(mdns.Msg).SetQuestion("alice.pc2.localhost.", mdns.TypeA)
	r, err := mdns.Exchange(m, dnsAddr)
	if err != nil || r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*mdns.A).A.String() != "127.0.0.1" {
		t.Fatalf("dns: %v %v", r, err)
	}
	// :80 routes by Host to the node's HTTP endpoint.
	req, _ := http.NewRequest("GET", "http://"+httpAddr+"/", nil)
	req.Host = "alice.pc2.localhost"
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if string(body) != "hello from the node, host alice.pc2.localhost" {
		t.Fatalf("http: %d %q", res.StatusCode, body)
	}

	// Two days before expiry the node renews by itself.
	clk.Advance(240*time.Hour - 48*time.Hour)
	eventually(t, "renewal", func() bool {
		st := names.Status()
		return len(st) == 1 && st[0].Expires.After(firstExpiry)
	})
	// The sweeper, on the same clock, has not freed the renewed name.
	clk.Advance(49 * time.Hour)
	if _, ok := reg.TLSTarget("alice.pc2.localhost"); !ok {
		t.Fatal("renewed name expired")
	}
}

func TestConfigErrorsNameTheLine(t *testing.T) {
	reg := registry.New()
	cfg, err := config.Load(writeConfig(t, "registry:\n  domains: [bad_domain]\n  maxSkew: 1s\n"), config.RoleSupernode, true, []string{"registry"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataDir = t.TempDir()
	cfg.Metrics.Listen = "off"
	h, err := host.New(host.Options{Config: cfg, Services: []host.Service{reg}, Log: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	err = h.Run(context.Background(), nil)
	for _, want := range []string{"pc2.yaml:2: registry.domains:", "pc2.yaml:3: registry.maxSkew:"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
}

func TestCommands(t *testing.T) {
	reg := registry.New()
	super := runHost(t, "metrics:\n  listen: \"off\"\n", config.RoleSupernode, clock.Real{}, reg)
	kp, _ := identity.FromSeed(bytes.Repeat([]byte{7}, 32))
	cmds := map[string]*client.Command{}
	for _, c := range client.Commands(func() (*identity.KeyPair, error) { return kp, nil }) {
		cmds[c.Name] = c
	}
	run := func(name string, args ...string) (string, error) {
		c := cmds[name]
		fs := flag.NewFlagSet(name, flag.ContinueOnError)
		c.Flags(fs)
		if err := fs.Parse(append([]string{"--registry", super.Extra["registry.api"]}, args...)); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		err := c.Run(context.Background(), &out, fs.Args())
		return out.String(), err
	}
	if _, err := run("register", "bob.pc2.localhost"); !errors.Is(err, client.ErrUsage) {
		t.Fatalf("register without --target: %v", err)
	}
	out, err := run("register", "--target", "127.0.0.1:9443", "--redirect-https", "Bob.pc2.localhost")
	if err != nil || !strings.HasPrefix(out, "bob.pc2.localhost → 127.0.0.1:9443, expires ") {
		t.Fatalf("register: %q %v", out, err)
	}
	out, err = run("list")
	if err != nil || !strings.Contains(out, "bob.pc2.localhost") || !strings.Contains(out, "(redirect)") {
		t.Fatalf("list: %q %v", out, err)
	}
	out, err = run("show", "bob.pc2.localhost")
	if err != nil || !strings.Contains(out, kp.ID().DID()) {
		t.Fatalf("show: %q %v", out, err)
	}
	if out, err = run("delete", "bob.pc2.localhost"); err != nil || out != "bob.pc2.localhost deleted\n" {
		t.Fatalf("delete: %q %v", out, err)
	}
	if out, err = run("list"); err != nil || out != "no names\n" {
		t.Fatalf("list after delete: %q %v", out, err)
	}
	if _, err = run("show", "bob.pc2.localhost"); client.CodeOf(err) != "not_found" {
		t.Fatalf("show deleted: %v", err)
	}
}

// claimedBy is a registry.Claims that says every name belongs to owner
// once set.
type claimedBy struct{ owner atomic.Pointer[identity.ID] }

func (c *claimedBy) ClaimedElsewhere(_ string, id identity.ID) bool {
	o := c.owner.Load()
	return o != nil && *o != id
}

// TestLostNameIsNoticed: the federation gives the node's name to an
// earlier claim at another supernode (its supernode evicts it); the node
// notices at its next check, not at its renewal weeks later, and reports
// the name taken.
func TestLostNameIsNoticed(t *testing.T) {
	clk := clock.NewFake(time.Now())
	reg := registry.New()
	claims := &claimedBy{}
	reg.Claims = claims
	super := runHost(t, "metrics:\n  listen: \"off\"\n", config.RoleSupernode, clk, reg)
	names := client.NewService()
	runHost(t, fmt.Sprintf(`metrics:
  listen: "off"
names:
  registry: %s
  checkEvery: 1m
  names:
    - name: ivy.pc2.localhost
      target: 127.0.0.1:9443
`, super.Extra["registry.api"]), config.RoleNode, clk, names)
	eventually(t, "registration at start", func() bool {
		st := names.Status()
		return len(st) == 1 && !st[0].Expires.IsZero() && st[0].Err == nil
	})
	owner, _ := reg.Owner("ivy.pc2.localhost")
	winner, _ := identity.Generate(rand.Reader)
	id := winner.ID()
	claims.owner.Store(&id)
	if ok, err := reg.Evict(context.Background(), "ivy.pc2.localhost", owner); !ok || err != nil {
		t.Fatalf("evict: %v %v", ok, err)
	}
	clk.Advance(time.Minute)
	eventually(t, "the node notices the lost name", func() bool {
		st := names.Status()
		return len(st) == 1 && client.CodeOf(st[0].Err) == wire.CodeTaken
	})
}
