package message

import (
	"fmt"
	"net/netip"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/internal/cbor"
	"github.com/elacity/pc2/dht/record"
)

// NodeInfo is a node in a lookup response: its id and an IPv4 and/or IPv6
// address. On the wire it is an array [id, ip, port] or, in 3.x,
// [id, ip4, port4, ip6, port6]; ip is a 4- or 16-byte string (an
// IPv4-mapped IPv6 address counts as IPv4, as in Java).
type NodeInfo struct {
	ID    identity.ID
	Addr4 netip.AddrPort // invalid when absent
	Addr6 netip.AddrPort // invalid when absent
}

// Addr returns the address of the given family, preferring IPv6 when ipv6.
func (n *NodeInfo) Addr(ipv6 bool) netip.AddrPort {
	if ipv6 {
		return n.Addr6
	}
	return n.Addr4
}

func appendAddr(b []byte, a netip.AddrPort) []byte {
	ip := a.Addr()
	if ip.Is4() {
		v := ip.As4()
		b = cbor.AppendBytes(b, v[:])
	} else {
		v := ip.As16()
		b = cbor.AppendBytes(b, v[:])
	}
	return cbor.AppendUint(b, uint64(a.Port()))
}

// appendNode writes one node entry. The v3 form carries every address the
// node has (IPv4 first, as Java does); v2 knows only triples, so it carries
// the address of the list's family, or the other one if that is all there is.
func appendNode(b []byte, n *NodeInfo, d Dialect, ipv6List bool) ([]byte, error) {
	if !n.Addr4.IsValid() && !n.Addr6.IsValid() {
		return b, fmt.Errorf("%w: node %s has no address", ErrEncode, n.ID)
	}
	b = cbor.AppendArrayStart(b)
	b = cbor.AppendBytes(b, n.ID[:])
	if d == V2 {
		a := n.Addr(ipv6List)
		if !a.IsValid() {
			a = n.Addr(!ipv6List)
		}
		b = appendAddr(b, a)
	} else {
		if n.Addr4.IsValid() {
			b = appendAddr(b, n.Addr4)
		}
		if n.Addr6.IsValid() {
			b = appendAddr(b, n.Addr6)
		}
	}
	return cbor.AppendBreak(b), nil
}

func appendNodes(b []byte, key string, nodes []NodeInfo, d Dialect, ipv6List bool) ([]byte, error) {
	if len(nodes) == 0 {
		return b, nil
	}
	b = cbor.AppendText(b, key)
	if d == V2 {
		b = cbor.AppendArrayStart(b) // v2 Java streams lists without a size
	} else {
		b = cbor.AppendArrayHeader(b, len(nodes))
	}
	var err error
	for i := range nodes {
		if b, err = appendNode(b, &nodes[i], d, ipv6List); err != nil {
			return b, err
		}
	}
	if d == V2 {
		b = cbor.AppendBreak(b)
	}
	return b, nil
}

// readNodes appends the node entries of a list to dst.
func readNodes(r *cbor.Reader, dst []NodeInfo) ([]NodeInfo, error) {
	c, err := r.EnterArray()
	if err != nil {
		return dst, err
	}
	for n := 0; ; n++ {
		more, err := r.Next(&c)
		if err != nil {
			return dst, err
		}
		if !more {
			return dst, nil
		}
		if n == maxNodesPerList {
			return dst, fmt.Errorf("%w: more than %d nodes in a list", ErrMalformed, maxNodesPerList)
		}
		dst = append(dst, NodeInfo{})
		if err := readNode(r, &dst[len(dst)-1]); err != nil {
			return dst, fmt.Errorf("node %d: %w", n, err)
		}
	}
}

func readNode(r *cbor.Reader, n *NodeInfo) error {
	c, err := r.EnterArray()
	if err != nil {
		return err
	}
	if more, err := r.Next(&c); err != nil || !more {
		return fmt.Errorf("%w: empty node entry", ErrMalformed)
	}
	if n.ID, err = record.ReadID(r, "node id"); err != nil {
		return err
	}
	for {
		more, err := r.Next(&c)
		if err != nil {
			return err
		}
		if !more {
			break
		}
		ip, err := readIP(r)
		if err != nil {
			return err
		}
		if more, err = r.Next(&c); err != nil {
			return err
		}
		if !more {
			return fmt.Errorf("%w: node address without port", ErrMalformed)
		}
		var port uint64
		if !r.PeekNull() { // Java reads a null port as 0
			if port, err = r.ReadUint(); err != nil {
				return fmt.Errorf("node port: %w", err)
			}
			if port > 0xffff {
				return fmt.Errorf("%w: node port %d", ErrMalformed, port)
			}
		}
		ap := netip.AddrPortFrom(ip, uint16(port))
		if ip.Is4() {
			if n.Addr4.IsValid() {
				return fmt.Errorf("%w: two IPv4 addresses for one node", ErrMalformed)
			}
			n.Addr4 = ap
		} else {
			if n.Addr6.IsValid() {
				return fmt.Errorf("%w: two IPv6 addresses for one node", ErrMalformed)
			}
			n.Addr6 = ap
		}
	}
	if !n.Addr4.IsValid() && !n.Addr6.IsValid() {
		return fmt.Errorf("%w: node without address", ErrMalformed)
	}
	return nil
}

// readIP reads a binary address, or a textual IP literal (Java writes a
// hostname when it never resolved one; we do not resolve names while
// decoding, so a name that is not a literal is an error).
func readIP(r *cbor.Reader) (netip.Addr, error) {
	s, text, err := r.ReadBytesOrText()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("node address: %w", err)
	}
	if text {
		ip, err := netip.ParseAddr(string(s))
		if err != nil || ip.Zone() != "" {
			return netip.Addr{}, fmt.Errorf("%w: node host %q is not an IP address", ErrMalformed, s)
		}
		return ip.Unmap(), nil
	}
	ip, ok := netip.AddrFromSlice(s)
	if !ok {
		return netip.Addr{}, fmt.Errorf("%w: node address is %d bytes", ErrMalformed, len(s))
	}
	return ip.Unmap(), nil
}
