package metrics

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// Progress shows training progress: step/total, loss (or another status), tokens/s
// and ETA; it is the one progress reporter of the training loops. On a
// terminal it draws a progress bar (github.com/schollz/progressbar/v3); on
// anything else (a log file, CI) it writes a plain line every LogEvery.
type Progress struct {
	total, start int
	desc         string
	out          io.Writer
	bar          *progressbar.ProgressBar
	// LogEvery is the interval between lines when the output is not a terminal (default 30 s).
	LogEvery time.Duration
	now      func() time.Time
	t0       time.Time
	lastLog  time.Time
	logged   bool
	tokens   int64
}

// NewProgress returns a progress display for total optimizer steps written to
// out (os.Stderr when nil). startStep is the step a resumed run starts from:
// speed and ETA count only this run's steps.
func NewProgress(total, startStep int, desc string, out io.Writer) *Progress {
	if out == nil {
		out = os.Stderr
	}
	p := &Progress{total: total, start: startStep, desc: desc, out: out, LogEvery: 30 * time.Second, now: time.Now}
	p.t0 = p.now()
	if f, ok := out.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.bar = progressbar.NewOptions64(int64(total),
			progressbar.OptionSetWriter(out),
			progressbar.OptionSetDescription(desc),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(false), // our ETA counts this run's steps only
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionFullWidth(),
			progressbar.OptionShowDescriptionAtLineEnd(),
		)
		_ = p.bar.Set64(int64(startStep))
	}
	return p
}

// Update reports that step optimizer steps are done, with the latest loss and
// the number of tokens processed since the previous Update.
func (p *Progress) Update(step int, loss float64, tokens int) {
	p.Report(step, fmt.Sprintf("loss %.4g", loss), tokens)
}

// Report is Update with a status of the caller's (e.g. reward, cost and λ) in
// place of the loss.
func (p *Progress) Report(step int, status string, tokens int) {
	p.tokens += int64(tokens)
	now := p.now()
	line := p.status(step, status, now)
	if p.bar != nil {
		p.bar.Describe(p.desc + " " + line)
		_ = p.bar.Set64(int64(step))
		return
	}
	if !p.logged || now.Sub(p.lastLog) >= p.LogEvery || step >= p.total {
		fmt.Fprintf(p.out, "%s step %d/%d %s\n", p.desc, step, p.total, line)
		p.lastLog, p.logged = now, true
	}
}

// status formats the status, tokens/s and ETA.
func (p *Progress) status(step int, status string, now time.Time) string {
	el := now.Sub(p.t0).Seconds()
	done := step - p.start
	tps, eta := 0.0, "?"
	if el > 0 {
		tps = float64(p.tokens) / el
	}
	if done > 0 && el > 0 {
		rem := time.Duration(float64(p.total-step) * el / float64(done) * float64(time.Second))
		eta = rem.Round(time.Second).String()
	}
	return fmt.Sprintf("%s | %.0f tok/s | ETA %s", status, tps, eta)
}

// Finish completes the bar (or writes nothing more in line mode).
func (p *Progress) Finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
		fmt.Fprintln(p.out)
	}
}
