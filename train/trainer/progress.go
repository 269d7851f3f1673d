package trainer

import (
	"fmt"
	"io"
	"time"
)

// progress draws a one-line progress bar: steps, loss, tokens/s and ETA.
type progress struct {
	w            io.Writer
	total, start int
	last         time.Time
}

func newProgress(w io.Writer, total, start int) *progress {
	return &progress{w: w, total: total, start: start}
}

func (p *progress) update(step int, loss, tokPerS float64, elapsed time.Duration) {
	if p.w == nil || (time.Since(p.last) < 200*time.Millisecond && step < p.total) {
		return
	}
	p.last = time.Now()
	const width = 24
	fill := width * step / max(1, p.total)
	bar := make([]byte, width)
	for i := range bar {
		bar[i] = '.'
		if i < fill {
			bar[i] = '#'
		}
	}
	eta := time.Duration(0)
	if done := step - p.start; done > 0 {
		eta = time.Duration(float64(elapsed) / float64(done) * float64(p.total-step))
	}
	fmt.Fprintf(p.w, "\r[%s] %d/%d loss %.4f  %.0f tok/s  ETA %s   ", bar, step, p.total, loss, tokPerS, eta.Round(time.Second))
}

func (p *progress) done() {
	if p.w != nil {
		fmt.Fprintln(p.w)
	}
}
