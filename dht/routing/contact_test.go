package routing

import (
	"net/netip"
	"testing"
)

func TestIsGlobal(t *testing.T) {
	for s, want := range map[string]bool{
		"11.1.2.3": true, "8.8.8.8": true, "1.1.1.1": true, "223.255.255.254": true,
		"0.1.2.3": false, "10.0.0.1": false, "100.64.0.1": false, "100.127.255.255": false,
		"100.128.0.1": true, "127.0.0.1": false, "169.254.1.1": false, "172.16.0.1": false,
		"172.32.0.1": true, "192.0.0.8": false, "192.0.2.1": false, "192.168.1.1": false,
		"198.18.0.1": false, "198.19.255.1": false, "198.20.0.1": true, "198.51.100.7": false,
		"203.0.113.9": false, "224.0.0.1": false, "240.0.0.1": false, "255.255.255.255": false,
		"::ffff:10.0.0.1": false, "::ffff:8.8.8.8": true,
		"2a01::1": true, "2001:db8::1": false, "3fff::1": false, "fe80::1": false,
		"fc00::1": false, "::1": false, "::": false, "ff02::1": false,
	} {
		if got := IsGlobal(netip.MustParseAddr(s)); got != want {
			t.Errorf("IsGlobal(%s) = %v, want %v", s, got, want)
		}
	}
	if IsGlobal(netip.Addr{}) {
		t.Error("zero address is global")
	}
}
