package fuzz

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/elacity/pc2/transport/portmap"
)

func pcpAnswerSeeds() [][]byte {
	var out [][]byte
	for _, ext := range []string{"203.0.113.10:40001", "[2001:db8::1]:1"} {
		b := portmap.AppendPCPMapRequest(nil, portmap.PCPMap{Nonce: [12]byte{9, 9}, Client: netip.MustParseAddr("10.0.1.2"),
			Internal: 40001, External: netip.MustParseAddrPort(ext), Lifetime: 7200})
		b[1] |= 0x80
		out = append(out, b)
		e := bytes.Clone(b)
		e[3] = 8 // NO_RESOURCES
		out = append(out, e)
		out = append(out, append(bytes.Clone(b), 0, 0, 0, 0)) // an option's worth
	}
	out = append(out, []byte{0, 0x81, 0, 1, 0, 0, 0, 0}) // NAT-PMP "unsupported version"
	ann := portmap.AppendPCPAnnounce(nil, netip.MustParseAddr("10.0.1.2"))
	ann[1] = 0x80 // an ANNOUNCE answer
	out = append(out, ann)
	return out
}

func TestPortmapSeedCorpus(t *testing.T) {
	writeOwnSeeds(t, "FuzzPCPAnswer", pcpAnswerSeeds())
	writeOwnSeeds(t, "FuzzSSDPAnswer", ssdpAnswerSeeds())
}

// FuzzPCPAnswer checks the PCP answer decoders. ANNOUNCE: typed errors, a
// success only for a well-formed version-2 ANNOUNCE answer. MAP: no panic; a success
// comes only from a 60..1100-byte, 4-aligned version-2 MAP answer and has a
// non-zero port unless it is a deletion (lifetime 0); re-encoding the
// decoded fields as a request gives back the answer's nonce, internal port
// and external address bytes (the layout is symmetric).
func FuzzPCPAnswer(f *testing.F) {
	for _, s := range pcpAnswerSeeds() {
		f.Add(s)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var re portmap.PCPResultError
		if err := portmap.ParsePCPAnnounceAnswer(b); err != nil {
			if !errors.Is(err, portmap.ErrMalformed) && !errors.As(err, &re) {
				t.Fatalf("ANNOUNCE: untyped error %v", err)
			}
		} else if len(b) < 24 || len(b) > 1100 || len(b)%4 != 0 || b[0] != 2 || b[1] != 0x80 || b[3] != 0 {
			t.Fatalf("accepted %d bytes as an ANNOUNCE answer", len(b))
		}
		m, err := portmap.ParsePCPMapAnswer(b)
		if err != nil {
			if !errors.Is(err, portmap.ErrMalformed) && !errors.As(err, &re) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if len(b) < 60 || len(b) > 1100 || len(b)%4 != 0 || b[0] != 2 || b[1] != 0x81 || b[3] != 0 {
			t.Fatalf("accepted %d bytes %x", len(b), b[:min(len(b), 4)])
		}
		if m.External.Port() == 0 && m.Lifetime != 0 {
			t.Fatalf("accepted port 0 with lifetime %d", m.Lifetime)
		}
		req := portmap.AppendPCPMapRequest(nil, portmap.PCPMap{Nonce: m.Nonce, Internal: m.Internal, External: m.External})
		if !bytes.Equal(req[24:36], b[24:36]) || !bytes.Equal(req[40:44], b[40:44]) {
			t.Fatalf("fields do not round-trip: %x vs %x", req[24:60], b[24:60])
		}
		if m.External.Addr().Is4() != bytes.Equal(b[44:56], []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}) {
			t.Fatalf("address family of %s wrong for %x", m.External, b[44:60])
		}
	})
}

func ssdpAnswerSeeds() [][]byte {
	return [][]byte{
		[]byte("HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: http://10.0.1.1:40000/rootDesc.xml\r\n\r\n"),
		[]byte("HTTP/1.1 200 OK\r\nLocation: http://10.0.1.9/x\r\n\r\n"),
		[]byte("HTTP/1.1 404 Not Found\r\n\r\n"),
		[]byte("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n\r\n"),
	}
}

// FuzzSSDPAnswer checks the SSDP answer decoder: no panic, typed errors,
// and an accepted LOCATION is always an http URL on the gateway itself.
func FuzzSSDPAnswer(f *testing.F) {
	for _, s := range ssdpAnswerSeeds() {
		f.Add(s)
	}
	gw := netip.MustParseAddr("10.0.1.1")
	f.Fuzz(func(t *testing.T, b []byte) {
		loc, err := portmap.ParseSSDPAnswer(b, gw)
		if err != nil {
			if !errors.Is(err, portmap.ErrMalformed) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if loc.Scheme != "http" || loc.Hostname() != "10.0.1.1" || len(b) > 2048 {
			t.Fatalf("accepted location %q from %d bytes", loc, len(b))
		}
	})
}
