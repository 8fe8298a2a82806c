package natlab_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"image/png"
	"testing"
	"time"

	"github.com/elacity/pc2/tools/natlab"
)

// TestPunchMatrixSmall runs the punch matrix (package transport/punch in
// real lab processes) with two trials per cell over every ordered pair of
// fc, arc, prc, sym and double NAT, UDP and TCP, without loss and with
// deterministic loss (1 packet in 20 dropped each way at the initiator's
// NAT). Pairs the theory calls punchable must punch directly (one miss in
// the run is tolerated, see below), port-restricted ↔ symmetric over UDP
// must meet by birthday probing, and the pairs the theory calls unpunchable
// must get no direct path and be connected through the relay.
func TestPunchMatrixSmall(t *testing.T) {
	needRoot(t)
	if testing.Short() {
		t.Skip("punch matrix: about a minute")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var log bytes.Buffer
	rep, err := natlab.RunMatrix(ctx, natlab.MatrixConfig{
		Trials:   2,
		Losses:   []natlab.Loss{{}, {Mode: natlab.LossNth, Every: 20}},
		Parallel: 10,
		Latency:  10 * time.Millisecond,
		Relay:    true,
		Seed:     1,
		Launcher: testLauncher(t),
		Log:      &log,
	})
	if err != nil {
		t.Fatalf("matrix: %v\n%s", err, log.String())
	}
	var table bytes.Buffer
	rep.WriteTable(&table)
	t.Logf("%s\n%s", log.String(), table.String())
	if want := 2 * 2 * 25 * 2; len(rep.Trials) != want {
		t.Fatalf("%d trials, want %d", len(rep.Trials), want)
	}
	// Punching is statistical: the full matrix measured 1 failure in 2,000
	// direct trials at 0% loss and birthday probing has a theoretical
	// 99.9% at 2,048 probes. So every punchable cell must punch, at most
	// one trial of the 200 expected to punch may miss (and must then be
	// relayed); a cell that never punches, or two misses, fail the test.
	misses := 0
	for _, c := range rep.Cells {
		name := c.Loss + " " + c.Transport + " " + c.A + "→" + c.B
		switch c.Expect {
		case natlab.PathDirect, natlab.PathBirthday:
			if c.Direct == 0 || c.Paths[c.Expect] != c.Direct {
				t.Errorf("%s: theory says %s; %d/%d direct, paths %v", name, c.Expect, c.Direct, c.Trials, c.Paths)
			}
			if c.Connected != c.Trials {
				t.Errorf("%s: %d/%d connected", name, c.Connected, c.Trials)
			}
			misses += c.Trials - c.Direct
			if c.ProbesMax > natlab.MaxBirthdayProbes {
				t.Errorf("%s: %d probes", name, c.ProbesMax)
			}
		case natlab.PathRelay:
			if c.Direct != 0 || c.Paths[natlab.PathRelay] != c.Trials {
				t.Errorf("%s: theory says relay; %d direct, paths %v", name, c.Direct, c.Paths)
			}
		}
	}
	if misses > 1 {
		t.Errorf("%d trials expected to punch did not (at most 1 allowed)", misses)
	}
	for _, tr := range rep.Trials {
		if tr.Path == natlab.PathDirect && tr.Transport == "udp" && (tr.FirstRTT <= 0 || tr.RTTMillis < 15) {
			t.Errorf("trial %s %s→%s #%d: first packet after %.2f RTT of %.1f ms", tr.Loss, tr.A, tr.B, tr.Trial, tr.FirstRTT, tr.RTTMillis)
		}
	}
	// The outputs render.
	var csvb, pngb bytes.Buffer
	if err := rep.WriteTrialsCSV(&csvb); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&csvb).ReadAll()
	if err != nil || len(rows) != len(rep.Trials)+1 {
		t.Fatalf("trials csv: %d rows, %v", len(rows), err)
	}
	if err := rep.WritePNG(&pngb); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&pngb)
	if err != nil || img.Bounds().Dx() < 400 {
		t.Fatalf("png: %v", err)
	}
}
