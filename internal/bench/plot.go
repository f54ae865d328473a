package bench

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// LatencyPoint is one rate's latencies for both sides.
type LatencyPoint struct {
	Rate          int
	Bare, Courier LatencyResult
}

// Plot draws p50 and p99 latency (log scale) against rate for both sides.
func Plot(path string, pts []LatencyPoint) error {
	const W, H, left, right, top, bottom = 820, 520, 80, 190, 40, 60
	img := image.NewRGBA(image.Rect(0, 0, W, H))
	for i := range img.Pix {
		img.Pix[i] = 255
	}
	grey, black := color.RGBA{210, 210, 210, 255}, color.RGBA{0, 0, 0, 255}
	text := func(x, y int, s string, c color.Color) {
		d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
		d.DrawString(s)
	}
	line := func(x0, y0, x1, y1 int, c color.Color, thick int) {
		n := max(abs(x1-x0), abs(y1-y0), 1)
		for i := 0; i <= n; i++ {
			x, y := x0+(x1-x0)*i/n, y0+(y1-y0)*i/n
			for dx := -thick / 2; dx <= thick/2; dx++ {
				for dy := -thick / 2; dy <= thick/2; dy++ {
					img.Set(x+dx, y+dy, c)
				}
			}
		}
	}
	maxRate := 1
	for _, p := range pts {
		maxRate = max(maxRate, p.Rate)
	}
	lo, hi := 1.0, 10000.0 // ms, log scale
	px := func(rate int) int { return left + (W-left-right)*rate/maxRate }
	py := func(ms float64) int {
		ms = math.Min(math.Max(ms, lo), hi)
		return H - bottom - int(float64(H-top-bottom)*(math.Log10(ms)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo)))
	}
	for _, ms := range []float64{1, 10, 100, 1000, 10000} {
		line(left, py(ms), W-right, py(ms), grey, 1)
		text(left-60, py(ms)+4, fmt.Sprintf("%g ms", ms), black)
	}
	for _, p := range pts {
		line(px(p.Rate), top, px(p.Rate), H-bottom, grey, 1)
		text(px(p.Rate)-12, H-bottom+18, fmt.Sprint(p.Rate), black)
	}
	text(left+(W-left-right)/2-60, H-15, "messages per second", black)
	text(left, 22, "Enqueue-to-accepted latency against rate (log scale)", black)
	series := []struct {
		name string
		c    color.RGBA
		get  func(LatencyPoint) float64
	}{
		{"courier p50", color.RGBA{0, 110, 200, 255}, func(p LatencyPoint) float64 { return ms(p.Courier.P50) }},
		{"courier p99", color.RGBA{120, 180, 240, 255}, func(p LatencyPoint) float64 { return ms(p.Courier.P99) }},
		{"bare asynq p50", color.RGBA{210, 80, 30, 255}, func(p LatencyPoint) float64 { return ms(p.Bare.P50) }},
		{"bare asynq p99", color.RGBA{240, 170, 120, 255}, func(p LatencyPoint) float64 { return ms(p.Bare.P99) }},
	}
	for si, s := range series {
		for i := 1; i < len(pts); i++ {
			line(px(pts[i-1].Rate), py(s.get(pts[i-1])), px(pts[i].Rate), py(s.get(pts[i])), s.c, 3)
		}
		for _, p := range pts {
			line(px(p.Rate)-3, py(s.get(p)), px(p.Rate)+3, py(s.get(p)), s.c, 5)
		}
		y := top + 20 + 20*si
		line(W-right+15, y-4, W-right+40, y-4, s.c, 3)
		text(W-right+48, y, s.name, black)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return png.Encode(f, img)
}

func ms(d interface{ Seconds() float64 }) float64 { return d.Seconds() * 1000 }

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}
