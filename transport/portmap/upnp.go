package portmap

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/huin/goupnp"
	"github.com/huin/goupnp/dcps/internetgateway2"
)

// igd is the part of a UPnP WANIPConnection / WANPPPConnection service a
// mapping needs; the generated goupnp clients of each version have it.
type igd interface {
	AddPortMappingCtx(ctx context.Context, remoteHost string, externalPort uint16, protocol string,
		internalPort uint16, internalClient string, enabled bool, description string, lease uint32) error
	DeletePortMappingCtx(ctx context.Context, remoteHost string, externalPort uint16, protocol string) error
	GetExternalIPAddressCtx(ctx context.Context) (string, error)
}

// upnpClient maps one UDP port through a UPnP IGD found by SSDP (ssdp.go)
// and driven with github.com/huin/goupnp. Only a device served from the
// gateway is used: another LAN host answering SSDP cannot capture the
// mapping.
type upnpClient struct {
	gw, local netip.Addr
	dev       igd
	last      uint16 // the external port held
}

func (c *upnpClient) protocol() Protocol { return UPnP }

// discover finds the gateway's IGD by SSDP and picks the first of the
// usual WAN connection services its description lists. The description is
// fetched by goupnp within ctx (which bounds its time; its size is not
// bounded separately: it comes from the gateway itself).
func (c *upnpClient) discover(ctx context.Context) (igd, error) {
	loc, err := ssdpSearch(ctx, c.gw, c.local)
	if err != nil {
		return nil, fmt.Errorf("portmap: upnp: no internet gateway device on %s: %w", c.gw, err)
	}
	root, err := goupnp.DeviceByURLCtx(ctx, loc)
	if err != nil {
		return nil, fmt.Errorf("portmap: upnp: device description %s: %w", loc, err)
	}
	if cs, err := internetgateway2.NewWANIPConnection2ClientsFromRootDevice(root, loc); err == nil && len(cs) > 0 {
		return cs[0], nil
	}
	if cs, err := internetgateway2.NewWANIPConnection1ClientsFromRootDevice(root, loc); err == nil && len(cs) > 0 {
		return cs[0], nil
	}
	if cs, err := internetgateway2.NewWANPPPConnection1ClientsFromRootDevice(root, loc); err == nil && len(cs) > 0 {
		return cs[0], nil
	}
	return nil, errors.New("portmap: upnp: the gateway's device has no WAN connection service")
}

// probe finds the gateway's IGD (kept for mapPort).
func (c *upnpClient) probe(ctx context.Context) error {
	dev, err := c.discover(ctx)
	if err != nil {
		return err
	}
	c.dev = dev
	return nil
}

func (c *upnpClient) mapPort(ctx context.Context, internal uint16, lifetime time.Duration) (Mapping, error) {
	if c.dev == nil {
		dev, err := c.discover(ctx)
		if err != nil {
			return Mapping{}, err
		}
		c.dev = dev
	}
	s, err := c.dev.GetExternalIPAddressCtx(ctx)
	if err != nil {
		return Mapping{}, fmt.Errorf("portmap: upnp external address: %w", err)
	}
	ext, err := netip.ParseAddr(s)
	if err != nil {
		return Mapping{}, fmt.Errorf("%w: upnp external address %q", ErrMalformed, s)
	}
	want := c.last
	if want == 0 {
		want = internal
	}
	err = c.dev.AddPortMappingCtx(ctx, "", want, "UDP", internal, c.local.String(), true, "pc2", uint32(lifetime/time.Second))
	if err != nil {
		return Mapping{}, fmt.Errorf("portmap: upnp map %d: %w", want, err)
	}
	c.last = want
	return Mapping{Protocol: UPnP, External: netip.AddrPortFrom(ext.Unmap(), want),
		Internal: netip.AddrPortFrom(c.local, internal), Lifetime: lifetime}, nil
}

func (c *upnpClient) unmap(ctx context.Context) error {
	if c.dev == nil || c.last == 0 {
		return nil
	}
	if err := c.dev.DeletePortMappingCtx(ctx, "", c.last, "UDP"); err != nil {
		return fmt.Errorf("portmap: upnp unmap: %w", err)
	}
	return nil
}
