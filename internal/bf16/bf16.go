// Package bf16 converts float32 graph values to bfloat16 rounding to nearest even on every
// backend: the pure-Go backend's ConvertDType truncates, which biases every cast (and every
// optimizer write of a bf16 weight) toward zero.
package bf16

import (
	"math"

	"github.com/gomlx/gomlx/backends/simplego"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	G "github.com/gomlx/gomlx/pkg/core/graph"
)

// ConvertDType is graph.ConvertDType, except that float32 to bfloat16 rounds to nearest even
// (Round) on every backend.
func ConvertDType(x *G.Node, dt dtypes.DType) *G.Node {
	if x.DType() == dtypes.Float32 && dt == dtypes.BFloat16 {
		return Round(x)
	}
	return G.ConvertDType(x, dt)
}

// Round converts float32 x to bfloat16, rounding to nearest with ties to even as PyTorch, XLA
// and the host (safetensors.Float32ToBF16) do. The pure-Go backend's ConvertDType truncates
// (gomlx's bfloat16.FromFloat32), so there x is first rounded to bf16's 8 significant bits in
// float32 arithmetic (Veltkamp's split; a fixed-ulp addition below 2^−126), which the truncating
// conversion then keeps exactly. Only element-wise float32 arithmetic and comparisons: no Abs,
// Sign, Log or Pow, which are several times slower there (BenchmarkConvert). ±0, ±Inf and NaN
// pass through (NaN quiet).
func Round(x *G.Node) *G.Node {
	if x.Graph().Backend().String() != simplego.BackendName {
		return G.ConvertDType(x, dtypes.BFloat16)
	}
	g := x.Graph()
	c := func(v float64) *G.Node { return G.Scalar(g, dtypes.Float32, v) }
	v := G.StopGradient(x) // the rounding offset is a constant to the gradient, as in ConvertDType
	// |v| >= 2^100 is scaled by 2^−64 (exactly) so that Veltkamp's product below stays finite.
	big := G.GreaterOrEqual(G.Square(G.MulScalar(v, 0x1p-60)), c(0x1p80))
	scale := G.Where(big, c(0x1p-64), c(1))
	a := G.Mul(v, scale)
	// Veltkamp's split: with γ = fl(a·(2^16+1)), fl(γ − fl(γ − a)) is a rounded to nearest even
	// with 24−16 = 8 significant bits, bf16's, for a normal float32 a.
	gamma := G.MulScalar(a, 0x1p16+1)
	hi := G.Sub(gamma, G.Sub(gamma, a))
	// Below 2^−126 (|v|·2^100 < 2^−26) bf16's ulp is fixed at 2^−133, the ulp of every float32
	// within 2^−126 of 3·2^−111: one float32 addition rounds, ties to even.
	small := G.LessThan(G.Square(G.MulScalar(v, 0x1p100)), c(0x1p-52))
	lo := G.Sub(G.AddScalar(a, 0x3p-111), c(0x3p-111))
	r := G.Div(G.Where(small, lo, hi), scale)
	// x + (r − x) is r exactly (r − x is exact: r and x are within a bf16 ulp, of one sign). Where
	// r is 0 (|x| <= 2^−134) x itself truncates to ±0 keeping its sign, which the sum would not.
	finite := G.LogicalAnd(G.IsFinite(v), G.NotEqual(r, c(0)))
	r = G.Where(finite, G.Add(x, G.StopGradient(G.Sub(r, v))), x)
	r = G.Where(G.IsNaN(v), c(math.NaN()), r)
	return G.ConvertDType(r, dtypes.BFloat16)
}
