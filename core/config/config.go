// Package config reads the one pc2 configuration file (YAML) and holds the
// defaults that let every role start with no file at all.
//
// YAML was chosen over TOML because its node tree keeps a line number for
// every key and value, so every error — syntax, unknown field, wrong type or
// a value that fails validation — can name file, line and field; and because
// Boson nodes are configured in YAML, so operators of both recognise it.
//
// The core owns a few top-level sections (dataDir, identity, log, metrics,
// shutdown). Every other top-level key is the section of one service, kept
// as a YAML node and decoded by that service with the same strictness.
package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Role is what a pc2 process runs as.
type Role string

const (
	RoleSupernode Role = "supernode"
	RoleNode      Role = "node"
)

// MaxFileSize bounds the configuration file read.
const MaxFileSize = 1 << 20

// Config is the core part of the configuration.
type Config struct {
	// DataDir holds the key, the database and run files.
	DataDir  string   `yaml:"dataDir"`
	Identity Identity `yaml:"identity"`
	Log      Log      `yaml:"log"`
	Metrics  Metrics  `yaml:"metrics"`
	Shutdown Shutdown `yaml:"shutdown"`

	// Role and Dev are set by the command, not the file.
	Role Role `yaml:"-"`
	Dev  bool `yaml:"-"`

	sections map[string]*Section
	source   *source
}

// Identity says where the node's private key is.
type Identity struct {
	// KeyFile is the 64-byte key file, relative to DataDir unless absolute.
	// It is created on first start if missing.
	KeyFile string `yaml:"keyFile"`
	// PrivateKey, if set, is the key itself as Base58 or 0x hex of the 64
	// bytes (the Boson node.yaml form); KeyFile is then not used.
	PrivateKey string `yaml:"privateKey"`
}

// Log configures the process logger.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text or json
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	// Listen is host:port of the /metrics endpoint; "off" disables it.
	// Port 0 picks a free port (the chosen address is logged).
	Listen string `yaml:"listen"`
}

// Shutdown bounds the graceful stop.
type Shutdown struct {
	// Drain is how long services get to finish open work after SIGINT or
	// SIGTERM before the process exits anyway.
	Drain time.Duration `yaml:"drain"`
}

// Default returns the configuration used when no file is given.
func Default(role Role, dev bool) *Config {
	c := &Config{
		Role:     role,
		Dev:      dev,
		DataDir:  defaultDataDir(role, dev),
		Identity: Identity{KeyFile: "key"},
		Log:      Log{Level: "info", Format: "text"},
		Metrics:  Metrics{Listen: defaultMetricsListen(role, dev)},
		Shutdown: Shutdown{Drain: 10 * time.Second},
		sections: map[string]*Section{},
	}
	if dev {
		c.Shutdown.Drain = 3 * time.Second
	}
	return c
}

func defaultMetricsListen(role Role, dev bool) string {
	if dev {
		return "127.0.0.1:0"
	}
	if role == RoleSupernode {
		return "127.0.0.1:9339"
	}
	return "127.0.0.1:9340"
}

// defaultDataDir follows the XDG base directories for users and /var/lib
// for root; dev mode keeps its state in the temp directory.
func defaultDataDir(role Role, dev bool) string {
	if dev {
		return filepath.Join(os.TempDir(), fmt.Sprintf("pc2-dev-%d", os.Getuid()), string(role))
	}
	if os.Getuid() == 0 {
		return filepath.Join("/var/lib/pc2", string(role))
	}
	if x := os.Getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "pc2", string(role))
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "pc2", string(role))
	}
	return filepath.Join(".", "pc2-data", string(role))
}

// KeyFilePath returns the key file's absolute path.
func (c *Config) KeyFilePath() string { return c.path(c.Identity.KeyFile) }

// DBPath returns the database file's path.
func (c *Config) DBPath() string { return filepath.Join(c.DataDir, "pc2.db") }

func (c *Config) path(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.DataDir, p)
}

// Section returns the raw section of a service, or an empty section when the
// file has none (the service then keeps its defaults).
func (c *Config) Section(name string) *Section {
	if s, ok := c.sections[name]; ok {
		return s
	}
	return &Section{name: name, src: c.source}
}

// Validate checks the core fields. Errors name the field and, when the
// value came from a file, its line.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, c.source.fieldError(field, fmt.Sprintf(format, args...)))
	}
	if c.DataDir == "" {
		bad("dataDir", "must not be empty")
	}
	if c.Identity.KeyFile == "" && c.Identity.PrivateKey == "" {
		bad("identity.keyFile", "must not be empty when identity.privateKey is not set")
	}
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad("log.format", "%q is not one of text, json", c.Log.Format)
	}
	if c.Metrics.Listen != "off" {
		if _, _, err := net.SplitHostPort(c.Metrics.Listen); err != nil {
			bad("metrics.listen", "%q is not host:port or off", c.Metrics.Listen)
		}
	}
	if c.Shutdown.Drain <= 0 || c.Shutdown.Drain > 10*time.Minute {
		bad("shutdown.drain", "%v is outside (0, 10m]", c.Shutdown.Drain)
	}
	return errors.Join(errs...)
}
