// Package host runs the services of one pc2 process and gives them what
// every service needs: identity, configuration, a logger, metrics, storage
// and a clock.
//
// It exists so that the gateway, the DHT, tunnels, relays and plugins share
// one contract, the way Caddy modules and CoreDNS plugins do: a service is
// started with a context and a host handle, and stopped with a context
// whose deadline is the drain budget. Services start in order and stop in
// reverse order, so a service may rely on those started before it.
package host

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/elacity/pc2/core/buildinfo"
	"github.com/elacity/pc2/core/clock"
	"github.com/elacity/pc2/core/config"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/metrics"
	"github.com/elacity/pc2/core/store"
)

// Service is one part of a node: a gateway, a DHT, a tunnel client, a plugin.
type Service interface {
	// Name is unique within a host; it names the service's config section,
	// storage namespace, metrics prefix and log attribute.
	Name() string
	// Start returns once the service is ready (listening, joined...). It
	// must not block for longer than it takes to become ready: work that
	// runs for the life of the service goes into goroutines it owns.
	// ctx is for start-up only and must not be kept.
	Start(ctx context.Context, h Handle) error
	// Stop ends the service. ctx's deadline is the drain budget: finish
	// open work until then, close everything when it expires.
	Stop(ctx context.Context) error
}

// Handle is what a host gives a service, scoped to that service.
type Handle interface {
	Identity() *identity.KeyPair
	// Config returns the core configuration (role, data dir, dev mode).
	Config() *config.Config
	// Section returns the service's own section of the config file.
	Section() *config.Section
	Logger() *slog.Logger
	Metrics() *metrics.Registry
	Storage() *store.Namespace
	Clock() clock.Clock
}

// Info describes a running host. It is written to the run file and to the
// readiness channel, so tools (devnet, status) can find a node.
type Info struct {
	PID      int               `json:"pid"`
	Role     config.Role       `json:"role"`
	ID       identity.ID       `json:"id"`
	DID      string            `json:"did"`
	DataDir  string            `json:"dataDir"`
	Metrics  string            `json:"metrics,omitempty"` // http://host:port/metrics
	Services []string          `json:"services"`
	Version  string            `json:"version"`
	Extra    map[string]string `json:"extra,omitempty"` // service-provided endpoints
}

// Options are the parts of a host that are not in the config file.
type Options struct {
	Config   *config.Config
	Services []Service
	Log      io.Writer   // default os.Stderr
	Clock    clock.Clock // default clock.Real
}

// Host runs services. Create it with New and call Run once.
type Host struct {
	cfg      *config.Config
	services []Service
	id       *identity.KeyPair
	log      *slog.Logger
	metrics  *metrics.Registry
	db       *store.DB
	clock    clock.Clock
	extra    map[string]string
}

// New loads or creates the identity and opens the database. A damaged key
// file is an error: a new identity is created only when there is no file.
func New(opts Options) (*Host, error) {
	cfg := opts.Config
	if cfg == nil {
		return nil, errors.New("host: no config")
	}
	seen := map[string]bool{}
	for _, s := range opts.Services {
		if seen[s.Name()] {
			return nil, fmt.Errorf("host: two services named %q", s.Name())
		}
		seen[s.Name()] = true
	}
	w := opts.Log
	if w == nil {
		w = os.Stderr
	}
	log := NewLogger(w, cfg.Log)
	h := &Host{
		cfg:      cfg,
		services: opts.Services,
		log:      log,
		metrics:  metrics.New(),
		clock:    opts.Clock,
		extra:    map[string]string{},
	}
	if h.clock == nil {
		h.clock = clock.Real{}
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	kp, created, err := LoadIdentity(cfg)
	if err != nil {
		return nil, err
	}
	if created {
		log.Warn("created a new identity; back up the key file, or create identities with `pc2 id new` to get recovery words",
			"did", kp.ID().DID(), "keyFile", cfg.KeyFilePath())
	}
	h.id = kp
	db, err := store.Open(cfg.DBPath(), 2*time.Second)
	if err != nil {
		return nil, err
	}
	h.db = db
	return h, nil
}

// LoadIdentity returns the configured key: inline, from the key file, or a
// new one written to the key file when that file does not exist.
func LoadIdentity(cfg *config.Config) (kp *identity.KeyPair, created bool, err error) {
	if cfg.Identity.PrivateKey != "" {
		kp, err := identity.ParsePrivateKey(cfg.Identity.PrivateKey)
		if err != nil {
			return nil, false, fmt.Errorf("identity.privateKey: %w", err)
		}
		return kp, false, nil
	}
	path := cfg.KeyFilePath()
	kp, err = identity.LoadKeyFile(path)
	if err == nil {
		return kp, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("%w (refusing to create a new identity over it)", err)
	}
	kp, err = identity.Generate(randReader)
	if err != nil {
		return nil, false, err
	}
	if err := identity.WriteKeyFile(path, kp); err != nil {
		return nil, false, err
	}
	return kp, true, nil
}

// ID returns the host's identity.
func (h *Host) ID() identity.ID { return h.id.ID() }

// Logger returns the process logger.
func (h *Host) Logger() *slog.Logger { return h.log }

// Metrics returns the root registry.
func (h *Host) Metrics() *metrics.Registry { return h.metrics }

// Run starts the metrics endpoint and the services, calls ready (if not
// nil) with the host's Info, waits for ctx to end, then stops the services
// in reverse order within the configured drain time. It returns the first
// start error, or the joined stop errors.
func (h *Host) Run(ctx context.Context, ready func(Info)) (err error) {
	defer func() {
		if cerr := h.db.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close store: %w", cerr)
		}
	}()
	info := h.info()
	h.metrics.Gauge("build_info", func() float64 { return 1 }, "version", buildinfo.Version, "role", string(h.cfg.Role))
	start := h.clock.Now()
	h.metrics.Gauge("start_time_seconds", func() float64 { return float64(start.Unix()) })

	stopMetrics, addr, err := h.serveMetrics()
	if err != nil {
		return err
	}
	defer stopMetrics()
	if addr != "" {
		info.Metrics = "http://" + addr + "/metrics"
	}

	started := 0
	for _, s := range h.services {
		h.log.Debug("starting", "service", s.Name())
		if err := s.Start(ctx, h.handle(s)); err != nil {
			h.stop(started)
			return fmt.Errorf("start %s: %w", s.Name(), err)
		}
		started++
		h.metrics.Gauge("service_up", func() float64 { return 1 }, "service", s.Name())
	}
	info.Extra = h.extra
	if err := h.writeRunFile(info); err != nil {
		h.log.Warn("cannot write run file", "err", err)
	}
	defer os.Remove(h.runFile())
	h.log.Info("ready", "role", h.cfg.Role, "did", info.DID, "metrics", info.Metrics, "dataDir", info.DataDir)
	if ready != nil {
		ready(info)
	}
	notifySystemd("READY=1")

	<-ctx.Done()
	h.log.Info("stopping", "drain", h.cfg.Shutdown.Drain)
	notifySystemd("STOPPING=1")
	return h.stop(started)
}

// stop stops the first n services in reverse order under one drain
// deadline: services late in the line get what the earlier ones left.
func (h *Host) stop(n int) error {
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.Shutdown.Drain)
	defer cancel()
	var errs []error
	for i := n - 1; i >= 0; i-- {
		s := h.services[i]
		if err := s.Stop(ctx); err != nil {
			h.log.Warn("stop", "service", s.Name(), "err", err)
			errs = append(errs, fmt.Errorf("stop %s: %w", s.Name(), err))
		}
	}
	if ctx.Err() != nil {
		h.log.Warn("drain time ran out; open work was cut", "drain", h.cfg.Shutdown.Drain)
	}
	return errors.Join(errs...)
}

func (h *Host) info() Info {
	names := make([]string, len(h.services))
	for i, s := range h.services {
		names[i] = s.Name()
	}
	return Info{
		PID:      os.Getpid(),
		Role:     h.cfg.Role,
		ID:       h.id.ID(),
		DID:      h.id.ID().DID(),
		DataDir:  h.cfg.DataDir,
		Services: names,
		Version:  buildinfo.Version,
	}
}

func (h *Host) serveMetrics() (stop func(), addr string, err error) {
	listen := h.cfg.Metrics.Listen
	if listen == "off" {
		return func() {}, "", nil
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, "", fmt.Errorf("metrics.listen %s: %w", listen, err)
	}
	if ip := ln.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
		h.log.Warn("metrics endpoint is reachable from the network; keep it on loopback or behind a firewall", "addr", ln.Addr())
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h.metrics.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return func() { srv.Close() }, ln.Addr().String(), nil
}

func (h *Host) runFile() string { return filepath.Join(h.cfg.DataDir, "run.json") }

func (h *Host) writeRunFile(info Info) error {
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	tmp := h.runFile() + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, h.runFile())
}

// ReadRunFile returns the Info a running host wrote to dataDir.
func ReadRunFile(dataDir string) (Info, error) {
	var info Info
	b, err := os.ReadFile(filepath.Join(dataDir, "run.json"))
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return info, fmt.Errorf("run file: %w", err)
	}
	return info, nil
}

// NewLogger builds the process logger from the log section.
func NewLogger(w io.Writer, c config.Log) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(strings.ToUpper(c.Level))); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// notifySystemd implements the sd_notify datagram so pc2 can run as a
// systemd Type=notify unit; it does nothing outside systemd.
func notifySystemd(state string) {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return
	}
	defer conn.Close()
	conn.Write([]byte(state))
}

// NotifyReadyFD writes info as one JSON line to the file descriptor named
// by the PC2_READY_FD environment variable, if set. A parent process (the
// devnet) learns that its child is ready, and its id and endpoints, without
// polling or parsing logs.
func NotifyReadyFD(info Info) error {
	v := os.Getenv("PC2_READY_FD")
	if v == "" {
		return nil
	}
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return fmt.Errorf("PC2_READY_FD=%q is not a descriptor number ≥ 3", v)
	}
	f := os.NewFile(uintptr(fd), "ready")
	defer f.Close()
	b, err := json.Marshal(info)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	return err
}
