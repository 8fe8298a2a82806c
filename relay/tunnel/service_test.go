package tunnel

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elacity/pc2/core/config"
	"github.com/elacity/pc2/core/host"
	"github.com/elacity/pc2/core/host/hosttest"
	"github.com/elacity/pc2/core/identity"
)

type fakeRegistry struct {
	mu  sync.Mutex
	ids map[identity.ID]bool
}

func (r *fakeRegistry) Registered(id identity.ID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ids[id]
}

func (r *fakeRegistry) add(id identity.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ids[id] = true
}

// runHost runs svcs in a dev host with cfgBody and returns its Info, or
// the start error.
func runHost(t *testing.T, cfgBody string, role config.Role, svcs ...host.Service) (host.Info, error) {
	t.Helper()
	return hosttest.Run(t, cfgBody, role, nil, svcs...)
}

func nodeConfig(info host.Info, echo string) string {
	return fmt.Sprintf("metrics:\n  listen: \"off\"\ntunnel-client:\n  supernode: %s\n  supernodeID: %s\n  services:\n    - name: echo\n      addr: %s\n",
		info.Extra["tunnel.listen"], info.ID, echo)
}

// TestServicesAdmitRegisteredOnly: by default the supernode admits only
// nodes that own a name; a node that registers later gets in on its own,
// through its reconnect loop; the deny list beats registration.
func TestServicesAdmitRegisteredOnly(t *testing.T) {
	reg := &fakeRegistry{ids: map[identity.ID]bool{}}
	srvSvc := NewServerService(reg)
	super, err := runHost(t, "metrics:\n  listen: \"off\"\n", config.RoleSupernode, srvSvc)
	if err != nil {
		t.Fatal(err)
	}
	cliSvc := NewClientService()
	node, err := runHost(t, nodeConfig(super, echoServer(t)), config.RoleNode, cliSvc)
	if err != nil {
		t.Fatal(err)
	}
	cli := cliSvc.Client()
	waitFor(t, "two refused attempts", 10*time.Second, func() bool { return cli.Attempts.Load() >= 2 })
	if srvSvc.Has(node.ID) || cli.Connects.Load() != 0 {
		t.Fatal("an unregistered node got a tunnel")
	}
	reg.add(node.ID)
	waitFor(t, "the registered node's tunnel", 10*time.Second, func() bool { return srvSvc.Has(node.ID) })
	c, err := srvSvc.Dial(context.Background(), node.ID, "echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, c, []byte("hi")); string(got) != "hi" {
		t.Fatalf("echo %q", got)
	}

	// The deny list beats registration.
	denied := NewServerService(reg)
	super2, err := runHost(t, fmt.Sprintf("metrics:\n  listen: \"off\"\ntunnel:\n  deny: [%s]\n", node.ID), config.RoleSupernode, denied)
	if err != nil {
		t.Fatal(err)
	}
	cli2 := NewClient(cli.kp, ClientConfig{Supernode: super2.Extra["tunnel.listen"], SupernodeID: super2.ID, LocalUDP: "127.0.0.1:0", BackoffMin: time.Millisecond})
	cli2.Start()
	defer cli2.Close()
	waitFor(t, "two refused attempts", 10*time.Second, func() bool { return cli2.Attempts.Load() >= 2 })
	if denied.Has(node.ID) || cli2.Connects.Load() != 0 {
		t.Fatal("a denied node got a tunnel")
	}
}

func TestClientServiceConfigErrors(t *testing.T) {
	_, err := runHost(t, "metrics:\n  listen: \"off\"\ntunnel-client:\n  supernode: 127.0.0.1:1\n  supernodeID: nonsense\n  services:\n    - name: Bad Name\n      addr: x\n", config.RoleNode, NewClientService())
	if err == nil {
		t.Fatal("bad tunnel-client section accepted")
	}
	for _, want := range []string{"supernodeID", "services"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}
