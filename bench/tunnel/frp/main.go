// Command frpbench runs frp v0.61.1's server (frps) or N of its clients
// (frpc) in one process, built from frp's own packages as an ordinary module
// dependency, for the tunnel peer benchmark (bench/tunnel/run.sh).
//
// It lives in its own module because frp v0.61.1 needs quic-go v0.48 (the
// quic.Connection interface API) while pc2 needs quic-go v0.65: one module
// cannot hold both.
//
//	frpbench frps -bind 127.0.0.1:7000 -quic 7001 -vhost 127.0.0.1:8443
//	frpbench frpc -server 127.0.0.1:7000 -proto tcp|quic -local 127.0.0.1:4000 -domains a,b -n 1
//
// frpc with -n > 1 runs n independent clients (one login, one mux session
// each; client 0 carries -domains, the others one private domain each) and
// prints "up N" once all n proxies run, then waits for SIGTERM or stdin EOF.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fatedier/frp/client"
	"github.com/fatedier/frp/client/proxy"
	v1 "github.com/fatedier/frp/pkg/config/v1"
	"github.com/fatedier/frp/pkg/config/v1/validation"
	frplog "github.com/fatedier/frp/pkg/util/log"
	"github.com/fatedier/frp/server"
)

const token = "pc2-bench-token"

func main() {
	log.SetFlags(0)
	log.SetPrefix("frpbench: ")
	if len(os.Args) < 2 {
		log.Fatal("usage: frpbench frps|frpc [flags]")
	}
	var err error
	switch os.Args[1] {
	case "frps":
		err = runServer(os.Args[2:])
	case "frpc":
		err = runClients(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		log.Fatal(err)
	}
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func hostPort(s string) (string, int, error) {
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(p)
	return h, n, err
}

func runServer(args []string) error {
	fs := flag.NewFlagSet("frps", flag.ExitOnError)
	bind := fs.String("bind", "127.0.0.1:7000", "control/work connection address (TCP, TLS + yamux)")
	quicPort := fs.Int("quic", 0, "UDP port for QUIC clients on the bind host (0: none)")
	vhost := fs.String("vhost", "127.0.0.1:8443", "HTTPS vhost (SNI) address for visitors")
	_ = fs.Parse(args)
	host, port, err := hostPort(*bind)
	if err != nil {
		return err
	}
	_, vport, err := hostPort(*vhost)
	if err != nil {
		return err
	}
	cfg := &v1.ServerConfig{
		BindAddr:       host,
		BindPort:       port,
		QUICBindPort:   *quicPort,
		ProxyBindAddr:  host,
		VhostHTTPSPort: vport,
	}
	cfg.Auth.Token = token
	cfg.Log.Level = "error"
	cfg.Complete()
	if _, err := validation.ValidateServerConfig(cfg); err != nil {
		return err
	}
	frplog.InitLogger(cfg.Log.To, cfg.Log.Level, int(cfg.Log.MaxDays), cfg.Log.DisablePrintColor)
	svr, err := server.NewService(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	go svr.Run(ctx)
	<-ctx.Done()
	// frps's Run does not return on its own after Close; the process exits.
	svr.Close()
	return nil
}

func runClients(args []string) error {
	fs := flag.NewFlagSet("frpc", flag.ExitOnError)
	srv := fs.String("server", "127.0.0.1:7000", "frps address (TCP port, or the QUIC port with -proto quic)")
	proto := fs.String("proto", "tcp", "tcp (TLS + yamux tcpMux, frp's default) or quic")
	local := fs.String("local", "127.0.0.1:4000", "local service every proxy forwards to")
	domains := fs.String("domains", "www.bench.test", "comma-separated SNI names of client 0's https proxy")
	n := fs.Int("n", 1, "clients in this process")
	watchStdin := fs.Bool("watch-stdin", true, "exit when stdin closes (the parent is gone)")
	_ = fs.Parse(args)
	host, port, err := hostPort(*srv)
	if err != nil {
		return err
	}
	lhost, lport, err := hostPort(*local)
	if err != nil {
		return err
	}
	frplog.InitLogger("console", "error", 1, true)
	ctx, cancel := signalContext()
	defer cancel()
	if *watchStdin {
		go func() { io.Copy(io.Discard, os.Stdin); cancel() }() // parent gone: exit
	}

	type running struct {
		svc  *client.Service
		name string
	}
	all := make([]running, 0, *n)
	for i := range *n {
		common := &v1.ClientCommonConfig{ServerAddr: host, ServerPort: port}
		common.Auth.Token = token
		common.LoginFailExit = new(bool) // retry like a real frpc under load
		common.Transport.Protocol = *proto
		common.Log.Level = "error"
		common.Complete()
		if _, err := validation.ValidateClientCommonConfig(common); err != nil {
			return err
		}
		pc := &v1.HTTPSProxyConfig{}
		pc.Name = fmt.Sprintf("https%d", i)
		pc.Type = string(v1.ProxyTypeHTTPS)
		pc.LocalIP = lhost
		pc.LocalPort = lport
		if i == 0 {
			pc.CustomDomains = strings.Split(*domains, ",")
		} else {
			pc.CustomDomains = []string{fmt.Sprintf("n%d.idle.bench.test", i)}
		}
		pc.Complete("")
		svc, err := client.NewService(client.ServiceOptions{Common: common, ProxyCfgs: []v1.ProxyConfigurer{pc}})
		if err != nil {
			return err
		}
		go svc.Run(ctx)
		all = append(all, running{svc, pc.Name})
	}
	deadline := time.Now().Add(120 * time.Second)
	for {
		up := 0
		for _, r := range all {
			if st, ok := r.svc.StatusExporter().GetProxyStatus(r.name); ok && st.Phase == proxy.ProxyPhaseRunning {
				up++
			}
		}
		if up == len(all) {
			fmt.Printf("up %d\n", up)
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("only %d of %d frp clients running", up, len(all))
		}
		time.Sleep(50 * time.Millisecond)
	}
	<-ctx.Done()
	return nil // the process exit closes every session
}
