package portmap

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"time"
)

// SSDP search for the gateway's Internet Gateway Device. goupnp's own
// discovery listens for answers for a fixed 2 s; a node only wants the
// gateway's answer, which comes in milliseconds, so the search is done here
// and goupnp is used from the device description on.

const (
	ssdpPort = 1900
	// maxSSDPAnswer bounds an answer datagram (one UDP read).
	maxSSDPAnswer = 2048
)

var ssdpGroup = netip.MustParseAddrPort("239.255.255.250:1900")

// ssdpSearchTargets are the device types asked for (IGD v1 and v2).
var ssdpSearchTargets = []string{
	"urn:schemas-upnp-org:device:InternetGatewayDevice:1",
	"urn:schemas-upnp-org:device:InternetGatewayDevice:2",
}

// ssdpRequest is an M-SEARCH for st. A multicast search carries MX: 1
// (devices wait up to that many seconds at random before answering); a
// unicast one to the gateway carries none, which UPnP 1.1 answers at once.
func ssdpRequest(st string, unicast netip.Addr) []byte {
	if unicast.IsValid() {
		return []byte("M-SEARCH * HTTP/1.1\r\nHOST: " + netip.AddrPortFrom(unicast, ssdpPort).String() +
			"\r\nMAN: \"ssdp:discover\"\r\nST: " + st + "\r\n\r\n")
	}
	return []byte("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: " + st + "\r\n\r\n")
}

// ParseSSDPAnswer decodes an M-SEARCH answer (an HTTP/1.1 200 response in
// one datagram) and returns its LOCATION, which must be an http URL on gw
// (an answer from any other host cannot redirect the mapping).
func ParseSSDPAnswer(b []byte, gw netip.Addr) (*url.URL, error) {
	if len(b) > maxSSDPAnswer {
		return nil, fmt.Errorf("%w: ssdp answer of %d bytes", ErrMalformed, len(b))
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(b)), nil)
	if err != nil {
		return nil, fmt.Errorf("%w: ssdp: %v", ErrMalformed, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: ssdp status %d", ErrMalformed, resp.StatusCode)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || loc.Scheme != "http" || loc.Host == "" {
		return nil, fmt.Errorf("%w: ssdp location %q", ErrMalformed, resp.Header.Get("Location"))
	}
	host, err := netip.ParseAddr(loc.Hostname())
	if err != nil || host.Unmap() != gw {
		return nil, fmt.Errorf("%w: ssdp location %q is not on the gateway %s", ErrMalformed, loc, gw)
	}
	return loc, nil
}

// ssdpSearch multicasts M-SEARCH (and sends it to the gateway directly)
// every 250 ms until the gateway answers or ctx ends.
func ssdpSearch(ctx context.Context, gw, local netip.Addr) (*url.URL, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: local.AsSlice()})
	if err != nil {
		return nil, fmt.Errorf("portmap: ssdp: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, maxSSDPAnswer+1)
	var lastErr error
	for {
		for _, st := range ssdpSearchTargets {
			_, _ = c.WriteToUDPAddrPort(ssdpRequest(st, gw), netip.AddrPortFrom(gw, ssdpPort))
			_, _ = c.WriteToUDPAddrPort(ssdpRequest(st, netip.Addr{}), ssdpGroup)
		}
		deadline := time.Now().Add(250 * time.Millisecond)
		_ = c.SetReadDeadline(deadline)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if ctx.Err() != nil {
				if lastErr == nil {
					lastErr = errors.New("no answer from the gateway")
				}
				return nil, fmt.Errorf("portmap: ssdp: %w (%w)", lastErr, ctx.Err())
			}
			if err != nil {
				break // this round is over: send again
			}
			if from.Addr().Unmap() != gw {
				continue
			}
			loc, err := ParseSSDPAnswer(buf[:n], gw)
			if err != nil {
				lastErr = err
				continue
			}
			return loc, nil
		}
	}
}
