package natlab_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/elacity/pc2/tools/natlab"
)

func init() {
	testAgents["natpmp-external"] = natpmpExternal
	testAgents["ssdp-discover"] = ssdpDiscover
}

// natpmpExternal sends the 2-byte NAT-PMP public address request (RFC 6886
// §3.2: version 0, opcode 0) to the gateway and prints the decoded answer.
func natpmpExternal(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("natpmp-external", flag.ContinueOnError)
	gw := fs.String("gw", "", "gateway address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := net.Dial("udp4", net.JoinHostPort(*gw, "5351"))
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 64)
	for try := range 4 {
		if _, err := c.Write([]byte{0, 0}); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(250 * time.Millisecond << try)) // RFC 6886 doubling retry
		n, err := c.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		// Response: version, opcode 128+0, result code (2), epoch (4), address (4).
		if n != 12 || buf[0] != 0 || buf[1] != 128 {
			return fmt.Errorf("natpmp: unexpected %d-byte answer %x", n, buf[:n])
		}
		out := map[string]any{
			"result": binary.BigEndian.Uint16(buf[2:4]),
			"epoch":  binary.BigEndian.Uint32(buf[4:8]),
			"addr":   netip.AddrFrom4([4]byte(buf[8:12])).String(),
		}
		return json.NewEncoder(os.Stdout).Encode(out)
	}
	return errors.New("natpmp: no answer")
}

// ssdpDiscover sends an SSDP M-SEARCH for an Internet Gateway Device, then
// fetches the device description the answer points to.
func ssdpDiscover(ctx context.Context, args []string) error {
	location, desc, err := discoverIGD(ctx)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]string{"location": location, "description": string(desc)})
}

// discoverIGD finds the LAN's Internet Gateway Device by SSDP and returns its
// description URL and description.
func discoverIGD(ctx context.Context) (location string, desc []byte, err error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		return "", nil, err
	}
	defer c.Close()
	req := "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\n" +
		"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n"
	dst := &net.UDPAddr{IP: net.IPv4(239, 255, 255, 250), Port: 1900}
	buf := make([]byte, 4096)
	for range 4 {
		if _, err := c.WriteToUDP([]byte(req), dst); err != nil {
			return "", nil, err
		}
		_ = c.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
		n, _, err := c.ReadFromUDP(buf)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(strings.NewReader(string(buf[:n])))
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.EqualFold(k, "location") {
				location = strings.TrimSpace(v)
			}
		}
		if location == "" {
			return "", nil, fmt.Errorf("ssdp: answer without LOCATION: %q", buf[:n])
		}
		hc := http.Client{Timeout: 3 * time.Second}
		hreq, err := http.NewRequestWithContext(ctx, http.MethodGet, location, nil)
		if err != nil {
			return "", nil, err
		}
		resp, err := hc.Do(hreq)
		if err != nil {
			return "", nil, fmt.Errorf("ssdp: fetch %s: %w", location, err)
		}
		defer resp.Body.Close()
		desc, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if err != nil {
			return "", nil, err
		}
		return location, desc, nil
	}
	return "", nil, errors.New("ssdp: no answer to M-SEARCH")
}

// featureTopology has one router per option under test, all port-restricted.
func featureTopology(t *testing.T) natlab.Topology {
	t.Helper()
	spec := func(s string) natlab.NATOptions {
		o, err := natlab.ParseNATSpec(s)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	return natlab.Topology{
		Name:   "features",
		Public: []natlab.PublicHost{{Name: "probe", ProbeServer: true}, {Name: "relay", NumAddrs: 3}},
		NATs: []natlab.NAT{
			{Name: "plain", Options: spec("prc"), Hosts: []string{"plain1", "plain2"}},
			{Name: "lossy", Options: spec("prc,loss=nth:4"), Hosts: []string{"lossy1"}},
			{Name: "rlossy", Options: spec("prc,loss=random:20%"), Hosts: []string{"rlossy1"}},
			{Name: "short", Options: spec("prc,timeout=1s"), Hosts: []string{"short1"}},
			{Name: "slow", Options: spec("prc,rate=2mbit"), Hosts: []string{"slow1"}},
			{Name: "gw", Options: spec("prc,upnp"), Hosts: []string{"gw1"}},
			{Name: "fcone", Options: spec("fc,hairpin"), Hosts: []string{"fcone1", "fcone2"}},
			{Name: "hard", Options: spec("sym"), Hosts: []string{"hard1"}},
		},
	}
}

func TestFeatures(t *testing.T) {
	l := upLab(t, featureTopology(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("group", func(t *testing.T) {
		t.Run("NthLossIsExact", func(t *testing.T) {
			t.Parallel()
			// 100 requests, 1 of every 4 dropped outbound (25 → 75 pass), then
			// 1 of every 4 of the 75 replies dropped inbound (19 → 56 arrive).
			r, err := l.MeasureLoss(ctx, "lossy1", 100, 2*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			if r.Sent != 100 || r.Received != 56 {
				t.Fatalf("nth:4 loss both ways: sent %d received %d, want 100/56", r.Sent, r.Received)
			}
		})
		t.Run("RandomLoss", func(t *testing.T) {
			t.Parallel()
			r, err := l.MeasureLoss(ctx, "rlossy1", 400, time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			// Survival 0.8 × 0.8 = 0.64: mean 256, σ ≈ 9.6; accept ±4.7σ.
			if r.Received < 210 || r.Received > 302 {
				t.Fatalf("random 20%% loss each way: received %d of %d, want ≈256", r.Received, r.Sent)
			}
			t.Logf("random 20%% each way: %d/%d received", r.Received, r.Sent)
		})
		t.Run("NoLossControl", func(t *testing.T) {
			t.Parallel()
			r, err := l.MeasureLoss(ctx, "plain1", 100, 2*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			if r.Received != 100 {
				t.Fatalf("lossless NAT: received %d of 100", r.Received)
			}
		})
		t.Run("UDPMappingTimeout", func(t *testing.T) {
			t.Parallel()
			// The server holds its reply; the mapping of a NAT with a 1 s UDP
			// timeout must let a 300 ms-late reply in and drop a 2.5 s-late one,
			// while a default NAT still accepts the 2.5 s-late reply.
			_, ok, err := l.Query(ctx, "short1", natlab.QueryOptions{Delay: 300 * time.Millisecond, Timing: natlab.ProbeTiming{Tries: 1}})
			if err != nil || !ok {
				t.Fatalf("reply after 300 ms through a 1 s mapping: ok=%v err=%v", ok, err)
			}
			_, ok, err = l.Query(ctx, "short1", natlab.QueryOptions{Delay: 2500 * time.Millisecond, Timing: natlab.ProbeTiming{Tries: 1, Wait: 500 * time.Millisecond}})
			if err != nil || ok {
				t.Fatalf("reply after 2.5 s through a 1 s mapping: ok=%v err=%v (want dropped)", ok, err)
			}
		})
		t.Run("UDPMappingTimeoutControl", func(t *testing.T) {
			t.Parallel()
			_, ok, err := l.Query(ctx, "plain2", natlab.QueryOptions{Delay: 2500 * time.Millisecond, Timing: natlab.ProbeTiming{Tries: 1, Wait: 500 * time.Millisecond}})
			if err != nil || !ok {
				t.Fatalf("control: reply after 2.5 s through a default mapping: ok=%v err=%v", ok, err)
			}
		})
		t.Run("RateLimit", func(t *testing.T) {
			t.Parallel()
			const n = 256 << 10
			slow, err := l.MeasureUpload(ctx, "slow1", n)
			if err != nil {
				t.Fatal(err)
			}
			fast, err := l.MeasureUpload(ctx, "plain1", n)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("upload %d KiB: tbf 2 mbit NAT %.0f kbit/s; unlimited NAT %.0f kbit/s", n>>10, slow.Kbit, fast.Kbit)
			if slow.Kbit > 2000*1.25 || slow.Kbit < 2000*0.25 {
				t.Fatalf("rate-limited upload %.0f kbit/s, want ≈ 2000", slow.Kbit)
			}
			if fast.Kbit < 4*slow.Kbit {
				t.Fatalf("unlimited upload %.0f kbit/s is not clearly faster than the limited %.0f", fast.Kbit, slow.Kbit)
			}
		})
		t.Run("NATPMPExternalAddress", func(t *testing.T) {
			t.Parallel()
			gw, _ := l.Node("gw")
			out, err := l.RunAgent(ctx, "gw1", "natpmp-external", "-gw", gw.LAN.Addr().Next().String())
			if err != nil {
				t.Fatal(err)
			}
			var r struct {
				Result uint16
				Epoch  uint32
				Addr   string
			}
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatal(err)
			}
			// miniupnpd took the documentation-prefix WAN address from its
			// STUN test against the probe server (see TestPortMapping).
			if r.Result != 0 || r.Addr != gw.Addrs[0].String() {
				t.Fatalf("NAT-PMP answer %+v, want result 0 and address %v", r, gw.Addrs[0])
			}
		})
		t.Run("UPnPDiscovery", func(t *testing.T) {
			t.Parallel()
			gw, _ := l.Node("gw")
			out, err := l.RunAgent(ctx, "gw1", "ssdp-discover")
			if err != nil {
				t.Fatal(err)
			}
			var r struct{ Location, Description string }
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(r.Location, gw.LAN.Addr().Next().String()) {
				t.Fatalf("SSDP location %q is not on the gateway %v", r.Location, gw.LAN.Addr().Next())
			}
			if !strings.Contains(r.Description, "urn:schemas-upnp-org:device:InternetGatewayDevice:") {
				t.Fatalf("device description is not an IGD: %.300s", r.Description)
			}
			t.Logf("SSDP: IGD description at %s", r.Location)
		})
		t.Run("FullConeMapKeepsInsideEndpoints", func(t *testing.T) {
			t.Parallel()
			// A full-cone host answers a symmetric peer that reached it
			// from a fresh port, i.e. through the learned map (an
			// inbound-initiated flow). The learn rule must not then record
			// the peer as the owner of the public port.
			a, b, err := l.Punch(ctx, "fcone2", "hard1", 1500*time.Millisecond)
			if err != nil || !a.OK || !b.OK {
				t.Fatalf("punch fc↔sym: %+v %+v %v", a, b, err)
			}
			out, err := l.Run(ctx, "fcone", "nft", "list", "map", "ip", "natlab", "pmap")
			if err != nil {
				t.Fatal(err)
			}
			fc, _ := l.Node("fcone")
			vals := regexp.MustCompile(`: (\d+\.\d+\.\d+\.\d+) \. \d+`).FindAllStringSubmatch(out, -1)
			if len(vals) == 0 {
				t.Fatalf("empty learned map:\n%s", out)
			}
			for _, v := range vals {
				if !fc.LAN.Contains(netip.MustParseAddr(v[1])) {
					t.Errorf("learned map points a public port outside the LAN %v:\n%s", fc.LAN, out)
				}
			}
		})
		t.Run("NoPortOverloading", func(t *testing.T) {
			t.Parallel()
			// Two hosts behind one full cone send from the same fixed port
			// (as PC2 nodes do with UDP 39001) to different servers. RFC 4787
			// REQ-3: they must get different public ports, and each must stay
			// reachable from anywhere (EIF) through its own mapping.
			primary, alt, _ := l.ProbeServer()
			altIP := netip.AddrPortFrom(alt.Addr(), primary.Port())
			const port = 39001
			r1, ok1, err1 := l.Query(ctx, "fcone1", natlab.QueryOptions{LocalPort: port, Server: primary})
			r2, ok2, err2 := l.Query(ctx, "fcone2", natlab.QueryOptions{LocalPort: port, Server: altIP})
			if err1 != nil || err2 != nil || !ok1 || !ok2 {
				t.Fatalf("queries: %v %v %v %v", ok1, err1, ok2, err2)
			}
			if r1.Observed == r2.Observed {
				t.Fatalf("both hosts mapped to %v (port overloading)", r1.Observed)
			}
			for _, h := range []string{"fcone1", "fcone2"} {
				// EIF: a reply from the other address and port reaches each.
				_, ok, err := l.Query(ctx, h, natlab.QueryOptions{LocalPort: port, Server: primary, Flags: natlab.FlagChangeIP | natlab.FlagChangePort})
				if err != nil || !ok {
					t.Errorf("%s: unsolicited reply to its mapping not delivered: ok=%v err=%v", h, ok, err)
				}
			}
			t.Logf("fixed port %d: fcone1 → %v, fcone2 → %v", port, r1.Observed, r2.Observed)
		})
		t.Run("HairpinCarriesExternalSource", func(t *testing.T) {
			t.Parallel()
			r, err := l.Classify(ctx, "fcone1", natlab.ProbeTiming{})
			if err != nil {
				t.Fatal(err)
			}
			fc, _ := l.Node("fcone")
			if !r.Hairpin || r.HairpinFrom.Addr() != fc.Addrs[0] {
				t.Fatalf("hairpin=%v from %v, want the router's external address %v (RFC 4787 REQ-9)", r.Hairpin, r.HairpinFrom, fc.Addrs[0])
			}
		})
	})
}
