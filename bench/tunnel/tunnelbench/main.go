// Command tunnelbench is the TLS backend, our tunnel's two ends and the
// load generator of the tunnel peer benchmark (bench/tunnel/run.sh), which
// compares pc2's tunnel with frp (bench/tunnel/frp) in one run on loopback.
//
//	tunnelbench cert        -dir D                      cert.pem/key.pem for *.bench.test
//	tunnelbench backend     -listen A -dir D            the local service behind every tunnel
//	tunnelbench ours-server -sni A -tunnel U            supernode side: gateway/sniproxy + relay/tunnel Server
//	tunnelbench ours-client -supernode U -local B -n N  node side: N relay/tunnel Clients in one process
//	tunnelbench idle        -server-pid P -n N -- cmd…  RSS per idle tunnel: runs cmd (N clients), waits for "up N"
//	tunnelbench suite       -direct B -target name=addr@serverpid,clientpid …
//
// The backend answers a ClientHello whose server name starts with "hello."
// with one byte and closes (no crypto: the connection-rate test measures the
// tunnels, not TLS); any other name gets a real TLS 1.3 server that answers
// each line "N\n" with N bytes.
package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/elacity/pc2/core/identity"
)

const (
	bulkName  = "www.bench.test"   // TLS to the backend
	helloName = "hello.bench.test" // ClientHello → one byte back, no TLS
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("tunnelbench: ")
	if len(os.Args) < 2 {
		log.Fatal("usage: tunnelbench cert|backend|ours-server|ours-client|idle|suite [flags]")
	}
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "cert":
		err = runCert(args)
	case "backend":
		err = runBackend(args)
	case "ours-server":
		err = runOursServer(args)
	case "ours-client":
		err = runOursClient(args)
	case "idle":
		err = runIdle(args)
	case "suite":
		err = runSuite(args)
	default:
		err = fmt.Errorf("unknown command %q", cmd)
	}
	if err != nil {
		log.Fatal(err)
	}
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// supernodeKey is the benchmark supernode's fixed identity, so the client
// processes know the id to verify without a key file.
func supernodeKey() *identity.KeyPair {
	seed := sha256.Sum256([]byte("pc2 tunnel benchmark supernode"))
	kp, err := identity.FromSeed(seed[:])
	if err != nil {
		panic(err) // a 32-byte seed cannot fail
	}
	return kp
}
