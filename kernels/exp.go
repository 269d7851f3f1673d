package kernels

import "math"

const (
	expShifter = 0x1.8p52                         // adding it rounds to an integer kept in the low mantissa bits
	expInvLn2  = 256 / math.Ln2                   // 256/ln2
	expLn2Hi   = 6.93147180369123816490e-01 / 256 // ln2 split as in math.Exp: k·expLn2Hi is exact
	expLn2Lo   = 1.90821492927058770002e-10 / 256
)

// expTable holds 2^(j/256), j = 0..255 (read-only after package initialisation).
var expTable = func() (t [256]float64) {
	for j := range t {
		t[j] = math.Exp2(float64(j) / 256)
	}
	return t
}()

// exp returns e^x within 2 ulp of math.Exp, without branches on the normal
// range |x| < 708 (the hot loops call it once per token): x = k·ln2/256 + r with
// |r| ≤ ln2/512, e^x = 2^(k/256)·e^r, e^r from its degree-4 Taylor polynomial
// (truncation error < 4e-17) evaluated in Estrin's form, whose dependency chain
// is half of Horner's. Outside that range, and for NaN, it defers to math.Exp.
func exp(x float64) float64 {
	if !(x > -708 && x < 708) {
		return expSlow(x)
	}
	t := x*expInvLn2 + expShifter
	k := int64(math.Float64bits(t)) // low bits: round(x·256/ln2), two's complement
	kf := t - expShifter
	r := (x - kf*expLn2Hi) - kf*expLn2Lo
	r2 := r * r
	p := (1 + r) + r2*((0.5+r*(1.0/6))+r2*(1.0/24))
	scale := math.Float64frombits(uint64((k>>8)+1023) << 52)
	return scale * expTable[k&255] * p
}

// expSlow is exp outside the normal range (kept out of line so that exp inlines).
//
//go:noinline
func expSlow(x float64) float64 { return math.Exp(x) }
