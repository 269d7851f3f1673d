package model

// What the external test package model_test (backends_test.go, which imports
// native/llama and so cannot be package model) reads of this package's tests.
var (
	LoadGolden  = loadGolden
	LoadStories = loadStories
	Argmax      = argmax
)

// GoldenCase is one llama2.c greedy golden case.
type GoldenCase = goldenCase
