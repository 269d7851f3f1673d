package kernels

import "math"

// expTable holds 2^(j/64), j = 0..63 (read-only after package initialisation).
var expTable = func() (t [64]float64) {
	for j := range t {
		t[j] = math.Exp2(float64(j) / 64)
	}
	return t
}()

// exp returns e^x within 2 ulp of math.Exp, without branches on the normal
// range |x| < 708 (the hot loops call it once per token): x = k·ln2/64 + r with
// |r| ≤ ln2/128, e^x = 2^(k/64)·e^r, e^r from its degree-5 Taylor polynomial
// (truncation error < 4e-17). Outside that range, and for NaN, it defers to math.Exp.
func exp(x float64) float64 {
	if !(x > -708 && x < 708) {
		return math.Exp(x)
	}
	const (
		shifter = 0x1.8p52                        // adding it rounds to an integer kept in the low mantissa bits
		invLn2  = 64 / math.Ln2                   // 64/ln2
		ln2Hi   = 6.93147180369123816490e-01 / 64 // ln2 split as in math.Exp: k·ln2Hi is exact
		ln2Lo   = 1.90821492927058770002e-10 / 64
	)
	t := x*invLn2 + shifter
	k := int64(math.Float64bits(t)) // low bits: round(x·64/ln2), two's complement
	kf := t - shifter
	r := (x - kf*ln2Hi) - kf*ln2Lo
	p := 1 + r*(1+r*(0.5+r*(1.0/6+r*(1.0/24+r*(1.0/120)))))
	scale := math.Float64frombits(uint64((k>>6)+1023) << 52)
	return scale * expTable[k&63] * p
}
