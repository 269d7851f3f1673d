package model

import (
	"fmt"
	"sort"
)

// presets are the shapes of models users train (benchmarks build them with
// random weights: saferlhf bench --preset NAME --init random).
var presets = map[string]Config{
	// LLaMA-2-7B (meta-llama/Llama-2-7b-hf config.json).
	"llama2-7b": {Architecture: "LlamaForCausalLM", ModelType: "llama", HiddenSize: 4096, IntermediateSize: 11008,
		NumLayers: 32, NumHeads: 32, NumKVHeads: 32, VocabSize: 32000, MaxPositions: 4096, RMSNormEps: 1e-5,
		RopeTheta: 10000, BOS: 1, EOS: 2, Pad: 0},
	// Llama-3.2-3B (GQA, 128K vocabulary, tied embeddings; rope_scaling omitted).
	"llama-3b": {Architecture: "LlamaForCausalLM", ModelType: "llama", HiddenSize: 3072, IntermediateSize: 8192,
		NumLayers: 28, NumHeads: 24, NumKVHeads: 8, VocabSize: 128256, MaxPositions: 131072, RMSNormEps: 1e-5,
		RopeTheta: 500000, TieWordEmbeddings: true, BOS: 128000, EOS: 128001, Pad: 0},
	// Llama-3.2-1B.
	"llama-1b": {Architecture: "LlamaForCausalLM", ModelType: "llama", HiddenSize: 2048, IntermediateSize: 8192,
		NumLayers: 16, NumHeads: 32, NumKVHeads: 8, VocabSize: 128256, MaxPositions: 131072, RMSNormEps: 1e-5,
		RopeTheta: 500000, TieWordEmbeddings: true, BOS: 128000, EOS: 128001, Pad: 0},
	// The bundled llama2.c stories260K shape.
	"stories260K": {Architecture: "LlamaForCausalLM", ModelType: "llama", HiddenSize: 64, IntermediateSize: 172,
		NumLayers: 5, NumHeads: 8, NumKVHeads: 4, VocabSize: 512, MaxPositions: 512, RMSNormEps: 1e-5,
		RopeTheta: 10000, TieWordEmbeddings: true, BOS: 1, EOS: 2, Pad: 0},
}

// Preset returns a copy of the named model shape (llama2-7b, llama-3b,
// llama-1b, stories260K).
func Preset(name string) (*Config, error) {
	c, ok := presets[name]
	if !ok {
		return nil, fmt.Errorf("model preset %q: want one of %v", name, PresetNames())
	}
	return &c, nil
}

// PresetNames lists the presets, sorted.
func PresetNames() []string {
	var names []string
	for n := range presets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
