package portmap

import (
	"bufio"
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestPCPRoundTrip(t *testing.T) {
	req := PCPMap{Nonce: [12]byte{1, 2, 3}, Client: netip.MustParseAddr("10.0.1.2"), Internal: 39001,
		External: netip.MustParseAddrPort("0.0.0.0:39001"), Lifetime: 7200}
	b := AppendPCPMapRequest(nil, req)
	if len(b) != pcpMapSize || b[0] != 2 || b[1] != 1 {
		t.Fatalf("request %x", b)
	}
	// The client address is IPv4-mapped (RFC 6887 §5).
	if !bytes.Equal(b[8:24], []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 1, 2}) {
		t.Fatalf("client address field %x", b[8:24])
	}
	// A server's answer: the same layout with R set, result 0, epoch, the
	// assigned port and address.
	ans := bytes.Clone(b)
	ans[1] |= 0x80
	ans[3] = 0
	copy(ans[8:24], make([]byte, 16))
	ans[11] = 42 // epoch
	ans[42], ans[43] = 0x9c, 0x3f
	copy(ans[44:60], netip.MustParseAddr("::ffff:203.0.113.10").AsSlice())
	m, err := ParsePCPMapAnswer(ans)
	if err != nil {
		t.Fatal(err)
	}
	if m.Nonce != req.Nonce || m.Internal != 39001 || m.External != netip.MustParseAddrPort("203.0.113.10:39999") ||
		m.Lifetime != 7200 || m.Epoch != 42 {
		t.Fatalf("parsed %+v", m)
	}
	ans[3] = 8
	var re PCPResultError
	if _, err := ParsePCPMapAnswer(ans); !errors.As(err, &re) || re.Code != 8 || !strings.Contains(err.Error(), "NO_RESOURCES") {
		t.Fatalf("result 8: %v", err)
	}
	// A NAT-PMP gateway's "unsupported version" answer to a PCP request.
	if _, err := ParsePCPMapAnswer([]byte{0, 0x81, 0, 1, 0, 0, 0, 0}); !errors.As(err, &re) || re.Code != 1 {
		t.Fatalf("nat-pmp answer: %v", err)
	}
	for _, bad := range [][]byte{nil, ans[:59], append(bytes.Clone(ans), 1), b /* a request */} {
		if _, err := ParsePCPMapAnswer(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("%d bytes: %v, want ErrMalformed", len(bad), err)
		}
	}
}

func TestPCPAnnounce(t *testing.T) {
	b := AppendPCPAnnounce(nil, netip.MustParseAddr("10.0.1.2"))
	if len(b) != 24 || b[0] != 2 || b[1] != 0 {
		t.Fatalf("announce %x", b)
	}
	ans := bytes.Clone(b)
	ans[1] = 0x80
	if err := ParsePCPAnnounceAnswer(ans); err != nil {
		t.Fatal(err)
	}
	ans[3] = 2
	var re PCPResultError
	if err := ParsePCPAnnounceAnswer(ans); !errors.As(err, &re) || re.Code != 2 {
		t.Fatalf("result 2: %v", err)
	}
	if err := ParsePCPAnnounceAnswer(b); !errors.Is(err, ErrMalformed) {
		t.Fatalf("a request accepted as an answer: %v", err)
	}
}

func TestParseRoutes(t *testing.T) {
	const table = `Iface	Destination	Gateway 	Flags	RefCnt	Use	Metric	Mask		MTU	Window	IRTT
eth0	000200C0	00000000	0001	0	0	0	00FFFFFF	0	0	0
eth0	00000000	010200C0	0003	0	0	0	00000000	0	0	0
`
	gw, err := parseRoutes(bufio.NewScanner(strings.NewReader(table)))
	if err != nil || gw != netip.MustParseAddr("192.0.2.1") {
		t.Fatalf("gateway %s %v", gw, err)
	}
	if _, err := parseRoutes(bufio.NewScanner(strings.NewReader(table[:120]))); err == nil {
		t.Fatal("found a gateway in a table without a default route")
	}
}

func BenchmarkParsePCPMapAnswer(b *testing.B) {
	ans := AppendPCPMapRequest(nil, PCPMap{Internal: 1, External: netip.MustParseAddrPort("203.0.113.1:2"), Lifetime: 1})
	ans[1] |= 0x80
	b.ReportAllocs()
	for range b.N {
		if _, err := ParsePCPMapAnswer(ans); err != nil {
			b.Fatal(err)
		}
	}
}

func TestParseSSDPAnswer(t *testing.T) {
	gw := netip.MustParseAddr("10.0.1.1")
	ok := "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n" +
		"USN: uuid:x::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: http://10.0.1.1:40000/rootDesc.xml\r\n\r\n"
	loc, err := ParseSSDPAnswer([]byte(ok), gw)
	if err != nil || loc.String() != "http://10.0.1.1:40000/rootDesc.xml" {
		t.Fatalf("%v %v", loc, err)
	}
	for name, bad := range map[string]string{
		"other host":  strings.Replace(ok, "10.0.1.1:40000", "10.0.1.9:40000", 1),
		"name":        strings.Replace(ok, "10.0.1.1:40000", "router.lan:40000", 1),
		"https":       strings.Replace(ok, "http://", "file://", 1),
		"status":      strings.Replace(ok, "200 OK", "404 Not Found", 1),
		"no location": strings.Replace(ok, "LOCATION", "X-LOC", 1),
		"garbage":     "NOTIFY * HTTP/1.1\r\n",
		"huge":        ok + strings.Repeat("x", 4096),
	} {
		if _, err := ParseSSDPAnswer([]byte(bad), gw); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}
