// Package hellotest produces real and Chrome-like TLS ClientHello bytes and
// reference parses of them, for tests, benchmarks and fuzz seeds of the
// clienthello parser and the SNI proxy. It is test support, not for
// production use; it lives outside _test files so other packages' tests and
// the fuzz package can share it.
package hellotest

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// Capture runs a crypto/tls client with cfg over an in-memory pipe and
// returns the bytes it writes up to the end of its ClientHello message,
// reading records independently of the clienthello package.
func Capture(cfg *tls.Config) ([]byte, error) {
	c, s := net.Pipe()
	defer s.Close()
	go func() {
		_ = tls.Client(c, cfg).Handshake() // fails when s closes; only the bytes matter
		c.Close()
	}()
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	var out []byte
	need := -1 // handshake message bytes still expected
	for need != 0 {
		var hdr [5]byte
		if _, err := io.ReadFull(s, hdr[:]); err != nil {
			return nil, fmt.Errorf("read record header: %w", err)
		}
		n := int(binary.BigEndian.Uint16(hdr[3:]))
		payload := make([]byte, n)
		if _, err := io.ReadFull(s, payload); err != nil {
			return nil, fmt.Errorf("read record: %w", err)
		}
		out = append(append(out, hdr[:]...), payload...)
		if need < 0 {
			if n < 4 {
				return nil, errors.New("first record shorter than a handshake header")
			}
			need = 4 + (int(payload[1])<<16 | int(payload[2])<<8 | int(payload[3]))
		}
		need -= min(need, n)
	}
	return out, nil
}

// MustCapture is Capture for test setup; it panics on failure, which only
// happens when crypto/tls itself misbehaves.
func MustCapture(cfg *tls.Config) []byte {
	b, err := Capture(cfg)
	if err != nil {
		panic(err)
	}
	return b
}

// Handshake returns the handshake payload bytes carried by the records in raw.
func Handshake(raw []byte) []byte {
	var hs []byte
	for len(raw) >= 5 {
		n := int(binary.BigEndian.Uint16(raw[3:]))
		if len(raw) < 5+n {
			break
		}
		hs = append(hs, raw[5:5+n]...)
		raw = raw[5+n:]
	}
	return hs
}

// Fragment re-records the handshake bytes of raw into TLS records carrying at
// most size bytes each, keeping the first record's version.
func Fragment(raw []byte, size int) []byte {
	hs := Handshake(raw)
	var out []byte
	for len(hs) > 0 {
		n := min(size, len(hs))
		out = append(out, 22, raw[1], raw[2], byte(n>>8), byte(n))
		out = append(out, hs[:n]...)
		hs = hs[n:]
	}
	return out
}

// grease returns a GREASE value (RFC 8701) chosen by i.
func grease(i int) uint16 {
	v := uint16(i%16)<<4 | 0x0a
	return v<<8 | v
}

type builder struct{ b []byte }

func (w *builder) u8(v byte)    { w.b = append(w.b, v) }
func (w *builder) u16(v uint16) { w.b = binary.BigEndian.AppendUint16(w.b, v) }
func (w *builder) raw(p []byte) { w.b = append(w.b, p...) }

// vec appends a length-prefixed block written by f; lenBytes is 1, 2 or 3.
func (w *builder) vec(lenBytes int, f func()) {
	start := len(w.b)
	w.b = append(w.b, make([]byte, lenBytes)...)
	f()
	n := len(w.b) - start - lenBytes
	for i := lenBytes - 1; i >= 0; i-- {
		w.b[start+i] = byte(n)
		n >>= 8
	}
}

func (w *builder) ext(typ uint16, f func()) {
	w.u16(typ)
	w.vec(2, f)
}

func random(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// ChromeLike builds a ClientHello shaped like a current Chrome's: GREASE
// cipher suites, groups, versions and extensions, an X25519MLKEM768 key share
// (1216 bytes), ALPS, compress_certificate and a GREASE ECH extension, about
// 1.8 KB in one record. The key material is random: it is meant for parsers
// and proxies, not for completing a handshake.
func ChromeLike(serverName string, alpn ...string) []byte {
	if len(alpn) == 0 {
		alpn = []string{"h2", "http/1.1"}
	}
	var w builder
	w.u8(22)
	w.u16(0x0301)
	w.vec(2, func() {
		w.u8(1) // client_hello
		w.vec(3, func() {
			w.u16(0x0303)
			w.raw(random(32))
			w.vec(1, func() { w.raw(random(32)) })
			w.vec(2, func() {
				for _, cs := range []uint16{grease(3), 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035} {
					w.u16(cs)
				}
			})
			w.vec(1, func() { w.u8(0) })
			w.vec(2, func() {
				w.ext(grease(7), func() {})
				w.ext(0, func() { // server_name
					w.vec(2, func() {
						w.u8(0)
						w.vec(2, func() { w.raw([]byte(serverName)) })
					})
				})
				w.ext(23, func() {})              // extended_master_secret
				w.ext(0xff01, func() { w.u8(0) }) // renegotiation_info
				w.ext(10, func() {                // supported_groups
					w.vec(2, func() {
						for _, g := range []uint16{grease(7), 0x11ec, 0x001d, 0x0017, 0x0018} {
							w.u16(g)
						}
					})
				})
				w.ext(11, func() { w.vec(1, func() { w.u8(0) }) }) // ec_point_formats
				w.ext(35, func() {})                               // session_ticket
				w.ext(16, func() {                                 // ALPN
					w.vec(2, func() {
						for _, p := range alpn {
							w.vec(1, func() { w.raw([]byte(p)) })
						}
					})
				})
				w.ext(5, func() { w.u8(1); w.u16(0); w.u16(0) }) // status_request
				w.ext(13, func() {                               // signature_algorithms
					w.vec(2, func() {
						for _, s := range []uint16{0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601} {
							w.u16(s)
						}
					})
				})
				w.ext(18, func() {}) // signed_certificate_timestamp
				w.ext(51, func() {   // key_share
					w.vec(2, func() {
						w.u16(grease(7))
						w.vec(2, func() { w.u8(0) })
						w.u16(0x11ec)
						w.vec(2, func() { w.raw(random(1216)) })
						w.u16(0x001d)
						w.vec(2, func() { w.raw(random(32)) })
					})
				})
				w.ext(45, func() { w.vec(1, func() { w.u8(1) }) }) // psk_key_exchange_modes
				w.ext(43, func() {                                 // supported_versions
					w.vec(1, func() { w.u16(grease(5)); w.u16(0x0304); w.u16(0x0303) })
				})
				w.ext(27, func() { w.vec(1, func() { w.u16(2) }) }) // compress_certificate: brotli
				w.ext(17613, func() {                               // application_settings (ALPS)
					w.vec(2, func() { w.vec(1, func() { w.raw([]byte("h2")) }) })
				})
				w.ext(0xfe0d, func() { // GREASE encrypted_client_hello
					w.u8(0)            // outer
					w.u16(0x0001)      // kdf
					w.u16(0x0001)      // aead
					w.u8(random(1)[0]) // config id
					w.vec(2, func() { w.raw(random(32)) })
					w.vec(2, func() { w.raw(random(144)) })
				})
				w.ext(grease(11), func() { w.u8(0) })
			})
		})
	})
	return w.b
}

// Peek parses raw the way Traefik, frp and inetaf/tcpproxy do: run a
// crypto/tls server over a read-only connection and stop in
// GetConfigForClient. It is the reference the hand-written parser is
// measured and fuzzed against.
func Peek(raw []byte) (serverName string, alpn []string, err error) {
	var info *tls.ClientHelloInfo
	conn := &readOnlyConn{r: raw}
	herr := tls.Server(conn, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			info = h
			return nil, errPeeked
		},
	}).Handshake()
	if info == nil {
		return "", nil, herr
	}
	return info.ServerName, info.SupportedProtos, nil
}

var errPeeked = errors.New("peeked")

// readOnlyConn is a net.Conn that serves raw and swallows writes.
type readOnlyConn struct {
	net.Conn
	r []byte
}

func (c *readOnlyConn) Read(p []byte) (int, error) {
	if len(c.r) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.r)
	c.r = c.r[n:]
	return n, nil
}

func (c *readOnlyConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *readOnlyConn) Close() error                     { return nil }
func (c *readOnlyConn) SetDeadline(time.Time) error      { return nil }
func (c *readOnlyConn) SetReadDeadline(time.Time) error  { return nil }
func (c *readOnlyConn) SetWriteDeadline(time.Time) error { return nil }
func (c *readOnlyConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *readOnlyConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }

// Configs returns crypto/tls client configurations that produce ClientHellos
// of different shapes: TLS 1.2 only, TLS 1.3 only, classic and post-quantum
// key shares, with and without ALPN, upper-case and trailing-dot names.
func Configs(serverName string) map[string]*tls.Config {
	up := strings.ToUpper(serverName)
	return map[string]*tls.Config{
		"default":      {ServerName: serverName, NextProtos: []string{"h2", "http/1.1"}},
		"tls12":        {ServerName: serverName, MaxVersion: tls.VersionTLS12},
		"tls13-x25519": {ServerName: serverName, MinVersion: tls.VersionTLS13, CurvePreferences: []tls.CurveID{tls.X25519}},
		"mlkem":        {ServerName: serverName, CurvePreferences: []tls.CurveID{tls.X25519MLKEM768, tls.X25519, tls.CurveP256}, NextProtos: []string{"acme-tls/1"}},
		"upper-dot":    {ServerName: up + ".", NextProtos: []string{"http/1.1"}},
	}
}
