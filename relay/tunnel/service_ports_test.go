package tunnel

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/elacity/pc2/core/config"
)

// TestServicesMapPorts: the "tunnel" and "tunnel-client" sections wire a
// mapped TCP port end to end.
func TestServicesMapPorts(t *testing.T) {
	lo := freePort(t)
	srvSvc := NewServerService(nil)
	super, err := runHost(t, fmt.Sprintf("metrics:\n  listen: \"off\"\ntunnel:\n  admitAll: true\n  ports:\n    range: %d-%d\n    perNode: 2\n", lo, lo+10), config.RoleSupernode, srvSvc)
	if err != nil {
		t.Fatal(err)
	}
	cliSvc := NewClientService()
	_, err = runHost(t, nodeConfig(super, echoServer(t))+"  ports:\n    - service: echo\n", config.RoleNode, cliSvc)
	if err != nil {
		t.Fatal(err)
	}
	cli := cliSvc.Client()
	waitAnswers(t, cli, 1)
	g := grantOf(t, cli, "echo", ProtoTCP)
	c, err := net.Dial("tcp", g.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, c, []byte("via the mapped port")); string(got) != "via the mapped port" {
		t.Fatalf("echo %q", got)
	}
}

func TestPortsConfigErrors(t *testing.T) {
	_, err := runHost(t, "metrics:\n  listen: \"off\"\ntunnel:\n  ports:\n    range: 9-3\n    perNode: 0\n    bind: nowhere\n", config.RoleSupernode, NewServerService(nil))
	if err == nil || !strings.Contains(err.Error(), "range") || !strings.Contains(err.Error(), "perNode") || !strings.Contains(err.Error(), "bind") {
		t.Fatalf("bad tunnel.ports accepted or not named: %v", err)
	}
	_, err = runHost(t, "metrics:\n  listen: \"off\"\ntunnel-client:\n  supernode: 127.0.0.1:1\n  supernodeID: 8PP58T5EMaG42HuqctCsa2KECMiTmrPWia7a8DP9gtMa\n  services:\n    - name: ssh\n      addr: 127.0.0.1:22\n  ports:\n    - service: ssh\n      proto: sctp\n    - service: web\n", config.RoleNode, NewClientService())
	if err == nil || !strings.Contains(err.Error(), "sctp") || !strings.Contains(err.Error(), `"web" is not in services`) {
		t.Fatalf("bad tunnel-client.ports accepted or not named: %v", err)
	}
}
