package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDPOCommand runs saferlhf dpo from a --config file on the bundled model and
// PKU-SafeRLHF pairs with --preference safer, and checks the bad-flag errors.
func TestDPOCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("trains the tiny model")
	}
	a := "../../assets/data"
	dir := t.TempDir()
	conf := filepath.Join(dir, "dpo.yaml")
	yaml := "model: " + a + "/models/stories260K.bin\ndata: " + a + "/pku-saferlhf/align-anything-preference-sample.json\n" +
		"preference: safer\nscale-coeff: 0.2\nmax-length: 48\ntruncate: prompt-left\nbatch-size: 4\nsteps: 2\nlr: 1e-3\neval-ratio: 0.25\n"
	if err := os.WriteFile(conf, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "run")
	captureStdout(t, func() error { return runDPO([]string{"--config", conf, "--out", out}) })
	b, err := os.ReadFile(filepath.Join(out, "result.json"))
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Stage   string             `json:"stage"`
		Steps   int                `json:"steps"`
		HeldOut int                `json:"held_out_examples"`
		Final   map[string]float64 `json:"final_eval"`
	}
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if _, ok := res.Final["reward_accuracy"]; res.Stage != "dpo" || res.Steps != 2 || res.HeldOut == 0 || !ok {
		t.Fatalf("result.json: %s", b)
	}
	for _, f := range []string{"config.yaml", "metrics.jsonl", "model/config.json", "model/model.safetensors"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
	eff, _ := os.ReadFile(filepath.Join(out, "config.yaml"))
	if !strings.Contains(string(eff), "safer") || !strings.Contains(string(eff), "0.2") {
		t.Errorf("effective config.yaml lacks the --config values:\n%s", eff)
	}
	for _, bad := range [][]string{{"--preference", "worse"}, {"--scale-coeff", "0"}} {
		err := runDPO(append([]string{"--config", conf, "--out", filepath.Join(dir, "bad")}, bad...))
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), bad[0]) {
			t.Errorf("%v: error %v, want a usage error naming %s", bad, err, bad[0])
		}
	}
}
