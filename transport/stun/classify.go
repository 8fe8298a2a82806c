package stun

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Mapping is a NAT's mapping behaviour (RFC 4787 §4.1).
type Mapping string

// Mapping behaviours. NotPortDependent is all a server with one address can
// tell: the mapping does not change with the destination port, but it may
// still change with the destination address.
const (
	MappingUnknown   Mapping = "unknown"
	NoNAT            Mapping = "none" // the mapped address is the local one
	EIM              Mapping = "EIM"  // endpoint-independent
	ADM              Mapping = "ADM"  // address-dependent
	APDM             Mapping = "APDM" // address-and-port-dependent
	NotPortDependent Mapping = "EIM|ADM"
)

// Filtering is a NAT's filtering behaviour (RFC 4787 §5).
type Filtering string

// Filtering behaviours; NotPortFiltered is what one server address can tell.
const (
	FilteringUnknown Filtering = "unknown"
	EIF              Filtering = "EIF"  // endpoint-independent
	ADF              Filtering = "ADF"  // address-dependent
	APDF             Filtering = "APDF" // address-and-port-dependent
	NotPortFiltered  Filtering = "EIF|ADF"
)

// Result is what Classify found.
type Result struct {
	// Mapped is the reflexive address of the mapping client's socket.
	Mapped    netip.AddrPort
	Mapping   Mapping
	Filtering Filtering
	// Server addresses used: the primary, and OTHER-ADDRESS (zero if the
	// server does not do RFC 5780).
	Server, Other netip.AddrPort
	// Notes say what could not be tested and why.
	Notes []string
}

// Hard reports whether the mapping depends on the destination ("hard NAT":
// a peer cannot reach the address the server saw).
func (r Result) Hard() bool { return r.Mapping == ADM || r.Mapping == APDM }

func (r Result) String() string {
	s := fmt.Sprintf("mapped %s mapping %s filtering %s", r.Mapped, r.Mapping, r.Filtering)
	if len(r.Notes) > 0 {
		s += " (" + strings.Join(r.Notes, "; ") + ")"
	}
	return s
}

// Binder runs one Binding transaction: *Client is one.
type Binder interface {
	Binding(ctx context.Context, server netip.AddrPort, change Change) (Answer, error)
}

// Classify runs the RFC 5780 §4.3 mapping tests with mapping (the socket
// whose mapping matters: the node's shared socket) and the §4.4 filtering
// tests with filtering, which must be a socket that has not talked to the
// server's other addresses yet (the mapping tests open the filter towards
// them), or nil to skip them. local is the mapping socket's local address,
// to tell "no NAT".
//
// A server with one address (OTHER-ADDRESS on the same IP, another port)
// supports only the port tests: the results are then NotPortDependent or
// APDM, NotPortFiltered or APDF. A server without OTHER-ADDRESS (a plain
// STUN server) gives only the mapped address.
func Classify(ctx context.Context, mapping, filtering Binder, server, local netip.AddrPort) (Result, error) {
	res := Result{Mapping: MappingUnknown, Filtering: FilteringUnknown, Server: server}
	a1, err := mapping.Binding(ctx, server, 0)
	if err != nil {
		return res, fmt.Errorf("stun: mapping test I: %w", err)
	}
	if a1.ErrorCode != 0 {
		return res, fmt.Errorf("stun: mapping test I: server answered error %d", a1.ErrorCode)
	}
	res.Mapped, res.Other = a1.Mapped, a1.Other
	oneAddr := false
	switch {
	case !a1.Other.IsValid():
		res.Notes = append(res.Notes, "server has no OTHER-ADDRESS (no RFC 5780): only the mapped address is known")
		if isLocal(a1.Mapped, local) {
			res.Mapping = NoNAT
		}
		return res, nil
	case a1.Other.Addr() == server.Addr() || (a1.Origin.IsValid() && a1.Other.Addr() == a1.Origin.Addr()):
		oneAddr = true
		res.Notes = append(res.Notes, "server has one address: address dependence not tested")
	}

	// Mapping (RFC 5780 §4.3).
	switch {
	case isLocal(a1.Mapped, local):
		res.Mapping = NoNAT
	case oneAddr:
		a2, err := bind(ctx, mapping, netip.AddrPortFrom(server.Addr(), a1.Other.Port()), 0)
		if err != nil {
			return res, fmt.Errorf("stun: mapping test (other port): %w", err)
		}
		res.Mapping = NotPortDependent
		if a2.Mapped != a1.Mapped {
			res.Mapping = APDM
		}
	default:
		a2, err := bind(ctx, mapping, netip.AddrPortFrom(a1.Other.Addr(), server.Port()), 0)
		if err != nil {
			return res, fmt.Errorf("stun: mapping test II: %w", err)
		}
		if a2.Mapped == a1.Mapped {
			res.Mapping = EIM
			break
		}
		a3, err := bind(ctx, mapping, a1.Other, 0)
		if err != nil {
			return res, fmt.Errorf("stun: mapping test III: %w", err)
		}
		res.Mapping = APDM
		if a3.Mapped == a2.Mapped {
			res.Mapping = ADM
		}
	}

	// Filtering (RFC 5780 §4.4), on a socket that has only talked to the
	// primary address.
	if filtering == nil {
		res.Notes = append(res.Notes, "filtering not tested")
		return res, nil
	}
	if _, err := bind(ctx, filtering, server, 0); err != nil {
		return res, fmt.Errorf("stun: filtering test I: %w", err)
	}
	if !oneAddr {
		got, err := answered(ctx, filtering, server, ChangeIP|ChangePort)
		if err != nil {
			return res, fmt.Errorf("stun: filtering test II: %w", err)
		}
		if got {
			res.Filtering = EIF
			return res, nil
		}
	}
	got, err := answered(ctx, filtering, server, ChangePort)
	if err != nil {
		return res, fmt.Errorf("stun: filtering test III: %w", err)
	}
	switch {
	case !got:
		res.Filtering = APDF
	case oneAddr:
		res.Filtering = NotPortFiltered
	default:
		res.Filtering = ADF
	}
	return res, nil
}

// bind is one transaction that must succeed.
func bind(ctx context.Context, b Binder, to netip.AddrPort, change Change) (Answer, error) {
	a, err := b.Binding(ctx, to, change)
	if err != nil {
		return a, err
	}
	if a.ErrorCode != 0 {
		return a, fmt.Errorf("server %s answered error %d", to, a.ErrorCode)
	}
	return a, nil
}

// answered runs a change test: a timeout means filtered.
func answered(ctx context.Context, b Binder, to netip.AddrPort, change Change) (bool, error) {
	_, err := bind(ctx, b, to, change)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, ErrTimeout):
		return false, nil
	default:
		return false, err
	}
}

// isLocal reports whether mapped is the socket's own address: the same port
// and either local's address or one of this host's interface addresses.
func isLocal(mapped, local netip.AddrPort) bool {
	if !local.IsValid() || mapped.Port() != local.Port() {
		return false
	}
	if !local.Addr().IsUnspecified() {
		return mapped.Addr() == local.Addr().Unmap()
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Unmap() == mapped.Addr() {
			return true
		}
	}
	return false
}
