package model

// Sampling streams. Every row of a batch has its own counter-based random stream: row r's token i
// is drawn with Uniform(DeriveSeed(opts.Seed, opts.FirstRow+r), i). A draw is a pure function of
// the seed, the row's global index and the token's position, so a row samples the same tokens
// whatever batch it is generated in, on whichever rank or backend (host sampler, sampling in
// graph, native engine), and nothing but the seed needs saving to resume.

// golden is SplitMix64's increment, ⌊2⁶⁴/φ⌋.
const golden = 0x9e3779b97f4a7c15

// mix64 is SplitMix64's output function (a bijection of uint64).
func mix64(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// DeriveSeed returns the k-th child seed of seed (e.g. a row's stream key, or a rollout step's
// sampling seed); distinct (seed, k) give independent-looking keys.
func DeriveSeed(seed, k uint64) uint64 { return mix64(mix64(seed^golden) + (k+1)*golden) }

// Uniform is draw i of the stream with key key: output i of the SplitMix64 sequence that starts
// at key, as a float64 in [0, 1) with 53 random bits.
func Uniform(key uint64, i int) float64 {
	return float64(mix64(key+uint64(i+1)*golden)>>11) * 0x1p-53
}
