package natlab

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

// changeRequest is the CHANGE-REQUEST attribute (RFC 5780 §7.2).
type changeRequest uint32

func (c changeRequest) AddTo(m *stun.Message) error {
	m.Add(stun.AttrChangeRequest, []byte{0, 0, 0, byte(c)})
	return nil
}

func bindingRequest(t testing.TB, setters ...stun.Setter) *stun.Message {
	t.Helper()
	m, err := stun.Build(append([]stun.Setter{stun.TransactionID, stun.BindingRequest}, setters...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestProbeServerSTUN runs miniupnpd's external-address test against a
// loopback probe server: four Binding requests (no change, change port,
// change IP, change both) from four sockets, each answered from the right
// server endpoint with the client's own address.
func TestProbeServerSTUN(t *testing.T) {
	primary, alt := loopbackServer(t)
	for _, tc := range []struct {
		change changeRequest
		from   netip.AddrPort
	}{
		{0, primary},
		{0x2, netip.AddrPortFrom(primary.Addr(), alt.Port())},
		{0x4, netip.AddrPortFrom(alt.Addr(), primary.Port())},
		{0x6, alt},
	} {
		c, err := listenUDP()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		req := bindingRequest(t, tc.change, stun.Fingerprint)
		resp, from := stunRoundTrip(t, c, primary, req.Raw, 5)
		if resp == nil {
			t.Fatalf("change %#x: no answer", tc.change)
		}
		if from != tc.from {
			t.Errorf("change %#x: answered from %v, want %v", tc.change, from, tc.from)
		}
		m := &stun.Message{Raw: resp}
		if err := m.Decode(); err != nil || m.Type != stun.BindingSuccess || m.TransactionID != req.TransactionID {
			t.Fatalf("change %#x: answer %v %v", tc.change, m, err)
		}
		var xa stun.XORMappedAddress
		if err := xa.GetFrom(m); err != nil {
			t.Fatal(err)
		}
		local := c.LocalAddr().(*net.UDPAddr).AddrPort()
		if !xa.IP.Equal(net.IPv4(127, 0, 0, 1)) || xa.Port != int(local.Port()) {
			t.Errorf("change %#x: XOR-MAPPED-ADDRESS %v, want 127.0.0.1:%d", tc.change, xa, local.Port())
		}
	}
	// A rejected request gets no answer.
	c, err := listenUDP()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if resp, _ := stunRoundTrip(t, c, primary, append(bindingRequest(t).Raw, 0, 0, 0, 0), 1); resp != nil {
		t.Errorf("answered a request with trailing bytes: %x", resp)
	}
}

func stunRoundTrip(t *testing.T, c *net.UDPConn, dst netip.AddrPort, req []byte, tries int) ([]byte, netip.AddrPort) {
	t.Helper()
	buf := make([]byte, 1500)
	for range tries {
		if _, err := c.WriteToUDPAddrPort(req, dst); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err == nil {
			return buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		}
	}
	return nil, netip.AddrPort{}
}

func TestAnswerSTUN(t *testing.T) {
	obs := netip.MustParseAddrPort("203.0.113.10:40000")
	ok := []struct {
		name  string
		req   []byte
		flags Flags
	}{
		{"plain", bindingRequest(t).Raw, 0},
		{"change ip+port", bindingRequest(t, changeRequest(0x6)).Raw, FlagChangeIP | FlagChangePort},
		{"software, fingerprint", bindingRequest(t, stun.NewSoftware("x"), changeRequest(0x2), stun.Fingerprint).Raw, FlagChangePort},
	}
	for _, tc := range ok {
		resp, fl, err := AnswerSTUN(tc.req, obs, nil)
		if err != nil || fl != tc.flags || len(resp) != 32 {
			t.Errorf("%s: %d-byte answer, flags %v, err %v; want 32 bytes, flags %v", tc.name, len(resp), fl, err, tc.flags)
		}
	}
	fp := bindingRequest(t, stun.Fingerprint).Raw
	fp[len(fp)-1] ^= 1
	indication, err := stun.Build(stun.TransactionID, stun.NewType(stun.MethodBinding, stun.ClassIndication))
	if err != nil {
		t.Fatal(err)
	}
	bad := map[string][]byte{
		"empty":                   nil,
		"short":                   bindingRequest(t).Raw[:19],
		"trailing bytes":          append(bindingRequest(t).Raw, 0, 0, 0, 0),
		"bad fingerprint":         fp,
		"fingerprint not last":    bindingRequest(t, stun.Fingerprint, stun.NewSoftware("x")).Raw,
		"indication":              indication.Raw,
		"username (required)":     bindingRequest(t, stun.NewUsername("u")).Raw,
		"unknown change bits":     bindingRequest(t, changeRequest(0x1)).Raw,
		"two change requests":     bindingRequest(t, changeRequest(0x2), changeRequest(0x4)).Raw,
		"probe protocol request":  make([]byte, MsgSizeProbe),
		"oversized (padding)":     bindingRequest(t, rawAttr{stun.AttrPadding, make([]byte, MaxSTUNRequest)}).Raw,
		"odd change-request size": bindingRequest(t, rawAttr{stun.AttrChangeRequest, []byte{0, 0, 4}}).Raw,
	}
	for name, req := range bad {
		if resp, _, err := AnswerSTUN(req, obs, nil); !errors.Is(err, ErrSTUNRejected) || resp != nil {
			t.Errorf("%s: answered %x (err %v)", name, resp, err)
		}
	}
}

// TestAnswerSTUNAllocs bounds AnswerSTUN's allocations on the worst inputs:
// a MaxSTUNRequest-byte request of 132 empty attributes (accepted, ignored),
// the same ending in a FINGERPRINT, and a 64 KiB datagram.
func TestAnswerSTUNAllocs(t *testing.T) {
	many := func(fingerprint bool) []byte {
		n := (MaxSTUNRequest - stunHeaderSize) / 4
		if fingerprint {
			n -= 2
		}
		setters := []stun.Setter{}
		for range n {
			setters = append(setters, rawAttr{stun.AttrSoftware, nil})
		}
		if fingerprint {
			setters = append(setters, stun.Fingerprint)
		}
		return bindingRequest(t, setters...).Raw
	}
	huge := append(bindingRequest(t).Raw, make([]byte, 64<<10)...)
	for name, req := range map[string][]byte{"132 attributes": many(false), "130 + fingerprint": many(true), "64 KiB": huge} {
		if name != "64 KiB" && len(req) != MaxSTUNRequest {
			t.Fatalf("%s: %d bytes, want %d", name, len(req), MaxSTUNRequest)
		}
		for _, obs := range []netip.AddrPort{netip.MustParseAddrPort("203.0.113.10:1"), netip.MustParseAddrPort("[2001:db8::1]:1")} {
			_, _, err := AnswerSTUN(req, obs, nil)
			if (err == nil) != (name != "64 KiB") {
				t.Fatalf("%s: err %v", name, err)
			}
			buf := make([]byte, 0, 64)
			if a := testing.AllocsPerRun(20, func() { _, _, _ = AnswerSTUN(req, obs, buf) }); a > 16 {
				t.Errorf("%s from %v: %.0f allocations, want ≤ 16", name, obs, a)
			} else {
				t.Logf("%s from %v: %.0f allocations", name, obs, a)
			}
		}
	}
}

type rawAttr struct {
	t stun.AttrType
	v []byte
}

func (a rawAttr) AddTo(m *stun.Message) error { m.Add(a.t, a.v); return nil }

func BenchmarkAnswerSTUN(b *testing.B) {
	req := bindingRequest(b, changeRequest(0x6), stun.Fingerprint).Raw
	obs := netip.MustParseAddrPort("203.0.113.10:40000")
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := AnswerSTUN(req, obs, buf); err != nil {
			b.Fatal(err)
		}
	}
}
