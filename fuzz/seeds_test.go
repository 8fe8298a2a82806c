package fuzz

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestWriteSeedCorpus regenerates testdata/fuzz/<target>/ from the seed
// functions when PC2_WRITE_SEEDS=1; otherwise it checks the corpus exists.
func TestWriteSeedCorpus(t *testing.T) {
	targets := map[string][][]byte{
		"FuzzClientHello":       clientHelloSeeds(),
		"FuzzProxyProtoV2":      proxyProtoSeeds(),
		"FuzzRelayControl":      relayControlSeeds(),
		"FuzzRelayData":         relayDataSeeds(),
		"FuzzSTUNAnswer":        stunSeeds(),
		"FuzzTunnelHeader":      tunnelHeaderSeeds(),
		"FuzzTunnelTCPSession":  tunnelTCPSeeds(),
		"FuzzTunnelControl":     tunnelControlSeeds(),
		"FuzzTunnelDatagram":    tunnelDatagramSeeds(),
		"FuzzTunnelDataConn":    tunnelDataSeeds(),
		"FuzzMeshFrame":         meshFrameSeeds(),
		"FuzzMeshForwardHeader": meshForwardSeeds(),
		"FuzzPeerStreamHeader":  peerHeaderSeeds(),
		"FuzzPeerRecord":        peerRecordSeeds(),
	}
	for name, seeds := range targets {
		dir := filepath.Join("testdata", "fuzz", name)
		if os.Getenv("PC2_WRITE_SEEDS") != "1" {
			entries, err := os.ReadDir(dir)
			if err != nil || len(entries) == 0 {
				t.Errorf("%s has no seed corpus (run with PC2_WRITE_SEEDS=1): %v", dir, err)
			}
			continue
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, s := range seeds {
			sum := sha256.Sum256(s)
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%x", sum[:8])), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
