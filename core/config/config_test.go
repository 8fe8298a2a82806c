package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pc2.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultsAreValid(t *testing.T) {
	for _, role := range []Role{RoleSupernode, RoleNode} {
		for _, dev := range []bool{false, true} {
			c, err := Load("", role, dev, nil)
			if err != nil {
				t.Fatalf("%s dev=%v: %v", role, dev, err)
			}
			if !strings.HasSuffix(c.DataDir, string(role)) || c.KeyFilePath() != filepath.Join(c.DataDir, "key") {
				t.Errorf("%s dev=%v: data dir %s key %s", role, dev, c.DataDir, c.KeyFilePath())
			}
			if dev && c.Metrics.Listen != "127.0.0.1:0" {
				t.Errorf("dev metrics %s", c.Metrics.Listen)
			}
		}
	}
}

func TestFileOverridesDefaults(t *testing.T) {
	p := writeFile(t, `
dataDir: /srv/pc2
log:
  level: debug
shutdown:
  drain: 2s
dht:
  port: 39001
`)
	c, err := Load(p, RoleNode, false, []string{"dht"})
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "/srv/pc2" || c.Log.Level != "debug" || c.Log.Format != "text" || c.Shutdown.Drain != 2*time.Second {
		t.Fatalf("got %+v", c)
	}
	var dht struct {
		Port int    `yaml:"port"`
		Mode string `yaml:"mode"`
	}
	dht.Mode = "v3"
	if err := c.Section("dht").Decode(&dht); err != nil {
		t.Fatal(err)
	}
	if dht.Port != 39001 || dht.Mode != "v3" {
		t.Fatalf("section = %+v", dht)
	}
	if c.Section("gateway").Present() {
		t.Fatal("absent section reported present")
	}
}

func TestErrorsNameFileLineField(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       []string
	}{
		{"unknown top-level with suggestion", "metrcs:\n  listen: x\n", []string{"pc2.yaml:1:", `unknown field "metrcs"`, `did you mean "metrics"`}},
		{"unknown nested", "log:\n  level: info\n  colour: red\n", []string{"pc2.yaml:3:", "log:", `unknown field "colour"`}},
		{"wrong type", "shutdown:\n  drain: soon\n", []string{"pc2.yaml:2:", "soon"}},
		{"bad value", "\n\nlog:\n  level: loud\n", []string{"pc2.yaml:4:", "log.level:", `"loud" is not one of`}},
		{"bad listen", "metrics:\n  listen: 9339\n", []string{"pc2.yaml:2:", "metrics.listen:", "host:port"}},
		{"syntax", "log:\n  level: [info\n", []string{"pc2.yaml:"}},
		{"not a mapping", "- a\n- b\n", []string{"pc2.yaml:1:", "mapping"}},
		{"tab indentation", "log:\n\tlevel: info\n", []string{"pc2.yaml:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeFile(t, tc.body), RoleNode, false, nil)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestSectionErrors(t *testing.T) {
	p := writeFile(t, "gateway:\n  listen: \":443\"\n  domians: [ela.city]\n")
	c, err := Load(p, RoleSupernode, false, []string{"gateway"})
	if err != nil {
		t.Fatal(err)
	}
	var gw struct {
		Listen  string   `yaml:"listen"`
		Domains []string `yaml:"domains"`
	}
	err = c.Section("gateway").Decode(&gw)
	if err == nil || !strings.Contains(err.Error(), "pc2.yaml:3: gateway: unknown field \"domians\" (did you mean \"domains\"?)") {
		t.Fatalf("got %v", err)
	}
	if e := c.Section("gateway").Errorf("listen", "port 443 needs root"); !strings.Contains(e.Error(), "pc2.yaml:2: gateway.listen: port 443 needs root") {
		t.Fatalf("Errorf = %v", e)
	}
}

func TestEmptyAndOversizedFiles(t *testing.T) {
	if _, err := Load(writeFile(t, ""), RoleNode, false, nil); err != nil {
		t.Fatalf("empty file: %v", err)
	}
	if _, err := Load(writeFile(t, "# only a comment\n"), RoleNode, false, nil); err != nil {
		t.Fatalf("comment-only file: %v", err)
	}
	big := "dataDir: x\n" + strings.Repeat("#", MaxFileSize)
	if _, err := Load(writeFile(t, big), RoleNode, false, nil); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("oversized: %v", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml"), RoleNode, false, nil); err == nil {
		t.Fatal("missing file accepted")
	}
}

func TestSectionChecks(t *testing.T) {
	p := writeFile(t, "svc:\n  listen: nowhere\n  a: 0s\n  b: 2h\n  c: 1s\n")
	c, err := Load(p, RoleNode, false, []string{"svc"})
	if err != nil {
		t.Fatal(err)
	}
	sec := c.Section("svc")
	var raw map[string]any
	if err := sec.Decode(&raw); err != nil { // a service decodes before it validates
		t.Fatal(err)
	}
	if err := sec.CheckHostPort("listen", "nowhere"); err == nil || !strings.Contains(err.Error(), "pc2.yaml:2: svc.listen:") {
		t.Fatalf("CheckHostPort = %v", err)
	}
	if err := sec.CheckHostPort("listen", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	err = sec.CheckDurations(time.Hour, map[string]time.Duration{"a": 0, "b": 2 * time.Hour, "c": time.Second})
	msg := fmt.Sprint(err)
	if !strings.Contains(msg, "pc2.yaml:3: svc.a: 0s is outside (0, 1h0m0s]") || !strings.Contains(msg, "pc2.yaml:4: svc.b:") || strings.Contains(msg, "svc.c") {
		t.Fatalf("CheckDurations = %v", err)
	}
}
