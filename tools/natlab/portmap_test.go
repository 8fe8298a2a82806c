package natlab_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/elacity/pc2/tools/natlab"
)

func init() {
	testAgents["natpmp-udp"] = natpmpUDPAgent
	testAgents["upnp-tcp"] = upnpTCPAgent
	testAgents["asker"] = askerAgent
}

// natpmpCall sends one NAT-PMP request to the gateway with RFC 6886 §3.1
// retries (250 ms, doubling) and returns the answer to it.
func natpmpCall(gw string, req []byte, wantLen int) ([]byte, error) {
	c, err := net.Dial("udp4", net.JoinHostPort(gw, "5351"))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	buf := make([]byte, 64)
	for try := range 4 {
		if _, err := c.Write(req); err != nil {
			return nil, err
		}
		_ = c.SetReadDeadline(time.Now().Add(250 * time.Millisecond << try))
		n, err := c.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return nil, err
		}
		if n != wantLen || buf[0] != 0 || buf[1] != 128+req[1] {
			return nil, fmt.Errorf("natpmp: unexpected %d-byte answer %x to %x", n, buf[:n], req)
		}
		return buf[:n], nil
	}
	return nil, errors.New("natpmp: no answer")
}

// natpmpMapping is a decoded NAT-PMP mapping answer (RFC 6886 §3.3).
type natpmpMapping struct {
	Result   uint16
	Internal uint16
	External uint16
	Lifetime uint32
}

// natpmpMap asks for (lifetime > 0) or deletes (lifetime 0) a mapping of
// internal port on protocol opcode (1 UDP, 2 TCP).
func natpmpMap(gw string, opcode byte, internal, suggested uint16, lifetime uint32) (natpmpMapping, error) {
	req := make([]byte, 12)
	req[1] = opcode
	binary.BigEndian.PutUint16(req[4:], internal)
	binary.BigEndian.PutUint16(req[6:], suggested)
	binary.BigEndian.PutUint32(req[8:], lifetime)
	b, err := natpmpCall(gw, req, 16)
	if err != nil {
		return natpmpMapping{}, err
	}
	return natpmpMapping{
		Result:   binary.BigEndian.Uint16(b[2:]),
		Internal: binary.BigEndian.Uint16(b[8:]),
		External: binary.BigEndian.Uint16(b[10:]),
		Lifetime: binary.BigEndian.Uint32(b[12:]),
	}, nil
}

// natpmpPublic is a decoded NAT-PMP public address answer (RFC 6886 §3.2).
type natpmpPublic struct {
	Result uint16
	Addr   string
}

// natpmpUDPAgent runs a UDP echo server on -port (each answer names the
// source it saw) and, on commands read from stdin, asks the gateway by
// NAT-PMP for its public address ("external"), maps that port ("map") or
// deletes the mapping ("unmap"), printing each answer as JSON.
func natpmpUDPAgent(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("natpmp-udp", flag.ContinueOnError)
	gw := fs.String("gw", "", "gateway address")
	port := fs.Int("port", 0, "local UDP port to serve and map")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: *port})
	if err != nil {
		return err
	}
	defer c.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			_, src, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDPAddrPort([]byte("echo "+src.String()), src)
		}
	}()
	fmt.Println("listening")
	enc := json.NewEncoder(os.Stdout)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var m natpmpMapping
		switch sc.Text() {
		case "external":
			b, err := natpmpCall(*gw, []byte{0, 0}, 12)
			if err != nil {
				return err
			}
			if err := enc.Encode(natpmpPublic{Result: binary.BigEndian.Uint16(b[2:]), Addr: netip.AddrFrom4([4]byte(b[8:12])).String()}); err != nil {
				return err
			}
			continue
		case "map":
			m, err = natpmpMap(*gw, 1, uint16(*port), uint16(*port), 120)
		case "unmap":
			m, err = natpmpMap(*gw, 1, uint16(*port), 0, 0)
		default:
			return fmt.Errorf("unknown command %q", sc.Text())
		}
		if err != nil {
			return err
		}
		if err := enc.Encode(m); err != nil {
			return err
		}
	}
	return sc.Err()
}

// upnpTCPAgent runs a TCP server on -port (it greets each connection with
// the peer address it saw) and, on "map" and "unmap" from stdin, adds or
// deletes a TCP port mapping through the gateway's UPnP IGD control point,
// printing what the gateway said as JSON.
func upnpTCPAgent(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("upnp-tcp", flag.ContinueOnError)
	port := fs.Int("port", 0, "local TCP port to serve and map")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{Port: *port})
	if err != nil {
		return err
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = fmt.Fprintf(c, "hello %s\n", c.RemoteAddr())
			c.Close()
		}
	}()
	location, desc, err := discoverIGD(ctx)
	if err != nil {
		return err
	}
	ctl, err := findWANIPConnection(location, desc)
	if err != nil {
		return err
	}
	fmt.Println("listening")
	enc := json.NewEncoder(os.Stdout)
	sp := strconv.Itoa(*port)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		out := map[string]any{}
		switch sc.Text() {
		case "map":
			r, err := ctl.call(ctx, "GetExternalIPAddress", nil)
			if err != nil {
				return err
			}
			out["external_ip"] = r["NewExternalIPAddress"]
			if _, err := ctl.call(ctx, "AddPortMapping", [][2]string{
				{"NewRemoteHost", ""}, {"NewExternalPort", sp}, {"NewProtocol", "TCP"},
				{"NewInternalPort", sp}, {"NewInternalClient", ctl.localIP}, {"NewEnabled", "1"},
				{"NewPortMappingDescription", "natlab test"}, {"NewLeaseDuration", "3600"},
			}); err != nil {
				return err
			}
			r, err = ctl.call(ctx, "GetSpecificPortMappingEntry", [][2]string{
				{"NewRemoteHost", ""}, {"NewExternalPort", sp}, {"NewProtocol", "TCP"}})
			if err != nil {
				return err
			}
			out["entry_client"], out["entry_port"] = r["NewInternalClient"], r["NewInternalPort"]
		case "unmap":
			if _, err := ctl.call(ctx, "DeletePortMapping", [][2]string{
				{"NewRemoteHost", ""}, {"NewExternalPort", sp}, {"NewProtocol", "TCP"}}); err != nil {
				return err
			}
			_, err := ctl.call(ctx, "GetSpecificPortMappingEntry", [][2]string{
				{"NewRemoteHost", ""}, {"NewExternalPort", sp}, {"NewProtocol", "TCP"}})
			out["entry_after_delete"] = fmt.Sprint(err)
		default:
			return fmt.Errorf("unknown command %q", sc.Text())
		}
		if err := enc.Encode(out); err != nil {
			return err
		}
	}
	return sc.Err()
}

// igdControl is the WANIPConnection service of a UPnP gateway.
type igdControl struct {
	url, serviceType, localIP string
}

// findWANIPConnection reads the service list of a device description.
func findWANIPConnection(location string, desc []byte) (*igdControl, error) {
	base, err := url.Parse(location)
	if err != nil {
		return nil, err
	}
	d := xml.NewDecoder(bytes.NewReader(desc))
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, fmt.Errorf("igd description at %s: no WANIPConnection service: %w", location, err)
		}
		se, ok := tok.(xml.StartElement)
		if !ok || se.Name.Local != "service" {
			continue
		}
		var svc struct {
			ServiceType string `xml:"serviceType"`
			ControlURL  string `xml:"controlURL"`
		}
		if err := d.DecodeElement(&svc, &se); err != nil {
			return nil, err
		}
		if !strings.HasPrefix(svc.ServiceType, "urn:schemas-upnp-org:service:WANIPConnection:") {
			continue
		}
		ref, err := url.Parse(svc.ControlURL)
		if err != nil {
			return nil, err
		}
		c, err := net.Dial("tcp4", base.Host) // which local address reaches the gateway
		if err != nil {
			return nil, err
		}
		local := c.LocalAddr().(*net.TCPAddr).IP.String()
		c.Close()
		return &igdControl{url: base.ResolveReference(ref).String(), serviceType: svc.ServiceType, localIP: local}, nil
	}
}

// call performs one SOAP action and returns the leaf elements of the answer.
// A UPnP error (HTTP 500) is returned as an error naming its code.
func (c *igdControl) call(ctx context.Context, action string, args [][2]string) (map[string]string, error) {
	var body bytes.Buffer
	fmt.Fprintf(&body, `<?xml version="1.0"?>`+
		`<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">`+
		`<s:Body><u:%s xmlns:u="%s">`, action, c.serviceType)
	for _, kv := range args {
		fmt.Fprintf(&body, "<%s>", kv[0])
		_ = xml.EscapeText(&body, []byte(kv[1]))
		fmt.Fprintf(&body, "</%s>", kv[0])
	}
	fmt.Fprintf(&body, "</u:%s></s:Body></s:Envelope>", action)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, &body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", `text/xml; charset="utf-8"`)
	req.Header.Set("SOAPAction", fmt.Sprintf(`"%s#%s"`, c.serviceType, action))
	hc := http.Client{Timeout: 3 * time.Second}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", action, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", action, err)
	}
	leaves := map[string]string{}
	d := xml.NewDecoder(bytes.NewReader(raw))
	var cur string
	for {
		tok, err := d.Token()
		if err != nil {
			break
		}
		switch t := tok.(type) {
		case xml.StartElement:
			cur = t.Name.Local
		case xml.CharData:
			if cur != "" {
				leaves[cur] += string(t)
			}
		case xml.EndElement:
			cur = ""
		}
	}
	if resp.StatusCode != http.StatusOK {
		return leaves, fmt.Errorf("%s: HTTP %d, UPnP error %s %s", action, resp.StatusCode, leaves["errorCode"], leaves["errorDescription"])
	}
	return leaves, nil
}

// askResult is what the asker agent prints for each question.
type askResult struct {
	OK   bool   `json:"ok"`
	From string `json:"from,omitempty"`
	Text string `json:"text,omitempty"`
	Err  string `json:"err,omitempty"`
}

// askerAgent answers lines "udp IP:PORT TRIES" (send a datagram from a fresh
// socket, so a new flow for every NAT on the way, 300 ms per try) and "tcp
// IP:PORT TIMEOUT" (connect, read the first line) with one JSON askResult
// each: one process serves every question of a test.
func askerAgent(ctx context.Context, args []string) error {
	enc := json.NewEncoder(os.Stdout)
	sc := bufio.NewScanner(os.Stdin)
	fmt.Println("listening")
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			return fmt.Errorf("asker: bad command %q", sc.Text())
		}
		var res askResult
		var err error
		switch f[0] {
		case "udp":
			res, err = udpAsk(f[1], f[2])
		case "tcp":
			res, err = tcpAsk(f[1], f[2])
		default:
			err = fmt.Errorf("asker: bad command %q", sc.Text())
		}
		if err != nil {
			return err
		}
		if err := enc.Encode(res); err != nil {
			return err
		}
	}
	return sc.Err()
}

func udpAsk(to, triesArg string) (askResult, error) {
	dst, err := netip.ParseAddrPort(to)
	if err != nil {
		return askResult{}, err
	}
	tries, err := strconv.Atoi(triesArg)
	if err != nil {
		return askResult{}, err
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		return askResult{}, err
	}
	defer c.Close()
	buf := make([]byte, 1500)
	for range tries {
		if _, err := c.WriteToUDPAddrPort([]byte("ping"), dst); err != nil {
			return askResult{}, err
		}
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, src, err := c.ReadFromUDPAddrPort(buf)
		if err == nil {
			return askResult{OK: true, From: src.String(), Text: string(buf[:n])}, nil
		}
	}
	return askResult{}, nil
}

func tcpAsk(to, timeoutArg string) (askResult, error) {
	timeout, err := time.ParseDuration(timeoutArg)
	if err != nil {
		return askResult{}, err
	}
	c, err := net.DialTimeout("tcp4", to, timeout)
	if err != nil {
		return askResult{Err: err.Error()}, nil
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return askResult{Err: err.Error()}, nil
	}
	return askResult{OK: true, From: c.RemoteAddr().String(), Text: strings.TrimSpace(line)}, nil
}

// TestPortMapping shows the upnp option granting real mappings with the
// lab's documentation-prefix WAN addresses: NAT-PMP public address and UDP
// mapping (port-restricted and symmetric routers), a UPnP IGD TCP mapping, a
// public host reaching the private hosts through them (and not before or
// after), and no miniupnpd left after teardown.
func TestPortMapping(t *testing.T) {
	needRoot(t)
	spec := func(s string) natlab.NATOptions {
		o, err := natlab.ParseNATSpec(s)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	topo := natlab.Topology{
		Name:   "portmap",
		Public: []natlab.PublicHost{{Name: "probe", ProbeServer: true}, {Name: "pub"}},
		NATs: []natlab.NAT{
			{Name: "gw", Options: spec("prc,upnp"), Hosts: []string{"gw1"}},
			{Name: "gws", Options: spec("sym,upnp"), Hosts: []string{"gws1"}},
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t0 := time.Now()
	l, err := natlab.Up(ctx, topo, natlab.Config{Name: "test-portmap", Launcher: testLauncher(t)})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	tUp := time.Since(t0)
	id := l.ID
	closed := false
	defer func() {
		if !closed {
			_ = l.Close()
		}
	}()
	mappers := miniupnpdPids(t, id)
	if len(mappers) != 2 {
		t.Fatalf("want one miniupnpd per upnp router, found pids %v", mappers)
	}
	pub, _ := l.Node("pub")
	pubAddr := pub.Addrs[0]

	t.Run("group", func(t *testing.T) {
		for _, router := range []string{"gw", "gws"} {
			t.Run("NATPMP/"+router, func(t *testing.T) {
				t.Parallel()
				testNATPMP(ctx, t, l, router, router+"1", pubAddr)
			})
		}
		t.Run("UPnPTCP", func(t *testing.T) {
			t.Parallel()
			testUPnPTCP(ctx, t, l, "gw", "gw1", pubAddr)
		})
	})

	tRun := time.Since(t0) - tUp
	closed = true
	if err := l.Close(); err != nil {
		t.Errorf("lab close: %v", err)
	}
	assertGone(t, id)
	for _, pid := range mappers {
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(comm)) == "miniupnpd" {
			t.Errorf("miniupnpd (pid %d) survived the lab's teardown", pid)
		}
	}
	t.Logf("lab up %v, mappings %v, teardown %v", tUp.Round(time.Millisecond), tRun.Round(time.Millisecond),
		(time.Since(t0) - tUp - tRun).Round(time.Millisecond))
}

// miniupnpdPids lists the miniupnpd processes inside run id's namespaces.
func miniupnpdPids(t *testing.T, id string) []int {
	t.Helper()
	var out []int
	for _, pid := range natlab.ProcessesOf(id) {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err == nil && strings.TrimSpace(string(comm)) == "miniupnpd" {
			out = append(out, pid)
		}
	}
	return out
}

// ask sends one question to an asker agent and returns its answer.
func ask(ctx context.Context, t *testing.T, asker *natlab.Proc, question string) askResult {
	t.Helper()
	if err := asker.WriteLine(question); err != nil {
		t.Fatal(err)
	}
	var r askResult
	nextJSON(ctx, t, asker, &r)
	return r
}

// nextJSON reads the next output line of an agent into v.
func nextJSON(ctx context.Context, t *testing.T, p *natlab.Proc, v any) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	line, err := p.NextLine(wctx)
	if err != nil {
		t.Fatalf("agent on %s: %v; stderr: %s", p.Host, err, p.Stderr())
	}
	if err := json.Unmarshal([]byte(line), v); err != nil {
		t.Fatalf("agent on %s printed %q: %v", p.Host, line, err)
	}
}

// startAgents starts one agent per argv (host first) and waits until each
// printed "listening"; they run concurrently, which matters under -race
// where each start of the test binary is slow.
func startAgents(ctx context.Context, t *testing.T, l *natlab.Lab, argvs ...[]string) []*natlab.Proc {
	t.Helper()
	var procs []*natlab.Proc
	for _, argv := range argvs {
		p, err := l.StartAgent(ctx, argv[0], argv[1:], natlab.StartOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Stop(time.Second) })
		procs = append(procs, p)
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for i, p := range procs {
		if line, err := p.NextLine(wctx); err != nil || line != "listening" {
			t.Fatalf("%s on %s: %q %v; stderr: %s", argvs[i][1], p.Host, line, err, p.Stderr())
		}
	}
	return procs
}

func testNATPMP(ctx context.Context, t *testing.T, l *natlab.Lab, router, host string, pub netip.Addr) {
	r, _ := l.Node(router)
	wan, gw := r.Addrs[0], r.LAN.Addr().Next().String()
	const port = 40000
	procs := startAgents(ctx, t, l, []string{host, "natpmp-udp", "-gw", gw, "-port", strconv.Itoa(port)}, []string{"pub", "asker"})
	p, asker := procs[0], procs[1]

	// (a) public address: result 0 and the router's real WAN address.
	if err := p.WriteLine("external"); err != nil {
		t.Fatal(err)
	}
	var ext natpmpPublic
	nextJSON(ctx, t, p, &ext)
	if ext.Result != 0 || ext.Addr != wan.String() {
		t.Fatalf("NAT-PMP public address: result %d address %s, want 0 and %v", ext.Result, ext.Addr, wan)
	}

	// (b) a UDP mapping: unreachable before, reachable through the mapped
	// port, unreachable again (for a new flow) once deleted.
	if r := ask(ctx, t, asker, fmt.Sprintf("udp %v 2", netip.AddrPortFrom(wan, port))); r.OK {
		t.Fatalf("control: pub reached %s:%d before any mapping: %+v", wan, port, r)
	}
	if err := p.WriteLine("map"); err != nil {
		t.Fatal(err)
	}
	var m natpmpMapping
	nextJSON(ctx, t, p, &m)
	if m.Result != 0 || m.Internal != port || m.External == 0 || m.Lifetime == 0 {
		t.Fatalf("NAT-PMP UDP mapping: %+v", m)
	}
	mapped := netip.AddrPortFrom(wan, m.External)
	got := ask(ctx, t, asker, fmt.Sprintf("udp %v 10", mapped))
	if !got.OK || got.From != mapped.String() || !strings.HasPrefix(got.Text, "echo "+pub.String()+":") {
		t.Fatalf("through the NAT-PMP mapping %v: %+v (want an echo from %v naming %v)", mapped, got, mapped, pub)
	}
	t.Logf("%s: NAT-PMP external %v, UDP %d mapped to %v, lifetime %d s; pub got %q", router, wan, port, mapped, m.Lifetime, got.Text)
	if err := p.WriteLine("unmap"); err != nil {
		t.Fatal(err)
	}
	nextJSON(ctx, t, p, &m)
	if m.Result != 0 || m.Lifetime != 0 {
		t.Fatalf("NAT-PMP delete: %+v", m)
	}
	if r := ask(ctx, t, asker, fmt.Sprintf("udp %v 2", mapped)); r.OK {
		t.Fatalf("a new flow reached %v after the mapping was deleted: %+v", mapped, r)
	}
}

func testUPnPTCP(ctx context.Context, t *testing.T, l *natlab.Lab, router, host string, pub netip.Addr) {
	r, _ := l.Node(router)
	h, _ := l.Node(host)
	wan := r.Addrs[0]
	const port = 40001
	target := netip.AddrPortFrom(wan, port).String()
	procs := startAgents(ctx, t, l, []string{host, "upnp-tcp", "-port", strconv.Itoa(port)}, []string{"pub", "asker"})
	p, asker := procs[0], procs[1]
	if r := ask(ctx, t, asker, "tcp "+target+" 700ms"); r.OK {
		t.Fatalf("control: pub connected to %s before any mapping: %+v", target, r)
	}
	if err := p.WriteLine("map"); err != nil {
		t.Fatal(err)
	}
	var res map[string]string
	nextJSON(ctx, t, p, &res)
	if res["external_ip"] != wan.String() || res["entry_client"] != h.Addrs[0].String() || res["entry_port"] != strconv.Itoa(port) {
		t.Fatalf("UPnP IGD: %v (want external IP %v, entry %v:%d)", res, wan, h.Addrs[0], port)
	}
	got := ask(ctx, t, asker, "tcp "+target+" 5s")
	if !got.OK || !strings.HasPrefix(got.Text, "hello "+pub.String()+":") {
		t.Fatalf("through the UPnP mapping %s: %+v (want a greeting naming %v)", target, got, pub)
	}
	t.Logf("%s: UPnP GetExternalIPAddress %s, TCP %s → %s:%d; pub got %q", router, res["external_ip"], target, h.Addrs[0], port, got.Text)
	if err := p.WriteLine("unmap"); err != nil {
		t.Fatal(err)
	}
	nextJSON(ctx, t, p, &res)
	if !strings.Contains(res["entry_after_delete"], "UPnP error 714") {
		t.Fatalf("after DeletePortMapping the entry lookup said %q, want error 714 (NoSuchEntryInArray)", res["entry_after_delete"])
	}
	if r := ask(ctx, t, asker, "tcp "+target+" 700ms"); r.OK {
		t.Fatalf("pub connected to %s after the mapping was deleted: %+v", target, r)
	}
}
