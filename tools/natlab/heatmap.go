package natlab

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Heat map geometry (pixels).
const (
	hmCellW   = 92
	hmCellH   = 40
	hmLabelW  = 56
	hmTitleH  = 40
	hmHeaderH = 20
	hmGap     = 24
	hmLegendH = 70
)

var (
	hmBG    = color.RGBA{0xff, 0xff, 0xff, 0xff}
	hmInk   = color.RGBA{0x20, 0x20, 0x20, 0xff}
	hmRelay = color.RGBA{0x7f, 0xa7, 0xd9, 0xff} // theory says relay; shows connectivity
	hmNone  = color.RGBA{0xc0, 0xc0, 0xc0, 0xff}
)

// rateColor maps a direct success rate to a colour: dark green at ≥ 99.9%,
// through light green, yellow and orange, to red below 50%.
func rateColor(r float64) color.RGBA {
	switch {
	case r >= 0.999:
		return color.RGBA{0x1a, 0x9c, 0x50, 0xff}
	case r >= 0.99:
		return color.RGBA{0x73, 0xc3, 0x78, 0xff}
	case r >= 0.95:
		return color.RGBA{0xc2, 0xe2, 0x7a, 0xff}
	case r >= 0.90:
		return color.RGBA{0xfe, 0xe0, 0x8b, 0xff}
	case r >= 0.50:
		return color.RGBA{0xfc, 0x8d, 0x59, 0xff}
	}
	return color.RGBA{0xd7, 0x30, 0x27, 0xff}
}

// WritePNG draws one panel per (loss, transport): rows are the initiator's
// profile, columns the responder's; each cell shows the direct success rate
// (birthday included, marked "B") or, where the theory says relay, the share
// connected through the relay ("R").
func (r *MatrixReport) WritePNG(w io.Writer) error {
	cfg := r.Config
	if len(r.Cells) == 0 {
		return errNoCells
	}
	n := len(cfg.Profiles)
	panelW := hmLabelW + n*hmCellW
	panelH := hmHeaderH + n*hmCellH
	cols, rows := len(cfg.Transports), len(cfg.Losses)
	W := hmGap + cols*(panelW+hmGap)
	H := hmTitleH + rows*(panelH+hmHeaderH+hmGap) + hmLegendH
	img := image.NewRGBA(image.Rect(0, 0, W, H))
	draw.Draw(img, img.Bounds(), &image.Uniform{hmBG}, image.Point{}, draw.Src)
	text := func(x, y int, s string, c color.Color) {
		d := font.Drawer{Dst: img, Src: &image.Uniform{c}, Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
		d.DrawString(s)
	}
	centered := func(x0, x1, y int, s string, c color.Color) {
		wpx := len(s) * 7
		text(x0+(x1-x0-wpx)/2, y, s, c)
	}
	text(hmGap, 18, fmt.Sprintf("PC2 punch matrix: %d trials/cell, one-way latency %v, rows initiator (A), columns responder (B)",
		cfg.Trials, cfg.Latency), hmInk)
	text(hmGap, 33, "cell: direct success % (B = via birthday probing); blue: theory says relay, % connected via relay", hmInk)
	cell := map[string]MatrixCell{}
	for _, c := range r.Cells {
		cell[c.Loss+"|"+c.Transport+"|"+c.A+"|"+c.B] = c
	}
	for ri, loss := range cfg.Losses {
		for ci, tr := range cfg.Transports {
			x0 := hmGap + ci*(panelW+hmGap)
			y0 := hmTitleH + ri*(panelH+hmHeaderH+hmGap)
			text(x0, y0+14, fmt.Sprintf("%s, loss %s", strings.ToUpper(tr), loss), hmInk)
			y0 += hmHeaderH
			for j, b := range cfg.Profiles {
				centered(x0+hmLabelW+j*hmCellW, x0+hmLabelW+(j+1)*hmCellW, y0+14, b, hmInk)
			}
			for i, a := range cfg.Profiles {
				cy := y0 + hmHeaderH + i*hmCellH
				text(x0+4, cy+hmCellH/2+4, a, hmInk)
				for j, b := range cfg.Profiles {
					c := cell[loss.String()+"|"+tr+"|"+a+"|"+b]
					cx := x0 + hmLabelW + j*hmCellW
					bg, label, sub := hmNone, "-", ""
					switch {
					case c.Trials == 0:
					case c.Expect == PathRelay && c.Direct == 0:
						bg = hmRelay
						label = fmt.Sprintf("R %s%%", fmtF(100*c.ConnectedRate(), 1))
						sub = "relay"
					default:
						bg = rateColor(c.DirectRate())
						label = fmtF(100*c.DirectRate(), 1) + "%"
						if c.Paths[PathBirthday] > 0 {
							label = "B " + label
						}
						if !isNaN(c.FirstRTTp50) {
							sub = fmt.Sprintf("%s RTT", fmtF(c.FirstRTTp50, 2))
						}
					}
					rect := image.Rect(cx+1, cy+1, cx+hmCellW-1, cy+hmCellH-1)
					draw.Draw(img, rect, &image.Uniform{bg}, image.Point{}, draw.Src)
					centered(cx, cx+hmCellW, cy+17, label, hmInk)
					centered(cx, cx+hmCellW, cy+32, sub, hmInk)
				}
			}
		}
	}
	// Legend.
	ly := H - hmLegendH + 10
	x := hmGap
	for _, l := range []struct {
		c color.RGBA
		s string
	}{{rateColor(1), ">=99.9%"}, {rateColor(0.995), ">=99%"}, {rateColor(0.96), ">=95%"}, {rateColor(0.92), ">=90%"},
		{rateColor(0.6), ">=50%"}, {rateColor(0), "<50%"}, {hmRelay, "relay (theory)"}} {
		draw.Draw(img, image.Rect(x, ly, x+20, ly+14), &image.Uniform{l.c}, image.Point{}, draw.Src)
		text(x+24, ly+11, l.s, hmInk)
		x += 24 + len(l.s)*7 + 16
	}
	text(hmGap, ly+40, "second line: median time from Sync to the first authenticated direct packet, in measured signalling RTTs", hmInk)
	return png.Encode(w, img)
}

func isNaN(f float64) bool { return f != f }
