package model

import (
	"fmt"
	"reflect"
	"slices"
	"sync"
	"unsafe"

	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
)

// gomlxVersion is the GoMLX release whose unexported node fields the fast
// gradients read (by reflection); TestFastGradientsMatchStock pins it.
const gomlxVersion = "v0.26.0"

var (
	fastOnce      sync.Once
	fastErr       error
	stockDotVJP   G.VJP
	stockSliceVJP G.VJP
)

// EnableFastGradients registers, process-wide and once, gradients shaped for
// GoMLX's pure-Go backend:
//
//   - DotGeneral: dA = dY·Bᵀ and dB = Aᵀ·dY as two DotGenerals with the node's
//     batch and contracting axes (GoMLX's stock gradient materialises a
//     broadcast outer product, e.g. [B,T,F,D] for an FFN weight, which only
//     XLA fuses; this is the 3-5× of shared/reference/gomlx-cpu.md §1);
//   - Slice (stride 1): the zero-padded gradient built by Concatenate
//     (the stock one uses Pad, which the pure-Go backend lacks).
//
// Gradients are mathematically identical and work on every backend. Call it
// before building gradient graphs (trainers do, in their constructors). It
// returns an error if the GoMLX internals it reads are not as expected, in
// which case the stock gradients stay in place.
func EnableFastGradients() error {
	fastOnce.Do(func() {
		fastErr = probeInternals()
		if fastErr != nil {
			return
		}
		stockDotVJP = G.VJPRegistration[G.NodeTypeDotGeneral]
		stockSliceVJP = G.VJPRegistration[G.NodeTypeSlice]
		G.VJPRegistration[G.NodeTypeDotGeneral] = dotGeneralVJP
		G.VJPRegistration[G.NodeTypeSlice] = sliceVJP
	})
	return fastErr
}

// probeInternals checks that GoMLX's Node still has the unexported
// `inputs` field the fast gradients read; the field layouts themselves are
// checked on use (a clear panic, turned into an error by Exec) and pinned by
// TestFastGradientsMatchStock.
func probeInternals() error {
	f, ok := reflect.TypeOf(G.Node{}).FieldByName("inputs")
	if !ok || f.Type.Kind() != reflect.Interface {
		return fmt.Errorf("model: fast gradients need GoMLX %s internals (Node.inputs)", gomlxVersion)
	}
	return nil
}

// nodeParams returns the struct behind a node's unexported `inputs` field
// (GoMLX's nodeInputs<Op>), addressable for reading.
func nodeParams(node *G.Node) reflect.Value {
	f := reflect.ValueOf(node).Elem().FieldByName("inputs")
	if !f.IsValid() || f.Kind() != reflect.Interface || f.IsNil() {
		panic(fmt.Errorf("model: GoMLX node has no inputs field (want GoMLX %s)", gomlxVersion))
	}
	p := f.Elem()
	if p.Kind() != reflect.Pointer || p.Elem().Kind() != reflect.Struct {
		panic(fmt.Errorf("model: GoMLX node inputs is %s (want GoMLX %s)", p.Type(), gomlxVersion))
	}
	return p.Elem()
}

func intsField(s reflect.Value, name string) []int {
	f := s.FieldByName(name)
	if !f.IsValid() || f.Kind() != reflect.Slice || f.Type().Elem().Kind() != reflect.Int {
		panic(fmt.Errorf("model: GoMLX %s field %s missing or not []int (want GoMLX %s)", s.Type(), name, gomlxVersion))
	}
	out := make([]int, f.Len())
	for i := range out {
		out[i] = int(f.Index(i).Int())
	}
	return out
}

func nodeField(s reflect.Value, name string) *G.Node {
	f := s.FieldByName(name)
	if !f.IsValid() || f.Kind() != reflect.Pointer || f.Type() != reflect.TypeOf((*G.Node)(nil)) {
		panic(fmt.Errorf("model: GoMLX %s field %s missing or not *Node (want GoMLX %s)", s.Type(), name, gomlxVersion))
	}
	return (*G.Node)(unsafe.Pointer(f.Pointer()))
}

// dotGeneralAxes reads a DotGeneral node's operands and axes.
func dotGeneralAxes(node *G.Node) (lhs *G.Node, lc, lb []int, rhs *G.Node, rc, rb []int) {
	p := nodeParams(node)
	lhs, rhs = nodeField(p, "lhs"), nodeField(p, "rhs")
	lc, lb = intsField(p, "lhsContractingAxes"), intsField(p, "lhsBatchAxes")
	rc, rb = intsField(p, "rhsContractingAxes"), intsField(p, "rhsBatchAxes")
	if in := node.Inputs(); len(in) != 2 || in[0] != lhs || in[1] != rhs {
		panic(fmt.Errorf("model: GoMLX DotGeneral inputs do not match its params (want GoMLX %s)", gomlxVersion))
	}
	return
}

// freeAxes returns the axes of a rank-r operand that are neither contracting
// nor batch, increasing (the order DotGeneral lays them out in its output).
func freeAxes(rank int, contracting, batch []int) []int {
	var out []int
	for a := 0; a < rank; a++ {
		if !slices.Contains(contracting, a) && !slices.Contains(batch, a) {
			out = append(out, a)
		}
	}
	return out
}

func iotaFrom(start, n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = start + i
	}
	return s
}

// backTo transposes raw, whose axis i corresponds to operand axis src[i],
// into the operand's axis order.
func backTo(raw *G.Node, src []int) *G.Node {
	perm := make([]int, len(src))
	identity := true
	for i, a := range src {
		perm[a] = i
	}
	for i, p := range perm {
		if i != p {
			identity = false
		}
	}
	if identity {
		return raw
	}
	return G.TransposeAllAxes(raw, perm...)
}

// dotGeneralVJP is the two-matmul gradient of Y = DotGeneral(A, B), Y laid out
// [batch…, A-free…, B-free…]:
//
//	dA = DotGeneral(dY, B) contracting B's free axes, then A's axis order;
//	dB = DotGeneral(A, dY) contracting A's free axes, then B's axis order.
func dotGeneralVJP(node *G.Node, vjps []*G.Node, _ shapes.Shape) []*G.Node {
	v := vjps[0]
	lhs, lc, lb, rhs, rc, rb := dotGeneralAxes(node)
	lf := freeAxes(lhs.Rank(), lc, lb)
	rf := freeAxes(rhs.Rank(), rc, rb)
	nb, nlf, nrf := len(lb), len(lf), len(rf)
	vb := iotaFrom(0, nb)

	// dA: [batch…, A-free…, B's contracting axes (increasing)…].
	dA := G.DotGeneral(v, iotaFrom(nb+nlf, nrf), vb, rhs, rf, rb)
	src := slices.Clone(lb)
	src = append(src, lf...)
	for _, a := range freeAxes(rhs.Rank(), rf, rb) { // rhs contracting axes, increasing
		src = append(src, lc[slices.Index(rc, a)])
	}
	dA = backTo(dA, src)

	// dB: [batch…, A's contracting axes (increasing)…, B-free…].
	dB := G.DotGeneral(lhs, lf, lb, v, iotaFrom(nb, nlf), vb)
	src = slices.Clone(rb)
	for _, a := range freeAxes(lhs.Rank(), lf, lb) { // lhs contracting axes, increasing
		src = append(src, rc[slices.Index(lc, a)])
	}
	src = append(src, rf...)
	dB = backTo(dB, src)
	return []*G.Node{dA, dB}
}

// sliceVJP scatters the gradient of a stride-1 Slice back into zeros with
// Concatenate; other strides use GoMLX's stock (Pad-based) gradient.
func sliceVJP(node *G.Node, vjps []*G.Node, outShape shapes.Shape) []*G.Node {
	p := nodeParams(node)
	x := nodeField(p, "x")
	starts, limits, strides := intsField(p, "starts"), intsField(p, "limits"), intsField(p, "strides")
	for _, s := range strides {
		if s > 1 {
			return stockSliceVJP(node, vjps, outShape)
		}
	}
	g := node.Graph()
	v := vjps[0]
	dims := x.Shape().Dimensions
	for axis := range dims {
		before, after := starts[axis], dims[axis]-limits[axis]
		if before == 0 && after == 0 {
			continue
		}
		parts := make([]*G.Node, 0, 3)
		cur := v.Shape().Dimensions
		if before > 0 {
			d := slices.Clone(cur)
			d[axis] = before
			parts = append(parts, G.Zeros(g, shapes.Make(v.DType(), d...)))
		}
		parts = append(parts, v)
		if after > 0 {
			d := slices.Clone(cur)
			d[axis] = after
			parts = append(parts, G.Zeros(g, shapes.Make(v.DType(), d...)))
		}
		v = G.Concatenate(parts, axis)
	}
	return []*G.Node{v}
}
