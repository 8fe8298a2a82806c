package portmap

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// DefaultGateway reads the IPv4 default route from /proc/net/route.
func DefaultGateway() (netip.Addr, error) {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return netip.Addr{}, fmt.Errorf("portmap: default gateway: %w", err)
	}
	defer f.Close()
	return parseRoutes(bufio.NewScanner(f))
}

// parseRoutes picks the gateway of the first default route (destination
// and mask 0, flags RTF_UP|RTF_GATEWAY) of a /proc/net/route table.
func parseRoutes(sc *bufio.Scanner) (netip.Addr, error) {
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 8 || f[1] != "00000000" || f[7] != "00000000" {
			continue
		}
		var flags uint16
		if _, err := fmt.Sscanf(f[3], "%x", &flags); err != nil || flags&0x3 != 0x3 {
			continue
		}
		b, err := hex.DecodeString(f[2])
		if err != nil || len(b) != 4 {
			continue
		}
		var a [4]byte
		binary.NativeEndian.PutUint32(a[:], binary.BigEndian.Uint32(b)) // the kernel prints the address as a host-order number
		return netip.AddrFrom4(a), nil
	}
	return netip.Addr{}, fmt.Errorf("portmap: no IPv4 default gateway")
}
