package fuzz

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"testing"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/relay/tunnel"
)

// dataSecret is a fixed tunnel secret: the fuzzer cannot forge a MAC or
// a GCM tag, so the target also seals its input itself to reach the
// header decoder behind the authentication.
var dataSecret = bytes.Repeat([]byte{0x5a}, 64)

func tunnelDataSeeds() [][]byte {
	k, err := tunnel.NewDataKeys(dataSecret)
	if err != nil {
		panic(err)
	}
	var id identity.ID
	id[0] = 7
	hello := k.AppendHello(nil, id, 1)
	sealed, err := k.SealHeader(nil, 1, tunnel.Header{Service: "https", Visitor: netip.MustParseAddrPort("203.0.113.7:51000")})
	if err != nil {
		panic(err)
	}
	plain, _ := tunnel.Header{Service: "https"}.AppendBinary(nil)
	return [][]byte{hello, sealed, plain, {0, 17}, {0xff, 0xff}, append([]byte("PC2D\x01"), make([]byte, 56)...)}
}

// FuzzTunnelDataConn checks the data connection decoders (relay/tunnel
// dataconn.go): the hello parser never panics, refuses sequence number 0
// and what it accepts re-encodes to the same fields; the sealed header
// reader reads at most its bound and fails with a typed error on
// unauthenticated bytes; and a header the right key sealed (the input as
// plaintext) decodes only to a header that re-encodes to exactly it.
func FuzzTunnelDataConn(f *testing.F) {
	for _, s := range tunnelDataSeeds() {
		f.Add(s)
	}
	k, err := tunnel.NewDataKeys(dataSecret)
	if err != nil {
		f.Fatal(err)
	}
	block, _ := aes.NewCipher(dataSecret[32:])
	gcm, _ := cipher.NewGCM(block)
	f.Fuzz(func(t *testing.T, data []byte) {
		if id, seq, err := tunnel.ParseDataHello(data); err == nil {
			if seq == 0 {
				t.Fatal("sequence number 0 accepted")
			}
			if again := k.AppendHello(nil, id, seq); !bytes.Equal(again[:tunnel.DataHelloLen-16], data[:tunnel.DataHelloLen-16]) {
				t.Fatalf("hello %x re-encodes to %x", data, again)
			}
		} else if !errors.Is(err, tunnel.ErrBadDataConn) {
			t.Fatalf("hello error %v is not ErrBadDataConn", err)
		}

		r := bytes.NewReader(data)
		if _, err := k.ReadHeader(r, 1); err != nil && !errors.Is(err, tunnel.ErrBadDataConn) &&
			!errors.Is(err, tunnel.ErrBadHeader) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("unexpected error %v", err)
		}
		if read := len(data) - r.Len(); read > 2+tunnel.MaxHeaderLen+16 {
			t.Fatalf("read %d bytes of a sealed header", read)
		}

		plain := data[:min(len(data), tunnel.MaxHeaderLen+8)]
		var nonce [12]byte
		binary.BigEndian.PutUint64(nonce[4:], 9)
		sealed := binary.BigEndian.AppendUint16(nil, uint16(len(plain)+gcm.Overhead()))
		sealed = gcm.Seal(sealed, nonce[:], plain, []byte("PC2D"))
		h, err := k.ReadHeader(bytes.NewReader(sealed), 9)
		if err != nil {
			if !errors.Is(err, tunnel.ErrBadHeader) && !errors.Is(err, tunnel.ErrBadDataConn) {
				t.Fatalf("authenticated plaintext %x: error %v", plain, err)
			}
			return
		}
		if b, err := h.AppendBinary(nil); err != nil || !bytes.Equal(b, plain) {
			t.Fatalf("plaintext %x decoded to %+v, which encodes to %x (%v)", plain, h, b, err)
		}
	})
}
