package eval

import (
	"go/build"
	"strings"
	"testing"
)

// Evaluation reads models through train/model and data through data/...: it does not depend
// on the training stages.
func TestEvalDoesNotImportStages(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		if strings.HasSuffix(imp, "/train/stages") || strings.HasSuffix(imp, "/train/trainer") {
			t.Errorf("train/eval imports %s", imp)
		}
	}
}
