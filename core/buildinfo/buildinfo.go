// Package buildinfo says which pc2 this is, for `pc2 version`, logs and the
// pc2_build_info metric, so an operator can tell what runs where.
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Version is set at link time: -ldflags "-X github.com/elacity/pc2/core/buildinfo.Version=v1.2.3".
var Version = "dev"

// Commit returns the VCS revision recorded by the Go toolchain, if any.
func Commit() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" {
			return s.Value
		}
	}
	return ""
}

// GoVersion returns the Go release pc2 was built with.
func GoVersion() string { return runtime.Version() }
