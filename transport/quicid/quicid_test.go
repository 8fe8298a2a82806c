package quicid

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/quic-go/quic-go"
)

func key(t *testing.T) *identity.KeyPair {
	t.Helper()
	kp, err := identity.Generate(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func TestPeerIDFromCertificate(t *testing.T) {
	kp := key(t)
	c, err := Certificate(kp)
	if err != nil {
		t.Fatal(err)
	}
	id, err := PeerID(c.Certificate)
	if err != nil || id != kp.ID() {
		t.Fatalf("PeerID = %v, %v; want %v", id, err, kp.ID())
	}
	if _, err := PeerID(nil); !errors.Is(err, ErrNoPeerKey) {
		t.Fatalf("no certificate: err = %v", err)
	}
	if _, err := PeerID([][]byte{{1, 2, 3}}); !errors.Is(err, ErrNoPeerKey) {
		t.Fatalf("garbage certificate: err = %v", err)
	}
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &ek.PublicKey, ek)
	if _, err := PeerID([][]byte{der}); !errors.Is(err, ErrNoPeerKey) {
		t.Fatalf("ECDSA certificate: err = %v", err)
	}
}

// handshake runs a TLS 1.3 handshake over a pipe and returns both errors
// and the id the server saw.
func handshake(t *testing.T, server, client *tls.Config) (serr, cerr error, seen identity.ID) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		a, err := ln.Accept()
		if err != nil {
			serr = err
			return
		}
		defer a.Close()
		s := tls.Server(a, server)
		serr = s.Handshake()
		if serr == nil {
			seen, serr = PeerIDFromState(s.ConnectionState())
		}
		a.Close()
	}()
	b, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	cc := tls.Client(b, client)
	cerr = cc.Handshake()
	if cerr == nil {
		// TLS 1.3 clients finish before the server has checked their
		// certificate; a read surfaces the server's verdict.
		b.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		cc.Read(make([]byte, 1))
	}
	b.Close()
	<-done
	return serr, cerr, seen
}

func TestMutualAuthentication(t *testing.T) {
	srv, cli := key(t), key(t)
	var admitted identity.ID
	sc, _ := ServerConfig(srv, "x/1", func(id identity.ID) error { admitted = id; return nil })
	cc, _ := ClientConfig(cli, "x/1", srv.ID())
	serr, cerr, seen := handshake(t, sc, cc)
	if serr != nil || cerr != nil {
		t.Fatalf("handshake: server %v, client %v", serr, cerr)
	}
	if seen != cli.ID() || admitted != cli.ID() {
		t.Fatalf("server saw %v, admitted %v; want %v", seen, admitted, cli.ID())
	}

	// The client refuses a server with another key.
	cc2, _ := ClientConfig(cli, "x/1", key(t).ID())
	if _, cerr, _ := handshake(t, sc, cc2); !errors.Is(cerr, ErrWrongPeer) {
		t.Fatalf("wrong server id: client err = %v, want ErrWrongPeer", cerr)
	}

	// The server refuses a client its admission check refuses.
	deny := errors.New("denied")
	sc2, _ := ServerConfig(srv, "x/1", func(identity.ID) error { return deny })
	if serr, _, _ := handshake(t, sc2, cc); !errors.Is(serr, deny) {
		t.Fatalf("refused client: server err = %v", serr)
	}

	// A client without a certificate is refused.
	bare := cc.Clone()
	bare.Certificates = nil
	if serr, _, _ := handshake(t, sc, bare); serr == nil {
		t.Fatal("server accepted a client without a certificate")
	}
}

func TestStatelessResetKeyIsStable(t *testing.T) {
	kp := key(t)
	a, b := StatelessResetKey(kp), StatelessResetKey(kp)
	if a == nil || *a != *b || *a == *StatelessResetKey(key(t)) {
		t.Fatal("stateless reset key must be a function of the node key")
	}
}

// TestNoResumption: a client with a session cache still gets a full
// handshake the second time, so the node-key check and admit run on every
// connection (a resumed TLS 1.3 handshake skips VerifyPeerCertificate).
func TestNoResumption(t *testing.T) {
	srv, cli := key(t), key(t)
	admits := 0
	sc, _ := ServerConfig(srv, "x/1", func(identity.ID) error { admits++; return nil })
	cc, _ := ClientConfig(cli, "x/1", srv.ID())
	cc.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for i := range 2 {
		done := make(chan error, 1)
		go func() {
			a, err := ln.Accept()
			if err != nil {
				done <- err
				return
			}
			defer a.Close()
			s := tls.Server(a, sc)
			if err := s.Handshake(); err != nil {
				done <- err
				return
			}
			_, err = s.Write([]byte{1}) // after any ticket the server sends
			done <- err
		}()
		b, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Client(b, cc)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		var one [1]byte
		if _, err := c.Read(one[:]); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if c.ConnectionState().DidResume {
			t.Fatalf("connection %d resumed a session", i)
		}
		b.Close()
		if err := <-done; err != nil {
			t.Fatalf("server %d: %v", i, err)
		}
	}
	if admits != 2 {
		t.Fatalf("admit ran %d times, want 2", admits)
	}
}

// TestAccept: Accept hands over a QUIC connection with the peer's proven
// id, and reports the listener's end.
func TestAccept(t *testing.T) {
	srv, cli := key(t), key(t)
	sc, _ := ServerConfig(srv, "x/1", nil)
	cc, _ := ClientConfig(cli, "x/1", srv.ID())
	ln, err := quic.ListenAddr("127.0.0.1:0", sc, Config(10, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		conn, err := quic.DialAddr(ctx, ln.Addr().String(), cc, Config(10, 5*time.Second))
		if err == nil {
			<-conn.Context().Done()
		}
	}()
	conn, id, err := Accept(ctx, ln)
	if err != nil {
		t.Fatal(err)
	}
	if id != cli.ID() {
		t.Fatalf("Accept gave id %v, want %v", id, cli.ID())
	}
	conn.CloseWithError(0, "")
	ln.Close()
	if _, _, err := Accept(ctx, ln); err == nil {
		t.Fatal("Accept on a closed listener returned no error")
	}
}
