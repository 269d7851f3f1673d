package main

import (
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/saferlhf/saferlhf/kernels/refcheck"
)

// runVerifyReference checks every kernel against the reference's test vectors:
// each *.json file of --golden runs through the CPU float64 path, the CPU
// float32 path and the graph path; the command fails when an error exceeds its
// tolerance (1e-9 for float64, 1e-4 otherwise) or a file is malformed.
func runVerifyReference(args []string) error {
	fs := newFlagSet("verify-reference", "")
	dir := fs.String("golden", "assets/golden", "directory of golden *.json files (schema: its README.md)")
	backendSpec := fs.String("backend", "", "GoMLX backend for the graph path (default: $SAFERLHF_BACKEND or go)")
	noGraph := fs.Bool("no-graph", false, "skip the graph path")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	runners := []refcheck.Runner{refcheck.CPU(false), refcheck.CPU(true)}
	if !*noGraph {
		g, err := refcheck.Graph(*backendSpec)
		if err != nil {
			return err
		}
		runners = append(runners, g)
	}
	res, err := refcheck.Run(*dir, runners...)
	printVerifyTable(os.Stdout, res, runners)
	if err != nil {
		return err
	}
	failed := 0
	for _, r := range res {
		if r.Failed() {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d file(s) exceed the tolerance", failed)
	}
	return nil
}

func printVerifyTable(w io.Writer, res []refcheck.FileResult, runners []refcheck.Runner) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "file\tcases\t")
	for _, r := range runners {
		fmt.Fprintf(tw, "%s (tol %.0e)\t", r.Name(), r.Tol())
	}
	fmt.Fprintln(tw, "status\t")
	for _, fr := range res {
		fmt.Fprintf(tw, "%s\t%d\t", fr.File, fr.Cases)
		if fr.Skipped != "" {
			for range runners {
				fmt.Fprint(tw, "-\t")
			}
			fmt.Fprintf(tw, "skipped: %s\t\n", fr.Skipped)
			continue
		}
		for _, r := range runners {
			fmt.Fprintf(tw, "%.2e\t", fr.MaxErr[r.Name()])
		}
		status := "ok"
		if fr.Failed() {
			status = fmt.Sprintf("FAIL (worst: %v)", fr.Worst)
		}
		fmt.Fprintf(tw, "%s\t\n", status)
	}
	tw.Flush()
	fmt.Fprintln(w, "relative error = max|got−want| / max(max|want|, 1e-6) per output, max over cases and outputs")
}
