package stages

import (
	"slices"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/shards"
	"github.com/saferlhf/saferlhf/data/tokenizer"
)

// readShardExamples reads every example of the shard directories (already
// tokenized by `saferlhf data pack`), checking they were packed with tok and are of
// the stage's kind.
func readShardExamples(dirs []string, stage Stage, tok tokenizer.Info) ([]datasets.Example, error) {
	want := map[Stage]datasets.Kind{SFT: datasets.KindSFT, RM: datasets.KindPreference, CM: datasets.KindSafetyPreference}[stage]
	return shards.ReadKind(dirs, want, tok, string(stage))
}

// sftFromShard turns a packed SFT example into a training example of at most maxLen tokens.
func sftFromShard(e datasets.Example, maxLen int) (sftExample, bool) {
	n := min(len(e.InputIDs), maxLen)
	ex := sftExample{IDs: e.InputIDs[:n], Labels: e.Labels[:n]}
	return ex, n > 1 && slices.ContainsFunc(ex.Labels[1:], func(l int32) bool { return l != datasets.IgnoreIndex })
}
