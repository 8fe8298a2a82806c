// Package quicid binds TLS 1.3 (and so QUIC) peers to pc2 node identities.
//
// It exists because QUIC needs TLS, while pc2 peers are known by their
// Ed25519 node ids, not by CA-signed names. Each side presents a
// self-signed certificate whose public key IS its node key; the peer checks
// that the key in the certificate is the id it expects (or passes it to an
// admission check) and ignores names, issuers and CAs. TLS 1.3 proves
// possession of the private key in CertificateVerify, so a matching key in
// the certificate is a proof of identity.
//
// It also holds the quic-go settings shared by pc2's QUIC protocols:
// windows sized for throughput and many concurrent streams.
package quicid

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/crypto/hkdf"

	"github.com/elacity/pc2/core/identity"
)

// ErrWrongPeer is returned (wrapped) when the peer's certificate does not
// carry the expected node key.
var ErrWrongPeer = errors.New("quicid: peer is not the expected node")

// ErrNoPeerKey is returned (wrapped) when the peer sent no usable Ed25519
// certificate.
var ErrNoPeerKey = errors.New("quicid: peer certificate has no Ed25519 key")

// Certificate returns a self-signed certificate for kp's Ed25519 key. It
// carries no meaningful name: peers verify the key, not the name.
func Certificate(kp *identity.KeyPair) (tls.Certificate, error) {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: kp.ID().String()},
		NotBefore:    time.Unix(0, 0),
		NotAfter:     time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, kp.PublicKey(), kp.PrivateKey())
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("quicid: create certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: kp.PrivateKey()}, nil
}

// PeerID extracts the node id from a peer's raw certificate chain: the
// first certificate must carry an Ed25519 public key.
func PeerID(rawCerts [][]byte) (identity.ID, error) {
	if len(rawCerts) == 0 {
		return identity.ID{}, fmt.Errorf("%w: no certificate", ErrNoPeerKey)
	}
	cert, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return identity.ID{}, fmt.Errorf("%w: %v", ErrNoPeerKey, err)
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok || len(pub) != ed25519.PublicKeySize {
		return identity.ID{}, ErrNoPeerKey
	}
	return identity.IDFromBytes(pub)
}

// PeerIDFromState returns the verified peer id of a finished handshake.
func PeerIDFromState(cs tls.ConnectionState) (identity.ID, error) {
	raw := make([][]byte, len(cs.PeerCertificates))
	for i, c := range cs.PeerCertificates {
		raw[i] = c.Raw
	}
	return PeerID(raw)
}

// ServerConfig returns a TLS 1.3 server config for kp that requires a
// client certificate and calls admit with the client's node id during the
// handshake; a non-nil error from admit fails the handshake.
func ServerConfig(kp *identity.KeyPair, alpn string, admit func(identity.ID) error) (*tls.Config, error) {
	cert, err := Certificate(kp)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{alpn},
		ClientAuth:   tls.RequireAnyClientCert,
		// No session tickets: a resumed handshake skips
		// VerifyPeerCertificate, i.e. the node-key check and admit, and no
		// pc2 client keeps a session cache anyway; a ticket would only
		// cost a seal and a packet per connection.
		SessionTicketsDisabled: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, err := PeerID(raw)
			if err != nil {
				return err
			}
			if admit == nil {
				return nil
			}
			return admit(id)
		},
	}, nil
}

// ClientConfig returns a TLS 1.3 client config for kp that accepts only a
// server presenting expect's key.
func ClientConfig(kp *identity.KeyPair, alpn string, expect identity.ID) (*tls.Config, error) {
	cert, err := Certificate(kp)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{cert},
		NextProtos:         []string{alpn},
		ServerName:         "pc2",
		InsecureSkipVerify: true, // the chain is replaced by the key check below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, err := PeerID(raw)
			if err != nil {
				return err
			}
			if id != expect {
				return fmt.Errorf("%w: got %s, want %s", ErrWrongPeer, id, expect)
			}
			return nil
		},
	}, nil
}

// StatelessResetKey derives the QUIC stateless reset key from the node key,
// so that a restarted process answers packets of its previous life's
// connections with a stateless reset and peers reconnect at once instead
// of waiting for their idle timeout.
func StatelessResetKey(kp *identity.KeyPair) *quic.StatelessResetKey {
	var k quic.StatelessResetKey
	r := hkdf.New(sha256.New, kp.Seed(), nil, []byte("pc2 quic stateless reset key v1"))
	if _, err := r.Read(k[:]); err != nil {
		return nil
	}
	return &k
}

// Config returns pc2's quic-go settings: large auto-tuned windows (the
// stream window starts at 512 KiB and grows to 16 MiB, the connection's to
// 64 MiB, enough for a Gbit/s stream at 100 ms RTT), maxStreams incoming
// bidirectional streams, and idle as the dead-peer timeout.
func Config(maxStreams int64, idle time.Duration) *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:           5 * time.Second,
		MaxIdleTimeout:                 idle,
		InitialStreamReceiveWindow:     512 << 10,
		MaxStreamReceiveWindow:         16 << 20,
		InitialConnectionReceiveWindow: 1 << 20,
		MaxConnectionReceiveWindow:     64 << 20,
		MaxIncomingStreams:             maxStreams,
		MaxIncomingUniStreams:          -1,
	}
}

// Accept returns the next connection on ln whose peer proved a node key,
// with that node's id; a connection without one is closed and skipped.
// The error is ln's (it is closed, or ctx ended).
func Accept(ctx context.Context, ln *quic.Listener) (*quic.Conn, identity.ID, error) {
	for {
		conn, err := ln.Accept(ctx)
		if err != nil {
			return nil, identity.ID{}, err
		}
		id, err := PeerIDFromState(conn.ConnectionState().TLS)
		if err != nil {
			conn.CloseWithError(1, "no node id")
			continue
		}
		return conn, id, nil
	}
}
