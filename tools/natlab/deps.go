package natlab

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

//go:embed install-deps.sh
var installScript []byte

// CheckDeps reports the missing tools the lab needs (ip, tc, nft, sysctl, and
// miniupnpd when port mapping is used).
func CheckDeps(portMapping bool) error {
	tools := []string{"ip", "tc", "nft", "sysctl"}
	if portMapping {
		tools = append(tools, "miniupnpd")
	}
	var missing []string
	for _, t := range tools {
		if lookTool(t) == "" {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("natlab: missing %s: run tools/natlab/install-deps.sh (or `natlab install-deps`) as root",
			strings.Join(missing, ", "))
	}
	return nil
}

// InstallDeps installs the lab's Debian packages when their commands are
// missing (idempotent; needs root). It runs the embedded install-deps.sh, so
// it works from an installed binary without the source tree.
func InstallDeps(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	if CheckDeps(true) == nil {
		return nil
	}
	cmd := exec.CommandContext(ctx, "/bin/sh", "-s")
	cmd.Stdin = strings.NewReader(string(installScript))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("natlab install-deps: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return CheckDeps(true)
}
