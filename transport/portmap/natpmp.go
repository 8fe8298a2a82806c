package portmap

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	natpmp "github.com/jackpal/go-nat-pmp"
)

// natpmpClient maps one UDP port with NAT-PMP (RFC 6886) through
// github.com/jackpal/go-nat-pmp. That library takes a timeout, not a
// context: each call gets the time left in ctx (at most 2 s).
type natpmpClient struct {
	gw, local netip.Addr
	internal  uint16 // 0 until a mapping was asked for
	last      uint16
}

func (c *natpmpClient) protocol() Protocol { return NATPMP }

func (c *natpmpClient) client(ctx context.Context) (*natpmp.Client, error) {
	timeout := 2 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	if timeout <= 0 || ctx.Err() != nil {
		return nil, fmt.Errorf("portmap: nat-pmp: %w", context.DeadlineExceeded)
	}
	return natpmp.NewClientWithTimeout(c.gw.AsSlice(), timeout), nil
}

func (c *natpmpClient) mapPort(ctx context.Context, internal uint16, lifetime time.Duration) (Mapping, error) {
	cl, err := c.client(ctx)
	if err != nil {
		return Mapping{}, err
	}
	ext, err := cl.GetExternalAddress()
	if err != nil {
		return Mapping{}, fmt.Errorf("portmap: nat-pmp external address: %w", err)
	}
	want := c.last
	if want == 0 {
		want = internal
	}
	c.internal = internal
	if cl, err = c.client(ctx); err != nil {
		return Mapping{}, err
	}
	r, err := cl.AddPortMapping("udp", int(internal), int(want), int(lifetime/time.Second))
	if err != nil {
		return Mapping{}, fmt.Errorf("portmap: nat-pmp map: %w", err)
	}
	if r.MappedExternalPort == 0 || r.InternalPort != internal {
		return Mapping{}, fmt.Errorf("%w: nat-pmp mapped port %d for internal %d", ErrMalformed, r.MappedExternalPort, r.InternalPort)
	}
	c.last = r.MappedExternalPort
	return Mapping{Protocol: NATPMP,
		External: netip.AddrPortFrom(netip.AddrFrom4(ext.ExternalIPAddress), r.MappedExternalPort),
		Internal: netip.AddrPortFrom(c.local, internal),
		Lifetime: time.Duration(r.PortMappingLifetimeInSeconds) * time.Second}, nil
}

// probe asks for the public address, which maps nothing.
func (c *natpmpClient) probe(ctx context.Context) error {
	cl, err := c.client(ctx)
	if err != nil {
		return err
	}
	if _, err := cl.GetExternalAddress(); err != nil {
		return fmt.Errorf("portmap: nat-pmp: %w", err)
	}
	return nil
}

func (c *natpmpClient) unmap(ctx context.Context) error {
	if c.internal == 0 {
		return nil
	}
	cl, err := c.client(ctx)
	if err != nil {
		return err
	}
	// RFC 6886 §3.4: lifetime 0 and suggested external port 0 delete.
	if _, err := cl.AddPortMapping("udp", int(c.internal), 0, 0); err != nil {
		return fmt.Errorf("portmap: nat-pmp unmap: %w", err)
	}
	return nil
}
