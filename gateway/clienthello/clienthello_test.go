package clienthello_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"slices"
	"testing"
	"testing/iotest"
	"time"

	"github.com/elacity/pc2/gateway/clienthello"
	"github.com/elacity/pc2/gateway/clienthello/hellotest"
)

func mustRead(t *testing.T, r io.Reader) *clienthello.Hello {
	t.Helper()
	h, err := clienthello.Read(r)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	t.Cleanup(h.Release)
	return h
}

func TestCryptoTLSHellosMatchReference(t *testing.T) {
	for name, cfg := range hellotest.Configs("Alice.ela.city") {
		t.Run(name, func(t *testing.T) {
			raw := hellotest.MustCapture(cfg)
			h := mustRead(t, bytes.NewReader(raw))
			if got, want := h.ServerName(), "alice.ela.city"; got != want {
				t.Errorf("ServerName = %q, want %q", got, want)
			}
			if !bytes.Equal(h.Raw(), raw) {
				t.Errorf("Raw differs from the bytes read (%d vs %d bytes)", len(h.Raw()), len(raw))
			}
			refName, refALPN, err := hellotest.Peek(raw)
			if err != nil {
				t.Fatalf("crypto/tls reference: %v", err)
			}
			if refName != "Alice.ela.city" && refName != "ALICE.ELA.CITY" {
				t.Errorf("reference name %q", refName)
			}
			if !slices.Equal(h.ALPN(), refALPN) {
				t.Errorf("ALPN = %q, reference %q", h.ALPN(), refALPN)
			}
			if !slices.Equal(h.ALPN(), cfg.NextProtos) {
				t.Errorf("ALPN = %q, configured %q", h.ALPN(), cfg.NextProtos)
			}
			if h.RecordVersion() != 0x0301 {
				t.Errorf("RecordVersion = %#x", h.RecordVersion())
			}
		})
	}
}

func TestPostQuantumHelloIsLarge(t *testing.T) {
	raw := hellotest.MustCapture(hellotest.Configs("a.ela.city")["mlkem"])
	if len(raw) < 1200 {
		t.Fatalf("X25519MLKEM768 hello is only %d bytes; the multi-segment case is not exercised", len(raw))
	}
	h := mustRead(t, iotest.OneByteReader(bytes.NewReader(raw)))
	if h.ServerName() != "a.ela.city" || !h.OffersALPN("acme-tls/1") {
		t.Fatalf("got %q %q", h.ServerName(), h.ALPN())
	}
}

func TestChromeLike(t *testing.T) {
	raw := hellotest.ChromeLike("www.Example.com", "h2", "http/1.1")
	h := mustRead(t, bytes.NewReader(raw))
	if h.ServerName() != "www.example.com" {
		t.Errorf("ServerName = %q", h.ServerName())
	}
	if !slices.Equal(h.ALPN(), []string{"h2", "http/1.1"}) {
		t.Errorf("ALPN = %q", h.ALPN())
	}
	name, alpn, err := hellotest.Peek(raw)
	if err != nil {
		t.Fatalf("crypto/tls rejects the Chrome-like hello: %v", err)
	}
	if name != "www.Example.com" || !slices.Equal(alpn, h.ALPN()) {
		t.Errorf("reference %q %q", name, alpn)
	}
}

func TestFragmentedAcrossRecordsAndReads(t *testing.T) {
	raw := hellotest.ChromeLike("frag.ela.city")
	for _, size := range []int{1, 2, 3, 4, 5, 100, 512, 1000} {
		frag := hellotest.Fragment(raw, size)
		for _, one := range []bool{false, true} {
			var r io.Reader = bytes.NewReader(frag)
			if one {
				r = iotest.OneByteReader(r)
			}
			h, err := clienthello.Read(r)
			if len(frag) > clienthello.MaxSize {
				// Tiny records cost 5 header bytes each and push
				// the stream past the cap.
				if !errors.Is(err, clienthello.ErrTooLarge) {
					t.Errorf("size %d: err = %v, want ErrTooLarge", size, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("size %d one-byte %v: %v", size, one, err)
			}
			if h.ServerName() != "frag.ela.city" || !bytes.Equal(h.Raw(), frag) || !h.OffersALPN("h2") {
				t.Errorf("size %d: name %q raw-equal %v alpn %q", size, h.ServerName(), bytes.Equal(h.Raw(), frag), h.ALPN())
			}
			h.Release()
		}
	}
}

func TestTrailingBytesKeptInRaw(t *testing.T) {
	raw := hellotest.ChromeLike("early.ela.city")
	stream := append(slices.Clone(raw), 23, 3, 3, 0, 3, 'a', 'b', 'c') // early data record
	h := mustRead(t, bytes.NewReader(stream))
	if !bytes.Equal(h.Raw(), stream) {
		t.Fatalf("Raw has %d bytes, stream %d", len(h.Raw()), len(stream))
	}
	var h2 clienthello.Hello
	if err := h2.Parse(stream); err != nil || h2.ServerName() != "early.ela.city" {
		t.Fatalf("Parse: %v %q", err, h2.ServerName())
	}
}

// blockingReader yields its data, then blocks until the test ends.
type blockingReader struct {
	data []byte
	stop chan struct{}
}

func (r *blockingReader) Read(p []byte) (int, error) {
	if len(r.data) > 0 {
		n := copy(p, r.data)
		r.data = r.data[n:]
		return n, nil
	}
	<-r.stop
	return 0, io.EOF
}

func TestGarbageRejectedWithoutWaiting(t *testing.T) {
	for _, prefix := range []string{"G", "\x16\x02", "\x16\x03\x01\x00\x00", "\x16\x03\x01\x00\x05\x02"} {
		r := &blockingReader{data: []byte(prefix), stop: make(chan struct{})}
		done := make(chan error, 1)
		go func() {
			_, err := clienthello.Read(r)
			done <- err
		}()
		select {
		case err := <-done:
			var e *clienthello.Error
			if !errors.As(err, &e) {
				t.Errorf("%q: err = %v, want *Error", prefix, err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("%q: Read waited for more bytes instead of rejecting", prefix)
		}
		close(r.stop)
	}
}

func TestErrors(t *testing.T) {
	good := hellotest.MustCapture(hellotest.Configs("x.ela.city")["tls13-x25519"])
	noSNI := hellotest.MustCapture(&tls.Config{InsecureSkipVerify: true})

	mutate := func(f func(b []byte) []byte) []byte { return f(slices.Clone(good)) }
	bigRecord := []byte{22, 3, 1, 0x40, 0x00, 1, 0, 0x3f, 0xfc}
	bigMsg := []byte{22, 3, 1, 0, 4, 1, 0, 0x40, 0x00}

	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"http", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), clienthello.ErrNotTLS},
		{"sslv2", []byte{0x80, 0x2e, 0x01, 0x03, 0x01}, clienthello.ErrNotTLS},
		{"version", []byte{22, 2, 0, 0, 5, 1}, clienthello.ErrNotTLS},
		{"alert record", []byte{21, 3, 1, 0, 2, 2, 40}, clienthello.ErrNotTLS},
		{"empty", nil, clienthello.ErrTruncated},
		{"cut header", good[:3], clienthello.ErrTruncated},
		{"cut body", good[:len(good)-1], clienthello.ErrTruncated},
		{"record too big for cap", bigRecord, clienthello.ErrTooLarge},
		{"message too big for cap", bigMsg, clienthello.ErrTooLarge},
		{"record overflow", []byte{22, 3, 1, 0x40, 0x01}, clienthello.ErrMalformed},
		{"empty record", []byte{22, 3, 1, 0, 0}, clienthello.ErrMalformed},
		{"server hello", mutate(func(b []byte) []byte { b[5] = 2; return b }), clienthello.ErrMalformed},
		{"interleaved ccs", append(hellotest.Fragment(good, 10)[:15], 20, 3, 3, 0, 1, 1), clienthello.ErrMalformed},
		{"extensions length", mutate(func(b []byte) []byte { b[extOffset(b)+1]--; return b }), clienthello.ErrMalformed},
		{"extension overrun", mutate(func(b []byte) []byte { b[extOffset(b)+5]++; return b }), clienthello.ErrMalformed},
		{"no sni", noSNI, clienthello.ErrNoSNI},
		{"ip literal", hellotest.ChromeLike("192.0.2.1"), clienthello.ErrBadServerName},
		{"ipv6 literal", hellotest.ChromeLike("::1"), clienthello.ErrBadServerName},
		{"underscore", hellotest.ChromeLike("a_b.example"), clienthello.ErrBadServerName},
		{"empty label", hellotest.ChromeLike("a..example"), clienthello.ErrBadServerName},
		{"leading hyphen", hellotest.ChromeLike("-a.example"), clienthello.ErrBadServerName},
		{"nul", hellotest.ChromeLike("a\x00.example"), clienthello.ErrBadServerName},
		{"long label", hellotest.ChromeLike(string(bytes.Repeat([]byte("a"), 64)) + ".example"), clienthello.ErrBadServerName},
		{"empty alpn name", hellotest.ChromeLike("a.example", ""), clienthello.ErrMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, err := clienthello.Read(bytes.NewReader(c.in))
			if h != nil {
				t.Fatalf("got a hello for bad input")
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			var e *clienthello.Error
			if !errors.As(err, &e) {
				t.Fatalf("err %T is not *Error", err)
			}
			var h2 clienthello.Hello
			if err2 := h2.Parse(c.in); !errors.Is(err2, c.want) {
				t.Fatalf("Parse err = %v, want %v", err2, c.want)
			}
		})
	}
}

// extOffset returns the offset of the extensions length in a one-record hello.
func extOffset(b []byte) int {
	off := 5 + 4 + 2 + 32
	off += 1 + int(b[off])
	off += 2 + (int(b[off])<<8 | int(b[off+1]))
	off += 1 + int(b[off])
	return off
}

func TestReadErrorWrapped(t *testing.T) {
	boom := errors.New("boom")
	_, err := clienthello.Read(io.MultiReader(bytes.NewReader([]byte{22, 3}), iotest.ErrReader(boom)))
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want wrapped boom", err)
	}
}

func TestNameForms(t *testing.T) {
	for in, want := range map[string]string{
		"A.B.C":            "a.b.c",
		"xn--bcher-kva.ch": "xn--bcher-kva.ch",
		"a.example.":       "a.example",
		"localhost":        "localhost",
		"1a.2b.3c":         "1a.2b.3c",
		"a-b.c-d":          "a-b.c-d",
	} {
		var h clienthello.Hello
		if err := h.Parse(hellotest.ChromeLike(in)); err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if h.ServerName() != want || string(h.ServerNameBytes()) != want {
			t.Errorf("%q: got %q, want %q", in, h.ServerName(), want)
		}
	}
}

func TestManyALPNCappedNotFailed(t *testing.T) {
	protos := make([]string, clienthello.MaxALPN+4)
	for i := range protos {
		protos[i] = string(rune('a' + i))
	}
	var h clienthello.Hello
	if err := h.Parse(hellotest.ChromeLike("a.example", protos...)); err != nil {
		t.Fatal(err)
	}
	if h.NumALPN() != clienthello.MaxALPN || !slices.Equal(h.ALPN(), protos[:clienthello.MaxALPN]) {
		t.Fatalf("ALPN = %q", h.ALPN())
	}
}

// rewindReader is a bytes.Reader that benchmarks reset without allocating.
type rewindReader struct {
	b   []byte
	off int
}

func (r *rewindReader) Read(p []byte) (int, error) {
	if r.off == len(r.b) {
		return 0, io.EOF
	}
	n := copy(p, r.b[r.off:])
	r.off += n
	return n, nil
}

func benchInputs() map[string][]byte {
	return map[string][]byte{
		"go-default":      hellotest.MustCapture(hellotest.Configs("alice.ela.city")["default"]),
		"chrome":          hellotest.ChromeLike("alice.ela.city"),
		"chrome-3records": hellotest.Fragment(hellotest.ChromeLike("alice.ela.city"), 700),
	}
}

// BenchmarkRead is the proxy's per-connection cost: pooled buffer, record
// reassembly and parse.
func BenchmarkRead(b *testing.B) {
	for name, raw := range benchInputs() {
		b.Run(name, func(b *testing.B) {
			r := &rewindReader{b: raw}
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				r.off = 0
				h, err := clienthello.Read(r)
				if err != nil {
					b.Fatal(err)
				}
				if len(h.ServerNameBytes()) == 0 {
					b.Fatal("no name")
				}
				h.Release()
			}
		})
	}
}

// BenchmarkParse parses from a byte slice into a caller-held Hello.
func BenchmarkParse(b *testing.B) {
	for name, raw := range benchInputs() {
		b.Run(name, func(b *testing.B) {
			h := new(clienthello.Hello)
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				if err := h.Parse(raw); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCryptoTLSPeek is the GetConfigForClient trick used by Traefik,
// frp and inetaf/tcpproxy, for comparison with BenchmarkRead.
func BenchmarkCryptoTLSPeek(b *testing.B) {
	for name, raw := range benchInputs() {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				sn, _, err := hellotest.Peek(raw)
				if err != nil || sn == "" {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestParseAllocatesNothing(t *testing.T) {
	inputs := [][]byte{
		hellotest.ChromeLike("a.example"),
		hellotest.Fragment(hellotest.ChromeLike("a.example"), 50),
		hellotest.ChromeLike("192.0.2.1"),
		[]byte("GET / HTTP/1.1\r\n"),
		{22, 3, 1, 0x40, 0x01},
	}
	var h clienthello.Hello
	for i, in := range inputs {
		if a := testing.AllocsPerRun(100, func() { _ = h.Parse(in) }); a != 0 {
			t.Errorf("input %d: %v allocations per Parse", i, a)
		}
		r := &rewindReader{b: in}
		if a := testing.AllocsPerRun(100, func() {
			r.off = 0
			if h, err := clienthello.Read(r); err == nil {
				h.Release()
			}
		}); a != 0 {
			t.Errorf("input %d: %v allocations per pooled Read", i, a)
		}
	}
}
