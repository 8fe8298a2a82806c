package registry_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/elacity/pc2/core/clock"
	"github.com/elacity/pc2/core/store"
	"github.com/elacity/pc2/gateway/names"
	"github.com/elacity/pc2/plugins/registry"
	"github.com/elacity/pc2/plugins/registry/client"
	"github.com/elacity/pc2/plugins/registry/wire"
)

// filled returns a registry holding n names (owners of 10 names each).
func filled(tb testing.TB, n int) *registry.Registry {
	db, err := store.Open(filepath.Join(tb.TempDir(), "pc2.db"), time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	rules, _ := names.NewRules([]string{"ela.city"})
	// The real clock: the fake one takes a mutex per reading.
	clk := clock.Real{}
	reg, err := registry.Open(registry.Options{Rules: rules, Storage: db.Namespace("registry"), Clock: clk, AllowPrivateTargets: true, RatePerID: 1e9, BurstPerID: 1 << 30})
	if err != nil {
		tb.Fatal(err)
	}
	for i := range n {
		c := &client.Client{Key: key(tb, byte(i/10)), Now: clk.Now}
		q, _ := c.NewRequest(wire.OpRegister, fmt.Sprintf("name-%06d.ela.city", i))
		if i == n-1 {
			q.Name = "alice.ela.city"
		}
		q.Target = "127.0.0.1:8443"
		q.HTTP = "127.0.0.1:8080"
		q.Sign(c.Key)
		if _, err := reg.Apply(context.Background(), q); err != nil {
			tb.Fatal(err)
		}
	}
	return reg
}

func TestLookupDoesNotAllocate(t *testing.T) {
	reg := filled(t, 10)
	host := []byte("Alice.ELA.city:80")
	allocs := testing.AllocsPerRun(1000, func() {
		if _, ok := reg.TLSTarget("alice.ela.city"); !ok {
			t.Fatal("miss")
		}
		if _, ok := reg.HTTPBackend(host); !ok {
			t.Fatal("miss")
		}
		if _, ok := reg.TLSTarget("nobody.ela.city"); ok {
			t.Fatal("hit")
		}
	})
	if allocs != 0 {
		t.Fatalf("lookups allocate %v times", allocs)
	}
}

// BenchmarkLookup: the SNI and Host routers' per-connection cost with
// 2,550 names in the index (key seeds are bytes: 255 owners × 10).
func BenchmarkLookup(b *testing.B) {
	reg := filled(b, 2550)
	b.Run("TLSTarget", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := reg.TLSTarget("alice.ela.city"); !ok {
				b.Fatal("miss")
			}
		}
	})
	b.Run("HTTPBackend-mixed-case-port", func(b *testing.B) {
		host := []byte("Alice.ELA.city:80")
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := reg.HTTPBackend(host); !ok {
				b.Fatal("miss")
			}
		}
	})
	b.Run("TLSTarget-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, ok := reg.TLSTarget("alice.ela.city"); !ok {
					b.Fatal("miss")
				}
			}
		})
	})
}

// BenchmarkAPIRegister: one signed renewal through the API handler:
// parse, decode, verify, replay check, durable write (fsync), answer.
// Signing the request (the client's work) is outside the timer.
func BenchmarkAPIRegister(b *testing.B) {
	e := newEnv(b, nil)
	kp := key(b, 1)
	c := e.client(kp)
	if _, err := c.Register(context.Background(), alice); err != nil {
		b.Fatal(err)
	}
	remote := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5555}
	var ctx fasthttp.RequestCtx
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		e.clk.Advance(3 * time.Second) // keeps the live nonces of this id under the per-id bound
		q, _ := c.NewRequest(wire.OpRegister, alice.Name)
		q.Target = alice.Target
		q.Sign(kp)
		body, _ := json.Marshal(q)
		var req fasthttp.Request
		req.Header.SetMethod("POST")
		req.SetRequestURI("/v1/names")
		req.SetBody(body)
		ctx.Init(&req, remote, nil)
		b.StartTimer()
		e.api.Handle(&ctx)
		if ctx.Response.StatusCode() != 200 {
			b.Fatalf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body())
		}
	}
}
