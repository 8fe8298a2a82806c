// Command snibench is the load generator, backends and our proxy for the
// SNI passthrough peer benchmark (bench/sni/run.sh). Every proxy is
// measured against the same loopback backends in one run, in interleaved
// rounds, so the results are comparable ratios.
//
//	snibench cert       -dir D                    write cert.pem/key.pem for *.bench.test
//	snibench rawbackend -listen A                 canned-hello backend: no TLS after the hello
//	snibench backend    -listen A -dir D          TLS backend (the optional TLS bulk variant)
//	snibench proxy      -listen A -route N=B ...  our gateway/sniproxy with a name router
//	snibench suite      -direct B -target name=addr[@pid] ...   run all measurements, print Markdown
//	snibench plainrelay -listen A -backend B      reference: io.Copy relay, no SNI (not a peer)
//	snibench load       -addr A -mode rate|bulk -streams N -d D   one load, for profiling a proxy
//
// The raw backend speaks this protocol, so that neither end does TLS
// crypto and the proxies' own costs are what differ: the client sends a
// canned ClientHello (one TLS record, captured from crypto/tls); the
// backend reads exactly that record and answers one byte 'S' (the stand-in
// for a ServerHello, the "first byte back"); then the client may send 'D'
// and the backend streams bytes until the connection closes.
package main

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/elacity/pc2/gateway/clienthello/hellotest"
	"github.com/elacity/pc2/gateway/sniproxy"
	"github.com/elacity/pc2/gateway/testcert"
)

// benchName is the server name of the canned hello (raw backend); tlsName
// is routed to the TLS backend.
const (
	benchName = "www.bench.test"
	tlsName   = "tls.bench.test"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("snibench: ")
	if len(os.Args) < 2 {
		log.Fatal("usage: snibench cert|rawbackend|backend|proxy|suite [flags]")
	}
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "cert":
		err = runCert(args)
	case "rawbackend":
		err = runRawBackend(args)
	case "backend":
		err = runTLSBackend(args)
	case "proxy":
		err = runProxy(args)
	case "suite":
		err = runSuite(args)
	case "load":
		err = runLoad(args)
	case "plainrelay":
		err = runPlainRelay(args)
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

// cannedHello is a real crypto/tls ClientHello for benchName in one record.
func cannedHello() []byte {
	return hellotest.MustCapture(hellotest.Configs(benchName)["default"])
}

func runCert(args []string) error {
	fs := newFlags("cert")
	dir := fs.String("dir", "", "output directory")
	_ = fs.Parse(args)
	cert, _, err := testcert.New(benchName, "*.bench.test")
	if err != nil {
		return err
	}
	c, k, err := testcert.PEM(cert)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*dir, "cert.pem"), c, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(*dir, "key.pem"), k, 0o600)
}

// mapRouter routes exact names; the map is read-only once serving.
type mapRouter map[string]sniproxy.Target

func (r mapRouter) Route(_ context.Context, name string) (sniproxy.Target, error) {
	if t, ok := r[name]; ok {
		return t, nil
	}
	return sniproxy.Target{}, sniproxy.ErrUnknownName
}

func runProxy(args []string) error {
	fs := newFlags("proxy")
	addr := fs.String("listen", "127.0.0.1:47443", "listen address")
	var routes multiFlag
	fs.Var(&routes, "route", "name=host:port, repeatable")
	maxConns := fs.Int("maxconns", 0, "concurrent connection bound (0: the package default)")
	perIP := fs.Int("pending-per-ip", 1024, "pending hellos per source IP (the rate load comes from one IP)")
	pprofAddr := fs.String("pprof", "", "serve net/http/pprof on this address (profiling)")
	listeners := fs.Int("listeners", 1, "accept loops (SO_REUSEPORT listeners)")
	parkAfter := fs.Duration("park-after", 0, "sniproxy Config.ParkAfter (0: the package default)")
	// SNIBENCH_GOROUTINES=1 sets the default so run.sh VARIANTS (which pass
	// environment, not flags) can compare the two data paths.
	goroutines := fs.Bool("goroutines", os.Getenv("SNIBENCH_GOROUTINES") == "1", "use the goroutine data path (a custom dialer) instead of the event loops")
	_ = fs.Parse(args)
	if *pprofAddr != "" {
		go func() { log.Print(http.ListenAndServe(*pprofAddr, nil)) }()
	}
	router := mapRouter{}
	for _, r := range routes {
		name, addr, ok := strings.Cut(r, "=")
		if !ok {
			return fmt.Errorf("bad -route %q", r)
		}
		router[name] = sniproxy.Target{Addr: addr}
	}
	srv, err := sniproxy.New(sniproxy.Config{
		Router:          router,
		MaxConns:        *maxConns,
		MaxPendingPerIP: *perIP,
		ParkAfter:       *parkAfter,
		Dial:            goroutineDial(*goroutines),
		Logger:          slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	lns, err := listenProxy(ctx, *addr, *listeners)
	if err != nil {
		return err
	}
	errc := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { errc <- srv.Serve(ctx, ln) }()
	}
	var first error
	for range lns {
		if err := <-errc; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}

// runLoad applies one load to one address and prints the figure, with
// the CPU time the given processes used meanwhile (for profiling).
func runLoad(args []string) error {
	fs := newFlags("load")
	addr := fs.String("addr", "127.0.0.1:47443", "proxy or backend address")
	mode := fs.String("mode", "bulk", "rate or bulk")
	streams := fs.Int("streams", 1, "bulk connections, or rate workers")
	d := fs.Duration("d", 5*time.Second, "duration")
	pids := fs.String("pids", "", "comma-separated pids whose CPU time to report")
	_ = fs.Parse(args)
	hello := cannedHello()
	before := cpuTicks(*pids)
	switch *mode {
	case "bulk":
		n, took, err := bulkRaw(*addr, hello, *streams, *d)
		if err != nil {
			return err
		}
		fmt.Printf("bulk %d streams: %.0f MB/s\n", *streams, float64(n)/took.Seconds()/1e6)
	case "rate":
		ok, fail, took, err := rate(*addr, hello, *streams, *d)
		fmt.Printf("rate c=%d: %.0f conns/s, %d failed (%v)\n", *streams, float64(ok)/took.Seconds(), fail, err)
	default:
		return fmt.Errorf("unknown mode %q", *mode)
	}
	after := cpuTicks(*pids)
	for i, p := range strings.Split(*pids, ",") {
		if p != "" && i < len(before) {
			fmt.Printf("pid %s: %.2f CPU-s\n", p, float64(after[i]-before[i])/100)
		}
	}
	return nil
}

// cpuTicks reads utime+stime (clock ticks) of each pid in a comma list.
func cpuTicks(pids string) []int64 {
	var out []int64
	for _, p := range strings.Split(pids, ",") {
		if p == "" {
			continue
		}
		b, err := os.ReadFile("/proc/" + p + "/stat")
		if err != nil {
			out = append(out, 0)
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		out = append(out, u+st)
	}
	return out
}

// goroutineDial returns a plain dialer when on, which makes the Server use
// its goroutine data path (for comparing the two); nil keeps the default.
func goroutineDial(on bool) func(context.Context, string) (net.Conn, error) {
	if !on {
		return nil
	}
	d := &net.Dialer{KeepAlive: -1}
	return func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
}
