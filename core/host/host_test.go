package host

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elacity/pc2/core/config"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/store"
)

type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) add(e string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.events, " ")
}

type fakeService struct {
	name     string
	rec      *recorder
	startErr error
	onStart  func(Handle) error
	blockOn  bool // Stop waits for its context to end
	stopDL   time.Time
}

func (f *fakeService) Name() string { return f.name }

func (f *fakeService) Start(ctx context.Context, h Handle) error {
	f.rec.add("start:" + f.name)
	if f.onStart != nil {
		if err := f.onStart(h); err != nil {
			return err
		}
	}
	return f.startErr
}

func (f *fakeService) Stop(ctx context.Context) error {
	f.rec.add("stop:" + f.name)
	f.stopDL, _ = ctx.Deadline()
	if f.blockOn {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

func testConfig(t *testing.T) *config.Config {
	c := config.Default(config.RoleNode, true)
	c.DataDir = t.TempDir()
	c.Shutdown.Drain = 2 * time.Second
	return c
}

func TestRunStartsInOrderStopsInReverse(t *testing.T) {
	rec := &recorder{}
	cfg := testConfig(t)
	var logs bytes.Buffer
	var metricsURL string
	a := &fakeService{name: "a", rec: rec, onStart: func(h Handle) error {
		h.Metrics().Counter("things_total").Add(7)
		h.Logger().Info("hello from a")
		h.(Advertiser).Advertise("listen", "127.0.0.1:1234")
		return h.Storage().Update(func(tx *store.Tx) error { return tx.Put([]byte("k"), []byte("v")) })
	}}
	b := &fakeService{name: "b", rec: rec}
	h, err := New(Options{Config: cfg, Services: []Service{a, b}, Log: &logs})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	readyInfo := make(chan Info, 1)
	go func() { done <- h.Run(ctx, func(i Info) { readyInfo <- i }) }()
	info := <-readyInfo
	metricsURL = info.Metrics
	if info.ID != h.ID() || info.Extra["a.listen"] != "127.0.0.1:1234" || len(info.Services) != 2 {
		t.Fatalf("info = %+v", info)
	}
	onDisk, err := ReadRunFile(cfg.DataDir)
	if err != nil || onDisk.ID != info.ID || onDisk.PID != os.Getpid() {
		t.Fatalf("run file: %+v %v", onDisk, err)
	}
	resp, err := http.Get(metricsURL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"pc2_a_things_total 7", `pc2_service_up{service="b"} 1`, `pc2_build_info{`, "process_resident_memory_bytes"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := rec.String(); got != "start:a start:b stop:b stop:a" {
		t.Fatalf("order: %s", got)
	}
	if !strings.Contains(logs.String(), "service=a") || !strings.Contains(logs.String(), "hello from a") {
		t.Errorf("service logger not scoped:\n%s", logs.String())
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "run.json")); !errors.Is(err, os.ErrNotExist) {
		t.Error("run file left after stop")
	}
	// Storage written by a survived: reopen the database.
	db, err := store.Open(cfg.DBPath(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.Namespace("a").View(func(tx *store.Tx) error {
		if string(tx.Get([]byte("k"))) != "v" {
			t.Error("service storage lost")
		}
		return nil
	})
}

func TestStartFailureUnwinds(t *testing.T) {
	rec := &recorder{}
	boom := errors.New("boom")
	svcs := []Service{
		&fakeService{name: "a", rec: rec},
		&fakeService{name: "b", rec: rec},
		&fakeService{name: "c", rec: rec, startErr: boom},
		&fakeService{name: "d", rec: rec},
	}
	h, err := New(Options{Config: testConfig(t), Services: svcs, Log: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	err = h.Run(context.Background(), func(Info) { t.Error("ready called after a failed start") })
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "start c") {
		t.Fatalf("err = %v", err)
	}
	if got := rec.String(); got != "start:a start:b start:c stop:b stop:a" {
		t.Fatalf("order: %s", got)
	}
}

func TestDrainIsBounded(t *testing.T) {
	rec := &recorder{}
	cfg := testConfig(t)
	cfg.Shutdown.Drain = 200 * time.Millisecond
	slow := &fakeService{name: "slow", rec: rec, blockOn: true}
	after := &fakeService{name: "first", rec: rec}
	h, _ := New(Options{Config: cfg, Services: []Service{after, slow}, Log: io.Discard})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := h.Run(ctx, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the slow service's deadline error", err)
	}
	if slow.stopDL.IsZero() || after.stopDL != slow.stopDL {
		t.Fatal("services did not share one drain deadline")
	}
	if got := rec.String(); got != "start:first start:slow stop:slow stop:first" {
		t.Fatalf("order: %s", got)
	}
}

func TestDuplicateServiceNames(t *testing.T) {
	rec := &recorder{}
	_, err := New(Options{Config: testConfig(t), Services: []Service{&fakeService{name: "x", rec: rec}, &fakeService{name: "x", rec: rec}}})
	if err == nil {
		t.Fatal("duplicate names accepted")
	}
}

func TestIdentityLoadOrCreate(t *testing.T) {
	cfg := testConfig(t)
	kp, created, err := LoadIdentity(cfg)
	if err != nil || !created {
		t.Fatalf("first: %v created=%v", err, created)
	}
	again, created, err := LoadIdentity(cfg)
	if err != nil || created || again.ID() != kp.ID() {
		t.Fatalf("second: %v created=%v", err, created)
	}
	// Damage the key: the host must refuse, not create a new identity.
	os.WriteFile(cfg.KeyFilePath(), []byte("short"), 0o600)
	if _, _, err := LoadIdentity(cfg); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Fatalf("damaged key: %v", err)
	}
	if b, _ := os.ReadFile(cfg.KeyFilePath()); string(b) != "short" {
		t.Fatal("damaged key file was replaced")
	}
	if _, err := New(Options{Config: cfg, Log: io.Discard}); err == nil {
		t.Fatal("host started with a damaged key")
	}
	// Inline key wins over the file.
	inline, _ := identity.Generate(randReader)
	cfg.Identity.PrivateKey = inline.Base58()
	got, _, err := LoadIdentity(cfg)
	if err != nil || got.ID() != inline.ID() {
		t.Fatalf("inline: %v", err)
	}
}

func TestSecondHostOnSameDataDirFails(t *testing.T) {
	cfg := testConfig(t)
	h1, err := New(Options{Config: cfg, Log: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	defer h1.db.Close()
	if _, err := New(Options{Config: cfg, Log: io.Discard}); !errors.Is(err, store.ErrInUse) {
		t.Fatalf("second host: %v", err)
	}
}
