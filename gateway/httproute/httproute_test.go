package httproute

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

type mapRouter map[string]Backend

func (m mapRouter) HTTPBackend(host []byte) (Backend, bool) {
	h := strings.ToLower(string(host))
	if i := strings.LastIndexByte(h, ':'); i >= 0 {
		h = h[:i]
	}
	b, ok := m[h]
	return b, ok
}

// backend is a real HTTP server on loopback that reports what it got.
func backend(t *testing.T) string {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		w.Header().Set("Connection", "x-hop") // must not be forwarded as is
		fmt.Fprintf(w, "host=%s path=%s xff=%s proto=%s len=%d sum=%x", r.Host, r.URL.RequestURI(), r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"), n, h.Sum(nil)[:4])
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
		for range 128 {                                         // 8 MiB, streamed
			w.Write(chunk)
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func start(t *testing.T, r Router, tweak func(*Config)) string {
	cfg := DefaultConfig(true)
	if tweak != nil {
		tweak(&cfg)
	}
	s := NewServer(r, cfg, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return ln.Addr().String()
}

// get sends a request to the router with the given Host header.
func do(t *testing.T, router, method, host, path string, body io.Reader) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+router+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }, Timeout: 20 * time.Second}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

func TestRouting(t *testing.T) {
	be := backend(t)
	r := mapRouter{
		"alice.ela.city": {Addr: be},
		"bob.ela.city":   {Addr: be, RedirectHTTPS: true},
		"carol.ela.city": {},
	}
	addr := start(t, r, nil)

	res, body := do(t, addr, "GET", "Alice.ela.city", "/x?y=1", nil)
	if res.StatusCode != 200 || !strings.HasPrefix(body, "host=Alice.ela.city path=/x?y=1 xff=127.0.0.1 proto=http len=0") {
		t.Fatalf("proxied: %d %q", res.StatusCode, body)
	}
	if res.Header.Get("Connection") == "x-hop" {
		t.Error("hop-by-hop header forwarded")
	}
	res, body = do(t, addr, "GET", "nobody.ela.city", "/", nil)
	if res.StatusCode != 404 || body != "unknown host\n" {
		t.Fatalf("unknown: %d %q", res.StatusCode, body)
	}
	res, _ = do(t, addr, "GET", "bob.ela.city:80", "/page?q=1", nil)
	if res.StatusCode != 308 || res.Header.Get("Location") != "https://bob.ela.city/page?q=1" {
		t.Fatalf("redirect: %d %q", res.StatusCode, res.Header.Get("Location"))
	}
	// ACME HTTP-01 reaches the node even when it asked for redirects.
	res, body = do(t, addr, "GET", "bob.ela.city", "/.well-known/acme-challenge/tok", nil)
	if res.StatusCode != 200 || !strings.Contains(body, "path=/.well-known/acme-challenge/tok") {
		t.Fatalf("acme: %d %q", res.StatusCode, body)
	}
	// A name without an HTTP endpoint is redirected.
	res, _ = do(t, addr, "GET", "carol.ela.city", "/", nil)
	if res.StatusCode != 308 || res.Header.Get("Location") != "https://carol.ela.city/" {
		t.Fatalf("no http endpoint: %d", res.StatusCode)
	}
}

func TestStreamingBodies(t *testing.T) {
	be := backend(t)
	addr := start(t, mapRouter{"alice.ela.city": {Addr: be}}, func(c *Config) { c.MaxBodyBytes = 16 << 20 })
	up := bytes.Repeat([]byte("x"), 8<<20)
	sum := sha256.Sum256(up)
	res, body := do(t, addr, "POST", "alice.ela.city", "/up", bytes.NewReader(up))
	if want := fmt.Sprintf("len=%d sum=%x", len(up), sum[:4]); res.StatusCode != 200 || !strings.Contains(body, want) {
		t.Fatalf("upload: %d %q, want %q", res.StatusCode, body, want)
	}
	// Chunked upload (unknown length).
	res, body = do(t, addr, "POST", "alice.ela.city", "/up", io.MultiReader(bytes.NewReader(up[:1<<20]), bytes.NewReader(up[:1<<20])))
	if res.StatusCode != 200 || !strings.Contains(body, "len=2097152") {
		t.Fatalf("chunked upload: %d %q", res.StatusCode, body)
	}
	res, body = do(t, addr, "GET", "alice.ela.city", "/big", nil)
	if res.StatusCode != 200 || len(body) != 8<<20 {
		t.Fatalf("download: %d, %d bytes", res.StatusCode, len(body))
	}
}

func TestLimits(t *testing.T) {
	be := backend(t)
	addr := start(t, mapRouter{"alice.ela.city": {Addr: be}, "down.ela.city": {Addr: "127.0.0.1:1"}}, func(c *Config) {
		c.MaxBodyBytes = 1 << 20
		c.MaxHeaderBytes = 2048
		c.HeaderTimeout = 300 * time.Millisecond
	})
	// A declared length over the limit is refused before the body is read.
	// Raw TCP with only the 8 KiB fasthttp pre-reads: an HTTP client still
	// sending the whole 2 MiB may see the server's close as a reset (unread
	// bytes) before it reads the 413.
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(raw, "POST / HTTP/1.1\r\nHost: alice.ela.city\r\nContent-Length: %d\r\n\r\n%s", 2<<20, make([]byte, 8<<10)); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(raw), nil)
	if err != nil {
		t.Fatalf("oversized body: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != 413 {
		t.Fatalf("oversized body: %d", res.StatusCode)
	}
	// Chunked (no length): cut when the limit passes.
	req, _ := http.NewRequest("POST", "http://"+addr+"/", io.MultiReader(bytes.NewReader(make([]byte, 1<<20)), bytes.NewReader(make([]byte, 1<<20))))
	req.Host = "alice.ela.city"
	if res, err := http.DefaultClient.Do(req); err == nil {
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode == 200 {
			t.Fatalf("chunked body over the limit passed: %s", b)
		}
	}
	req, _ = http.NewRequest("GET", "http://"+addr+"/", nil)
	req.Host = "alice.ela.city"
	req.Header.Set("X-Big", strings.Repeat("a", 4096))
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 431 {
		t.Fatalf("oversized headers: %d", res.StatusCode)
	}
	res, body := do(t, addr, "GET", "down.ela.city", "/", nil)
	if res.StatusCode != 502 || body != "node unreachable\n" {
		t.Fatalf("backend down: %d %q", res.StatusCode, body)
	}
	// A client that never finishes its headers is cut at the header timeout.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("GET / HTTP/1.1\r\nHost: alice.ela.city\r\n"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	io.Copy(io.Discard, c)
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("slow headers held the connection %v", el)
	}
}

func TestKeepAlive(t *testing.T) {
	be := backend(t)
	addr := start(t, mapRouter{"alice.ela.city": {Addr: be}}, nil)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i := range 3 {
		fmt.Fprintf(c, "GET /n%d HTTP/1.1\r\nHost: alice.ela.city\r\n\r\n", i)
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d on one connection: %v", i, err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if !strings.Contains(string(b), fmt.Sprintf("path=/n%d", i)) {
			t.Fatalf("request %d: %q", i, b)
		}
	}
}
