package node

import (
	"errors"
	"strings"
	"testing"
)

const idA = "FAe4sisG95oZ42w7buUn5qEE4TAnfTTFPiguZUHmhiF" // boson.md §8.2 node A

func TestParseBootstrap(t *testing.T) {
	good := map[string]string{
		idA + "@203.0.113.5:39001":              "203.0.113.5",
		idA + "@[2001:db8::1]:39001":            "2001:db8::1",
		idA + "@[::ffff:198.51.100.2]:1":        "198.51.100.2",
		idA + "@boot.example.com:39001":         "boot.example.com",
		"did:boson:" + idA + "@127.0.0.1:65535": "127.0.0.1",
	}
	for s, host := range good {
		b, err := ParseBootstrap(s)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if b.Host != host || b.ID.String() != idA {
			t.Fatalf("%s: %+v", s, b)
		}
		again, err := ParseBootstrap(b.String())
		if err != nil || again != b {
			t.Fatalf("%s: String does not parse back: %q %v", s, b.String(), err)
		}
	}
	bad := []string{
		"", "@127.0.0.1:1", idA, idA + "@", idA + "@127.0.0.1", idA + "@127.0.0.1:0", idA + "@127.0.0.1:70000",
		idA + "@:39001", "xyz@127.0.0.1:1", idA + "@[fe80::1%eth0]:1", idA + "@bad_host!:1",
		idA + "@-a.example:1", idA + "@" + strings.Repeat("a", 600) + ":1",
	}
	for _, s := range bad {
		if _, err := ParseBootstrap(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	c := DefaultConfig(false)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Port != DefaultPort || c.ResolvedDialect() != DialectV3 {
		t.Fatalf("defaults: %+v", c)
	}
	c.PublicNetwork = true
	if c.ResolvedDialect() != DialectCompat {
		t.Fatal("the public network needs compat")
	}
	c = DefaultConfig(false)
	c.Port, c.K, c.Alpha, c.Dialect = 70000, 2, 0, "v4"
	c.Bind4, c.Bind6 = "::1", "127.0.0.1"
	c.Bootstrap = []string{"nope"}
	c.RateLimit.Burst = 0
	err := c.Validate()
	var fields []string
	for _, e := range unjoin(err) {
		var fe *FieldError
		if !errors.As(e, &fe) {
			t.Fatalf("not a field error: %v", e)
		}
		fields = append(fields, fe.Field)
	}
	want := "port bind4 bind6 k alpha dialect bootstrap rateLimit"
	if strings.Join(fields, " ") != want {
		t.Fatalf("fields %v, want %s", fields, want)
	}
	dev := DefaultConfig(true)
	if !dev.DeveloperMode || dev.Port != 0 || dev.Bind4 != "127.0.0.1" {
		t.Fatalf("dev defaults: %+v", dev)
	}
}
