package portmap

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// PCP (RFC 6887) is written here rather than taken from a library: the MAP
// request and answer are two fixed 60-byte layouts, the Go clients that
// exist are parts of large modules (tailscale.com), and a small strict
// decoder is easy to fuzz.

// PCP wire constants (RFC 6887 §7, §11).
const (
	pcpPort       = 5351
	pcpVersion    = 2
	pcpOpMap      = 1
	pcpMapSize    = 60
	pcpMaxMessage = 1100 // §7: messages are at most 1100 bytes
	protoUDP      = 17
)

// PCPResultError is a PCP answer with a non-zero result code.
type PCPResultError struct{ Code byte }

func (e PCPResultError) Error() string {
	names := map[byte]string{1: "UNSUPP_VERSION", 2: "NOT_AUTHORIZED", 3: "MALFORMED_REQUEST", 4: "UNSUPP_OPCODE",
		5: "UNSUPP_OPTION", 6: "MALFORMED_OPTION", 7: "NETWORK_FAILURE", 8: "NO_RESOURCES", 9: "UNSUPP_PROTOCOL",
		10: "USER_EX_QUOTA", 11: "CANNOT_PROVIDE_EXTERNAL", 12: "ADDRESS_MISMATCH", 13: "EXCESSIVE_REMOTE_PEERS"}
	if n, ok := names[e.Code]; ok {
		return "portmap: pcp result " + n
	}
	return fmt.Sprintf("portmap: pcp result %d", e.Code)
}

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("portmap: malformed answer")

// PCPMap is a MAP request or a decoded MAP answer.
type PCPMap struct {
	Nonce    [12]byte
	Client   netip.Addr // request only: the client's own address
	Internal uint16
	External netip.AddrPort // suggested (request) or assigned (answer)
	Lifetime uint32         // seconds; 0 deletes
	Epoch    uint32         // answer only
}

// AppendPCPMapRequest appends a UDP MAP request (RFC 6887 §11.1).
func AppendPCPMapRequest(b []byte, m PCPMap) []byte {
	var p [pcpMapSize]byte
	p[0], p[1] = pcpVersion, pcpOpMap
	binary.BigEndian.PutUint32(p[4:], m.Lifetime)
	c16 := m.Client.As16() // IPv4-mapped for an IPv4 address, as §5 wants
	copy(p[8:24], c16[:])
	copy(p[24:36], m.Nonce[:])
	p[36] = protoUDP
	binary.BigEndian.PutUint16(p[40:], m.Internal)
	binary.BigEndian.PutUint16(p[42:], m.External.Port())
	ext := netip.AddrFrom4([4]byte{}) // "no preference" for IPv4: ::ffff:0.0.0.0
	if m.External.Addr().IsValid() {
		ext = m.External.Addr()
	}
	e16 := ext.As16()
	copy(p[44:60], e16[:])
	return append(b, p[:]...)
}

// AppendPCPAnnounce appends an ANNOUNCE request (RFC 6887 §14.1): the
// common header alone, opcode 0, lifetime 0.
func AppendPCPAnnounce(b []byte, client netip.Addr) []byte {
	var p [24]byte
	p[0] = pcpVersion
	c16 := client.As16()
	copy(p[8:24], c16[:])
	return append(b, p[:]...)
}

// ParsePCPAnnounceAnswer checks an ANNOUNCE answer: version 2, R bit,
// opcode 0, 24..1100 bytes, a multiple of 4; a non-zero result is a
// PCPResultError (and a NAT-PMP server's "unsupported version" is one too).
func ParsePCPAnnounceAnswer(b []byte) error {
	if len(b) >= 4 && b[0] == 0 && b[1]&0x80 != 0 && binary.BigEndian.Uint16(b[2:]) == 1 {
		return PCPResultError{Code: 1}
	}
	switch {
	case len(b) < 24 || len(b) > pcpMaxMessage || len(b)%4 != 0:
		return fmt.Errorf("%w: pcp answer of %d bytes", ErrMalformed, len(b))
	case b[0] != pcpVersion || b[1] != 0x80:
		return fmt.Errorf("%w: not a pcp ANNOUNCE answer (%#x %#x)", ErrMalformed, b[0], b[1])
	case b[3] != 0:
		return PCPResultError{Code: b[3]}
	}
	return nil
}

// ParsePCPMapAnswer decodes a MAP answer (RFC 6887 §7.2, §11.1). It checks
// the version, the R bit, the opcode, the size (60 bytes plus options, at
// most 1100, a multiple of 4) and, on success, an assigned port and
// address; a non-zero result code is a PCPResultError. A NAT-PMP-only
// gateway answers a PCP request with version 0 and "unsupported version":
// that is PCPResultError{1}.
func ParsePCPMapAnswer(b []byte) (PCPMap, error) {
	if len(b) >= 4 && b[0] == 0 && b[1]&0x80 != 0 && binary.BigEndian.Uint16(b[2:]) == 1 {
		return PCPMap{}, PCPResultError{Code: 1} // NAT-PMP: unsupported version
	}
	switch {
	case len(b) < pcpMapSize || len(b) > pcpMaxMessage || len(b)%4 != 0:
		return PCPMap{}, fmt.Errorf("%w: pcp answer of %d bytes", ErrMalformed, len(b))
	case b[0] != pcpVersion:
		return PCPMap{}, fmt.Errorf("%w: pcp version %d", ErrMalformed, b[0])
	case b[1] != 0x80|pcpOpMap:
		return PCPMap{}, fmt.Errorf("%w: pcp opcode byte %#x, want a MAP answer", ErrMalformed, b[1])
	}
	var m PCPMap
	m.Lifetime = binary.BigEndian.Uint32(b[4:])
	m.Epoch = binary.BigEndian.Uint32(b[8:])
	copy(m.Nonce[:], b[24:36])
	if b[3] != 0 {
		return m, PCPResultError{Code: b[3]}
	}
	if b[36] != protoUDP {
		return PCPMap{}, fmt.Errorf("%w: pcp protocol %d", ErrMalformed, b[36])
	}
	m.Internal = binary.BigEndian.Uint16(b[40:])
	port := binary.BigEndian.Uint16(b[42:])
	ip := netip.AddrFrom16([16]byte(b[44:60])).Unmap()
	if port == 0 && m.Lifetime != 0 {
		return PCPMap{}, fmt.Errorf("%w: pcp answer assigns port 0", ErrMalformed)
	}
	m.External = netip.AddrPortFrom(ip, port)
	return m, nil
}

// pcpClient maps one UDP port through a PCP server.
type pcpClient struct {
	gw, local netip.Addr
	nonce     [12]byte
	port      uint16 // the port to map
	internal  uint16 // 0 until a request was sent
	last      netip.AddrPort
}

func newPCPClient(gw, local netip.Addr, port uint16) *pcpClient {
	c := &pcpClient{gw: gw, local: local, port: port}
	_, _ = rand.Read(c.nonce[:])
	return c
}

func (c *pcpClient) protocol() Protocol { return PCP }

func (c *pcpClient) mapPort(ctx context.Context, internal uint16, lifetime time.Duration) (Mapping, error) {
	c.internal = internal
	ext := c.last
	if !ext.IsValid() {
		ext = netip.AddrPortFrom(netip.Addr{}, internal) // suggest the same port
	}
	ans, err := c.call(ctx, PCPMap{Nonce: c.nonce, Client: c.local, Internal: internal, External: ext,
		Lifetime: uint32(lifetime / time.Second)})
	if err != nil {
		return Mapping{}, err
	}
	c.last = ans.External
	return Mapping{Protocol: PCP, External: ans.External, Internal: netip.AddrPortFrom(c.local, internal),
		Lifetime: time.Duration(ans.Lifetime) * time.Second}, nil
}

// probe sends ANNOUNCE (RFC 6887 §14.1), which any PCP server answers and
// which maps nothing.
func (c *pcpClient) probe(ctx context.Context) error {
	return c.exchange(ctx, AppendPCPAnnounce(nil, c.local), func(b []byte) (bool, error) {
		err := ParsePCPAnnounceAnswer(b)
		var re PCPResultError
		if err != nil && !errors.As(err, &re) {
			return false, nil // not an ANNOUNCE answer
		}
		return true, err
	})
}

func (c *pcpClient) unmap(ctx context.Context) error {
	if c.internal == 0 {
		return nil
	}
	_, err := c.call(ctx, PCPMap{Nonce: c.nonce, Client: c.local, Internal: c.internal, Lifetime: 0})
	return err
}

// call sends a MAP request until its answer comes (250 ms, doubling) or
// ctx ends.
func (c *pcpClient) call(ctx context.Context, req PCPMap) (PCPMap, error) {
	var ans PCPMap
	err := c.exchange(ctx, AppendPCPMapRequest(nil, req), func(b []byte) (bool, error) {
		a, err := ParsePCPMapAnswer(b)
		var re PCPResultError
		switch {
		case errors.As(err, &re) && (re.Code == 1 || a.Nonce == req.Nonce):
			return true, err
		case err != nil || a.Nonce != req.Nonce || a.Internal != req.Internal:
			return false, nil // not ours
		}
		ans = a
		return true, nil
	})
	return ans, err
}

// exchange sends pkt to the gateway's PCP port until done accepts an
// answer (250 ms, doubling) or ctx ends.
func (c *pcpClient) exchange(ctx context.Context, pkt []byte, done func([]byte) (bool, error)) error {
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(c.gw, pcpPort)))
	if err != nil {
		return fmt.Errorf("portmap: pcp: %w", err)
	}
	defer conn.Close()
	buf := make([]byte, pcpMaxMessage+1)
	wait := 250 * time.Millisecond
	for {
		if _, err := conn.Write(pkt); err != nil {
			return fmt.Errorf("portmap: pcp: %w", err)
		}
		deadline := time.Now().Add(wait)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		_ = conn.SetReadDeadline(deadline)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				// Timeout, or an ICMP refusal (no PCP server): either
				// way wait out this round before resending.
				if err := sleepUntil(ctx, deadline); err != nil {
					return fmt.Errorf("portmap: pcp: no answer from %s: %w", c.gw, err)
				}
				break
			}
			if ok, err := done(buf[:n]); ok {
				return err
			}
		}
		wait *= 2
	}
}

// sleepUntil waits until t or ctx's end, whichever is first.
func sleepUntil(ctx context.Context, t time.Time) error {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return ctx.Err()
	}
}
