package main

import (
	"os"
	"os/exec"
	"testing"

	"github.com/elacity/pc2/tools/natlab"
)

// needNATLab skips t unless the NAT lab can run here: root, the lab's
// dependencies (with miniupnpd when portMapping), and tools.
func needNATLab(t *testing.T, portMapping bool, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces (NAT lab)")
	}
	if err := natlab.CheckDeps(portMapping); err != nil {
		t.Skipf("NAT lab dependencies missing (pc2 natlab install-deps): %v", err)
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (tools/install-deps.sh)", tool)
		}
	}
}
