package registry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/elacity/pc2/core/clock"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/metrics"
	"github.com/elacity/pc2/core/store"
	"github.com/elacity/pc2/gateway/names"
	"github.com/elacity/pc2/plugins/registry"
	"github.com/elacity/pc2/plugins/registry/client"
	"github.com/elacity/pc2/plugins/registry/wire"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func key(t testing.TB, b byte) *identity.KeyPair {
	kp, err := identity.FromSeed(bytes.Repeat([]byte{b}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

// env is a registry with its API on a loopback socket.
type env struct {
	t       testing.TB
	dir     string
	db      *store.DB
	reg     *registry.Registry
	api     *registry.API
	url     string
	clk     *clock.Fake
	pub     *registry.MemPublisher
	metrics *metrics.Registry
	opts    registry.Options
	apiOpts registry.APIOptions
}

func newEnv(t testing.TB, tweak func(*registry.Options, *registry.APIOptions)) *env {
	e := &env{t: t, dir: t.TempDir(), clk: clock.NewFake(t0), pub: &registry.MemPublisher{}, metrics: metrics.New()}
	rules, err := names.NewRules([]string{"ela.city", "pc2.localhost"})
	if err != nil {
		t.Fatal(err)
	}
	e.opts = registry.Options{Rules: rules, Clock: e.clk, Publisher: e.pub, Metrics: e.metrics, AllowPrivateTargets: true, RatePerID: 1000, BurstPerID: 1000}
	e.apiOpts = registry.APIOptions{RatePerIP: 1000, BurstPerIP: 1000}
	if tweak != nil {
		tweak(&e.opts, &e.apiOpts)
	}
	e.open()
	return e
}

func (e *env) open() {
	t := e.t
	db, err := store.Open(filepath.Join(e.dir, "pc2.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	e.db = db
	o := e.opts
	o.Storage = db.Namespace("registry")
	e.reg, err = registry.Open(o)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.api = registry.NewAPI(e.reg, e.apiOpts)
	go e.api.Serve(ln)
	e.url = "http://" + ln.Addr().String()
	t.Cleanup(e.close)
}

func (e *env) close() {
	if e.api != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		e.api.Shutdown(ctx)
		cancel()
		e.db.Close()
		e.api = nil
	}
}

func (e *env) reopen() { e.close(); e.open() }

func (e *env) client(kp *identity.KeyPair) *client.Client {
	return &client.Client{BaseURL: e.url, Key: kp, Now: e.clk.Now}
}

var alice = client.Registration{Name: "alice.ela.city", Target: "127.0.0.1:8443", HTTP: "127.0.0.1:8080"}

func wantCode(t *testing.T, err error, code wire.Code) {
	t.Helper()
	if got := client.CodeOf(err); got != code {
		t.Fatalf("err = %v, want code %s", err, code)
	}
}

func TestRegisterHappyPath(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	a := e.client(key(t, 1))
	rec, err := a.Register(ctx, client.Registration{Name: "Alice.ELA.city.", Target: alice.Target, HTTP: alice.HTTP, RedirectHTTPS: true})
	if err != nil {
		t.Fatal(err)
	}
	if rec.Name != "alice.ela.city" || rec.Owner != key(t, 1).ID() || rec.Expires != t0.Add(30*24*time.Hour).Unix() || !rec.RedirectHTTPS {
		t.Fatalf("record = %+v", rec)
	}
	if err := rec.VerifyProof(); err != nil {
		t.Fatalf("record proof: %v", err)
	}
	// Routed on every path, any case.
	if addr, ok := e.reg.TLSTarget("alice.ela.city"); !ok || addr != alice.Target {
		t.Fatalf("TLSTarget = %q %v", addr, ok)
	}
	if b, ok := e.reg.HTTPBackend([]byte("ALICE.ela.city:80")); !ok || b.Addr != alice.HTTP || !b.RedirectHTTPS {
		t.Fatalf("HTTPBackend = %+v %v", b, ok)
	}
	if _, ok := e.reg.TLSTarget("bob.ela.city"); ok {
		t.Fatal("unregistered name routed")
	}
	// Readable through the API and published.
	got, err := a.Get(ctx, "alice.ela.city")
	if err != nil || got.Target != alice.Target {
		t.Fatalf("Get = %+v %v", got, err)
	}
	if p, ok := e.pub.Get("alice.ela.city"); !ok || p.Target != alice.Target {
		t.Fatal("not published")
	}
	list, err := a.List(ctx, key(t, 1).ID())
	if err != nil || len(list) != 1 || list[0].Name != "alice.ela.city" {
		t.Fatalf("List = %+v %v", list, err)
	}
	// Renewal by the owner extends the expiry and keeps Created.
	e.clk.Advance(24 * time.Hour)
	rec2, err := a.Register(ctx, alice)
	if err != nil || rec2.Created != rec.Created || rec2.Expires != e.clk.Now().Add(30*24*time.Hour).Unix() || rec2.RedirectHTTPS {
		t.Fatalf("renewal = %+v %v", rec2, err)
	}
	// Update changes endpoints, not expiry.
	e.clk.Advance(time.Hour)
	rec3, err := a.Update(ctx, client.Registration{Name: alice.Name, Target: "127.0.0.2:8443"})
	if err != nil || rec3.Expires != rec2.Expires || rec3.Target != "127.0.0.2:8443" || rec3.HTTP != "" {
		t.Fatalf("update = %+v %v", rec3, err)
	}
	if addr, _ := e.reg.TLSTarget("alice.ela.city"); addr != "127.0.0.2:8443" {
		t.Fatalf("index not updated: %s", addr)
	}
	var out bytes.Buffer
	e.metrics.WritePrometheus(&out)
	for _, want := range []string{`pc2_requests_total{op="register",result="ok"} 2`, `pc2_requests_total{op="update",result="ok"} 1`, "pc2_names 1"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestOtherKeyIsRefused(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	a, b := e.client(key(t, 1)), e.client(key(t, 2))
	if _, err := a.Register(ctx, alice); err != nil {
		t.Fatal(err)
	}
	_, err := b.Register(ctx, client.Registration{Name: alice.Name, Target: "127.0.0.9:443"})
	wantCode(t, err, wire.CodeTaken)
	_, err = b.Update(ctx, client.Registration{Name: alice.Name, Target: "127.0.0.9:443"})
	wantCode(t, err, wire.CodeForbidden)
	wantCode(t, b.Delete(ctx, alice.Name), wire.CodeForbidden)
	_, err = b.SetACME(ctx, alice.Name, "token")
	wantCode(t, err, wire.CodeForbidden)
	q, _ := b.NewTransfer(client.Registration{Name: alice.Name, Target: "127.0.0.9:443"}, key(t, 3).ID())
	q.CoSign(key(t, 3))
	_, err = b.Submit(ctx, q)
	wantCode(t, err, wire.CodeForbidden)
	if addr, _ := e.reg.TLSTarget(alice.Name); addr != alice.Target {
		t.Fatalf("a refused request changed the target to %s", addr)
	}
	// A request whose signature is by another key than its id.
	q, _ = b.NewRequest(wire.OpDelete, alice.Name)
	q.Sign(key(t, 2))
	q.ID = key(t, 1).ID()
	_, err = b.Submit(ctx, q)
	wantCode(t, err, wire.CodeBadSignature)
	if _, ok := e.reg.TLSTarget(alice.Name); !ok {
		t.Fatal("forged delete went through")
	}
}

func TestReplayAndStale(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	a := e.client(key(t, 1))
	if _, err := a.Register(ctx, alice); err != nil {
		t.Fatal(err)
	}
	q, _ := a.NewRequest(wire.OpDelete, alice.Name)
	q.Sign(key(t, 1))
	if _, err := a.Submit(ctx, q); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Register(ctx, alice); err != nil {
		t.Fatal(err)
	}
	// The captured delete, replayed after the owner registered again.
	_, err := a.Submit(ctx, q)
	wantCode(t, err, wire.CodeReplay)
	// ...and after a restart: nonces are durable too.
	e.reopen()
	a.BaseURL = e.url
	_, err = a.Submit(ctx, q)
	wantCode(t, err, wire.CodeReplay)
	if _, ok := e.reg.TLSTarget(alice.Name); !ok {
		t.Fatal("replayed delete went through")
	}
	// Past the window, the timestamp check refuses it.
	e.clk.Advance(2*time.Minute + 2*time.Second)
	_, err = a.Submit(ctx, q)
	wantCode(t, err, wire.CodeStale)
	// From the future, too.
	q2, _ := a.NewRequest(wire.OpDelete, alice.Name)
	q2.Timestamp = e.clk.Now().Add(3 * time.Minute).Unix()
	q2.Sign(key(t, 1))
	_, err = a.Submit(ctx, q2)
	wantCode(t, err, wire.CodeStale)
	// A client whose clock is off retries with the server's time.
	off := e.client(key(t, 1))
	off.Now = func() time.Time { return e.clk.Now().Add(-time.Hour) }
	if _, err := off.Register(ctx, alice); err != nil {
		t.Fatalf("skewed client: %v", err)
	}
}

func TestTransfer(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	a, b := e.client(key(t, 1)), e.client(key(t, 2))
	if _, err := a.Register(ctx, alice); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SetACME(ctx, alice.Name, "old-owner-token"); err != nil {
		t.Fatal(err)
	}
	bobTarget := client.Registration{Name: alice.Name, Target: "127.0.0.2:443"}
	q, err := a.NewTransfer(bobTarget, key(t, 2).ID())
	if err != nil {
		t.Fatal(err)
	}
	// Without the new owner's co-signature: refused before it is sent.
	if _, err := a.Submit(ctx, q); client.CodeOf(err) != wire.CodeBadRequest {
		t.Fatalf("transfer without coSig: %v", err)
	}
	if err := q.CoSign(key(t, 2)); err != nil {
		t.Fatal(err)
	}
	rec, err := b.Submit(ctx, q) // either side may submit
	if err != nil {
		t.Fatal(err)
	}
	if rec.Owner != key(t, 2).ID() || rec.Target != "127.0.0.2:443" || len(rec.ACME) != 0 {
		t.Fatalf("after transfer: %+v", rec)
	}
	if err := rec.VerifyProof(); err != nil {
		t.Fatalf("transfer proof: %v", err)
	}
	if vals, _ := e.reg.ACMEChallenge(alice.Name); len(vals) != 0 {
		t.Fatal("old owner's ACME values survived the transfer")
	}
	wantCode(t, a.Delete(ctx, alice.Name), wire.CodeForbidden)
	if err := b.Delete(ctx, alice.Name); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.reg.TLSTarget(alice.Name); ok {
		t.Fatal("deleted name still routed")
	}
	if _, ok := e.pub.Get(alice.Name); ok {
		t.Fatal("deleted name still published")
	}
	_, err = b.Get(ctx, alice.Name)
	wantCode(t, err, wire.CodeNotFound)
	// Freed: anyone may take it.
	if _, err := e.client(key(t, 3)).Register(ctx, alice); err != nil {
		t.Fatal(err)
	}
}

func TestACMEValues(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	a := e.client(key(t, 1))
	if _, err := a.Register(ctx, alice); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"one", "two", "two", "three", "four"} {
		if _, err := a.SetACME(ctx, alice.Name, v); err != nil {
			t.Fatal(err)
		}
	}
	_, err := a.SetACME(ctx, alice.Name, "five")
	wantCode(t, err, wire.CodeQuota)
	vals, ok := e.reg.ACMEChallenge(alice.Name)
	if !ok || strings.Join(vals, ",") != "one,two,three,four" {
		t.Fatalf("values = %v", vals)
	}
	if _, err := a.DeleteACME(ctx, alice.Name, "two"); err != nil {
		t.Fatal(err)
	}
	if vals, _ := e.reg.ACMEChallenge(alice.Name); strings.Join(vals, ",") != "one,three,four" {
		t.Fatalf("after delete: %v", vals)
	}
	// Values expire by themselves (1 h), before and after the sweep.
	e.clk.Advance(time.Hour + time.Second)
	if vals, _ := e.reg.ACMEChallenge(alice.Name); len(vals) != 0 {
		t.Fatalf("expired values served: %v", vals)
	}
	if _, err := e.reg.Sweep(); err != nil {
		t.Fatal(err)
	}
	rec, _ := a.Get(ctx, alice.Name)
	if len(rec.ACME) != 0 {
		t.Fatalf("sweep kept %v", rec.ACME)
	}
	if _, ok := e.reg.TLSTarget(alice.Name); !ok {
		t.Fatal("sweeping ACME values removed the name")
	}
}

func TestExpiry(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	a, b := e.client(key(t, 1)), e.client(key(t, 2))
	if _, err := a.Register(ctx, alice); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(30*24*time.Hour - time.Second)
	if _, ok := e.reg.TLSTarget(alice.Name); !ok {
		t.Fatal("expired early")
	}
	e.clk.Advance(time.Second)
	if _, ok := e.reg.TLSTarget(alice.Name); ok {
		t.Fatal("expired name still routed before the sweep")
	}
	if e.reg.Len() != 1 {
		t.Fatal("swept without a sweep")
	}
	n, err := e.reg.Sweep()
	if err != nil || n != 1 || e.reg.Len() != 0 {
		t.Fatalf("sweep = %d %v, len %d", n, err, e.reg.Len())
	}
	e.reopen()
	if e.reg.Len() != 0 {
		t.Fatal("expired name back after reopen")
	}
	b.BaseURL = e.url
	if _, err := b.Register(ctx, alice); err != nil {
		t.Fatalf("freed name not available: %v", err)
	}
}

func TestQuotaAndPolicy(t *testing.T) {
	e := newEnv(t, func(o *registry.Options, _ *registry.APIOptions) {
		o.MaxNamesPerOwner = 2
		o.AllowPrivateTargets = false
	})
	ctx := context.Background()
	a := e.client(key(t, 1))
	for _, target := range []string{"127.0.0.1:443", "10.1.2.3:443", "192.168.1.1:443", "100.64.0.1:443", "[::1]:443", "[fe80::1]:443", "[fd00::1]:443"} {
		_, err := a.Register(ctx, client.Registration{Name: alice.Name, Target: target})
		wantCode(t, err, wire.CodeBadRequest)
	}
	for i, n := range []string{"aaa.ela.city", "bbb.ela.city"} {
		if _, err := a.Register(ctx, client.Registration{Name: n, Target: "203.0.113.1:443"}); err != nil {
			t.Fatalf("%d: %v", i, err)
		}
	}
	_, err := a.Register(ctx, client.Registration{Name: "ccc.ela.city", Target: "203.0.113.1:443"})
	wantCode(t, err, wire.CodeQuota)
	// Renewal is not a new name.
	if _, err := a.Register(ctx, client.Registration{Name: "aaa.ela.city", Target: "203.0.113.1:443"}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"www.ela.city", "ab.ela.city", "alice.example.com", "a.b.ela.city", "xn--bcher-kva.ela.city"} {
		_, err := a.Register(ctx, client.Registration{Name: bad, Target: "203.0.113.1:443"})
		wantCode(t, err, wire.CodeBadRequest)
	}
}

func TestRateLimits(t *testing.T) {
	t.Run("per id", func(t *testing.T) {
		e := newEnv(t, func(o *registry.Options, _ *registry.APIOptions) { o.RatePerID, o.BurstPerID = 0.01, 3 })
		ctx := context.Background()
		a, b := e.client(key(t, 1)), e.client(key(t, 2))
		for i := range 3 {
			if _, err := a.Register(ctx, alice); err != nil {
				t.Fatalf("%d: %v", i, err)
			}
		}
		_, err := a.Register(ctx, alice)
		wantCode(t, err, wire.CodeRateLimited)
		// Another id from the same address is not affected...
		if _, err := b.Register(ctx, client.Registration{Name: "bob.ela.city", Target: alice.Target}); err != nil {
			t.Fatal(err)
		}
		// ...and bad signatures claiming a's id do not spend a's budget.
		e.clk.Advance(100 * time.Second) // one token back
		for range 5 {
			q, _ := b.NewRequest(wire.OpDelete, alice.Name)
			q.Sign(key(t, 2))
			q.ID = key(t, 1).ID()
			_, err := b.Submit(ctx, q)
			wantCode(t, err, wire.CodeBadSignature)
		}
		if _, err := a.Register(ctx, alice); err != nil {
			t.Fatalf("after refill: %v", err)
		}
	})
	t.Run("per ip", func(t *testing.T) {
		e := newEnv(t, func(_ *registry.Options, a *registry.APIOptions) { a.RatePerIP, a.BurstPerIP = 0.01, 5 })
		ctx := context.Background()
		a := e.client(key(t, 1))
		for i := range 5 {
			if _, err := a.Get(ctx, "nobody.ela.city"); client.CodeOf(err) != wire.CodeNotFound {
				t.Fatalf("%d: %v", i, err)
			}
		}
		_, err := a.Get(ctx, "nobody.ela.city")
		wantCode(t, err, wire.CodeRateLimited)
		_, err = a.Register(ctx, alice)
		wantCode(t, err, wire.CodeRateLimited)
	})
}

func TestAPIBounds(t *testing.T) {
	e := newEnv(t, func(_ *registry.Options, a *registry.APIOptions) { a.ReadTimeout = 300 * time.Millisecond })
	post := func(body []byte) (int, wire.Response) {
		res, err := http.Post(e.url+"/v1/names", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var r wire.Response
		json.NewDecoder(res.Body).Decode(&r)
		return res.StatusCode, r
	}
	if st, r := post(bytes.Repeat([]byte(" "), 5000)); st != 413 || r.Code != wire.CodeTooLarge {
		t.Fatalf("oversized: %d %+v", st, r)
	}
	if st, r := post([]byte(`{"op":"register"}`)); st != 400 || r.Code != wire.CodeBadRequest {
		t.Fatalf("malformed: %d %+v", st, r)
	}
	res, err := http.Get(e.url + "/v1/names")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 405 {
		t.Fatalf("GET /v1/names: %d", res.StatusCode)
	}
	res, _ = http.Get(e.url + "/nothing")
	res.Body.Close()
	if res.StatusCode != 404 {
		t.Fatalf("unknown path: %d", res.StatusCode)
	}
	// A slow client is cut at the read timeout, not served forever.
	c, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("POST /v1/names HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"))
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	start := time.Now()
	buf := make([]byte, 512)
	for {
		if _, err := c.Read(buf); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) > 15*time.Second {
				t.Fatalf("slow client not cut: %v after %v", err, time.Since(start))
			}
			break
		}
	}
}

func TestDurableOrderOnReopen(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	a := e.client(key(t, 1))
	if _, err := a.Register(ctx, alice); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SetACME(ctx, alice.Name, "tok"); err != nil {
		t.Fatal(err)
	}
	e.reopen()
	if addr, ok := e.reg.TLSTarget(alice.Name); !ok || addr != alice.Target {
		t.Fatal("lost on reopen")
	}
	if vals, _ := e.reg.ACMEChallenge(alice.Name); len(vals) != 1 || vals[0] != "tok" {
		t.Fatalf("ACME lost on reopen: %v", vals)
	}
	// Owner counts are rebuilt: the quota still holds after a restart.
	e.opts.MaxNamesPerOwner = 1
	e.reopen()
	a.BaseURL = e.url
	_, err := a.Register(ctx, client.Registration{Name: "second.ela.city", Target: alice.Target})
	wantCode(t, err, wire.CodeQuota)
}
