package engine

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func skipNoEngine(t testing.TB) {
	t.Helper()
	if !Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
}

func randSlice(rng *rand.Rand, n int, scale float64) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(rng.NormFloat64() * scale)
	}
	return s
}

// forISAs runs fn under every instruction set this CPU supports.
func forISAs(t *testing.T, fn func(t *testing.T)) {
	prev := ISA()
	defer SetISA(prev)
	for _, isa := range []string{"c", "avx2", "avx512"} {
		got, _ := SetISA(isa)
		if got != isa {
			continue
		}
		t.Run(isa, fn)
	}
}

func closeTo(t *testing.T, what string, got []float32, want []float64, rel float64) {
	t.Helper()
	scale := 0.0
	for _, w := range want {
		scale = math.Max(scale, math.Abs(w))
	}
	for i := range want {
		if d := math.Abs(float64(got[i]) - want[i]); d > rel*(math.Abs(want[i])+scale*1e-2)+1e-30 || math.IsNaN(float64(got[i])) {
			t.Fatalf("%s[%d] = %g, want %g (diff %g)", what, i, got[i], want[i], d)
		}
	}
}

func TestSgemm(t *testing.T) {
	skipNoEngine(t)
	shapes := [][3]int{{1, 1, 1}, {3, 5, 7}, {2, 150, 20}, {5, 33, 17}, {8, 32, 64}, {17, 100, 300}, {150, 70, 33}, {300, 513, 64}, {64, 64, 600}}
	forISAs(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(1, 2))
		for _, sh := range shapes {
			m, n, k := sh[0], sh[1], sh[2]
			for _, ta := range []bool{false, true} {
				for _, tb := range []bool{false, true} {
					for _, beta := range []float32{0, 0.5} {
						ar, ac := m, k
						if ta {
							ar, ac = k, m
						}
						br, bc := k, n
						if tb {
							br, bc = n, k
						}
						lda, ldb, ldc := ac+3, bc+1, n+2
						a := randSlice(rng, (ar-1)*lda+ac, 1)
						b := randSlice(rng, (br-1)*ldb+bc, 1)
						c := randSlice(rng, (m-1)*ldc+n, 1)
						want := make([]float64, len(c))
						for i := 0; i < m; i++ {
							for j := 0; j < n; j++ {
								s := 0.0
								for l := 0; l < k; l++ {
									var av, bv float32
									if ta {
										av = a[l*lda+i]
									} else {
										av = a[i*lda+l]
									}
									if tb {
										bv = b[j*ldb+l]
									} else {
										bv = b[l*ldb+j]
									}
									s += float64(av) * float64(bv)
								}
								want[i*ldc+j] = 1.5*s + float64(beta)*float64(c[i*ldc+j])
							}
						}
						for i := range want { // padding columns stay untouched
							if i%ldc >= n {
								want[i] = float64(c[i])
							}
						}
						if err := Sgemm(ta, tb, m, n, k, 1.5, a, lda, b, ldb, beta, c, ldc); err != nil {
							t.Fatal(err)
						}
						closeTo(t, "C", c, want, 1e-5*math.Sqrt(float64(k)))
					}
				}
			}
		}
	})
}

func TestSgemmDeterministic(t *testing.T) {
	skipNoEngine(t)
	defer SetThreads(0)
	rng := rand.New(rand.NewPCG(3, 4))
	m, n, k := 300, 700, 520
	a, b := randSlice(rng, m*k, 1), randSlice(rng, n*k, 1)
	var first []float32
	for _, th := range []int{1, 2, 3, 2} {
		SetThreads(th)
		c := make([]float32, m*n)
		if err := Sgemm(false, true, m, n, k, 1, a, k, b, k, 0, c, n); err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = c
		} else if !slices.Equal(first, c) {
			t.Fatalf("threads=%d: result differs from the first run", th)
		}
	}
}

func TestSgemmShapeErrors(t *testing.T) {
	skipNoEngine(t)
	buf := make([]float32, 16)
	cases := []struct {
		name          string
		m, n, k       int
		lda, ldb, ldc int
		a, b, c       []float32
	}{
		{"negative", -1, 2, 2, 2, 2, 2, buf, buf, buf},
		{"short A", 4, 4, 4, 4, 4, 4, buf[:15], buf, buf},
		{"short B", 4, 4, 4, 4, 4, 4, buf, buf[:3], buf},
		{"short C", 4, 4, 4, 4, 4, 4, buf, buf, buf[:10]},
		{"lda < k", 2, 2, 4, 3, 4, 4, buf, buf, buf},
		{"ldc < n", 2, 4, 2, 2, 4, 3, buf, buf, buf},
	}
	for _, c := range cases {
		if err := Sgemm(false, false, c.m, c.n, c.k, 1, c.a, c.lda, c.b, c.ldb, 0, c.c, c.ldc); err == nil {
			t.Errorf("%s: no error", c.name)
		}
	}
}

func TestRMSNorm(t *testing.T) {
	skipNoEngine(t)
	forISAs(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(5, 6))
		n, d := 70, 37
		x, w, dy := randSlice(rng, n*d, 1), randSlice(rng, d, 1), randSlice(rng, n*d, 1)
		eps := float32(1e-5)
		y, rstd := make([]float32, n*d), make([]float32, n)
		if err := RMSNorm(n, d, x, w, eps, y, rstd); err != nil {
			t.Fatal(err)
		}
		wy, wdx, wdw := make([]float64, n*d), make([]float64, n*d), make([]float64, d)
		for r := 0; r < n; r++ {
			ss := 0.0
			for i := 0; i < d; i++ {
				ss += float64(x[r*d+i]) * float64(x[r*d+i])
			}
			rs := 1 / math.Sqrt(ss/float64(d)+float64(eps))
			dot := 0.0
			for i := 0; i < d; i++ {
				wy[r*d+i] = float64(x[r*d+i]) * rs * float64(w[i])
				dot += float64(w[i]) * float64(dy[r*d+i]) * float64(x[r*d+i])
				wdw[i] += float64(dy[r*d+i]) * float64(x[r*d+i]) * rs
			}
			for i := 0; i < d; i++ {
				wdx[r*d+i] = 1.0 + rs*float64(w[i])*float64(dy[r*d+i]) - rs*rs*rs*dot/float64(d)*float64(x[r*d+i])
			}
		}
		closeTo(t, "y", y, wy, 1e-5)
		dx := make([]float32, n*d)
		for i := range dx {
			dx[i] = 1
		}
		dw := make([]float32, d)
		if err := RMSNormBackward(n, d, x, w, rstd, dy, dx, true, dw); err != nil {
			t.Fatal(err)
		}
		closeTo(t, "dx", dx, wdx, 1e-5)
		closeTo(t, "dw", dw, wdw, 1e-5)
	})
}

func TestSwiGLU(t *testing.T) {
	skipNoEngine(t)
	forISAs(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(7, 8))
		n := 1000
		g, u, d := randSlice(rng, n, 3), randSlice(rng, n, 1), randSlice(rng, n, 1)
		out, dg, du := make([]float32, n), make([]float32, n), make([]float32, n)
		if err := SwiGLU(g, u, out); err != nil {
			t.Fatal(err)
		}
		if err := SwiGLUBackward(g, u, d, dg, du); err != nil {
			t.Fatal(err)
		}
		wo, wg, wu := make([]float64, n), make([]float64, n), make([]float64, n)
		for i := range wo {
			x := float64(g[i])
			s := 1 / (1 + math.Exp(-x))
			wo[i] = x * s * float64(u[i])
			wu[i] = float64(d[i]) * x * s
			wg[i] = float64(d[i]) * float64(u[i]) * s * (1 + x*(1-s))
		}
		closeTo(t, "out", out, wo, 1e-4)
		closeTo(t, "dgate", dg, wg, 1e-5)
		closeTo(t, "dup", du, wu, 1e-5)
	})
}

func TestRoPE(t *testing.T) {
	skipNoEngine(t)
	rng := rand.New(rand.NewPCG(9, 10))
	n, heads, dh, npos := 9, 3, 8, 12
	cos, sin := make([]float32, npos*dh/2), make([]float32, npos*dh/2)
	for p := 0; p < npos; p++ {
		for i := 0; i < dh/2; i++ {
			a := float64(p) / math.Pow(10000, float64(2*i)/float64(dh))
			cos[p*dh/2+i], sin[p*dh/2+i] = float32(math.Cos(a)), float32(math.Sin(a))
		}
	}
	pos := make([]int32, n)
	for i := range pos {
		pos[i] = int32(rng.IntN(npos))
	}
	x := randSlice(rng, n*heads*dh, 1)
	y := slices.Clone(x)
	if err := RoPE(n, heads, dh, pos, cos, sin, 0.5, y, false); err != nil {
		t.Fatal(err)
	}
	want := make([]float64, len(x))
	half := dh / 2
	for r := 0; r < n; r++ {
		for h := 0; h < heads; h++ {
			o := r*heads*dh + h*dh
			for i := 0; i < half; i++ {
				a := float64(pos[r]) / math.Pow(10000, float64(2*i)/float64(dh))
				x0, x1 := float64(x[o+i]), float64(x[o+i+half])
				want[o+i] = 0.5 * (x0*math.Cos(a) - x1*math.Sin(a))
				want[o+i+half] = 0.5 * (x1*math.Cos(a) + x0*math.Sin(a))
			}
		}
	}
	closeTo(t, "rope", y, want, 1e-5)
	// The inverse (transpose) with scale 2 undoes it.
	if err := RoPE(n, heads, dh, pos, cos, sin, 2, y, true); err != nil {
		t.Fatal(err)
	}
	back := make([]float64, len(x))
	for i := range x {
		back[i] = float64(x[i])
	}
	closeTo(t, "inverse", y, back, 1e-5)
	if err := RoPE(n, heads, dh, []int32{int32(npos)}, cos, sin, 1, y, false); err == nil {
		t.Error("position outside the table: no error")
	}
}

func TestLogSoftmaxGather(t *testing.T) {
	skipNoEngine(t)
	forISAs(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(11, 12))
		n, v, ld := 13, 531, 540
		logits := randSlice(rng, n*ld, 4)
		tgt := make([]int32, n)
		for i := range tgt {
			tgt[i] = int32(rng.IntN(v))
		}
		g := randSlice(rng, n, 1)
		logp, lse := make([]float32, n), make([]float32, n)
		if err := LogSoftmaxGather(n, v, logits, ld, tgt, logp, lse); err != nil {
			t.Fatal(err)
		}
		wl, wg := make([]float64, n), make([]float64, n*ld)
		for r := 0; r < n; r++ {
			m := math.Inf(-1)
			for i := 0; i < v; i++ {
				m = math.Max(m, float64(logits[r*ld+i]))
			}
			s := 0.0
			for i := 0; i < v; i++ {
				s += math.Exp(float64(logits[r*ld+i]) - m)
			}
			l := m + math.Log(s)
			wl[r] = float64(logits[r*ld+int(tgt[r])]) - l
			for i := 0; i < ld; i++ {
				if i >= v {
					wg[r*ld+i] = float64(logits[r*ld+i])
					continue
				}
				oh := 0.0
				if i == int(tgt[r]) {
					oh = 1
				}
				wg[r*ld+i] = float64(g[r]) * (oh - math.Exp(float64(logits[r*ld+i])-l))
			}
		}
		closeTo(t, "logp", logp, wl, 1e-5)
		if err := LogSoftmaxGatherBackward(n, v, logits, ld, tgt, lse, g); err != nil {
			t.Fatal(err)
		}
		closeTo(t, "dlogits", logits, wg, 1e-5)
		sm := randSlice(rng, 3*v, 2)
		want := make([]float64, len(sm))
		for r := 0; r < 3; r++ {
			s := 0.0
			for i := 0; i < v; i++ {
				s += math.Exp(float64(sm[r*v+i]))
			}
			for i := 0; i < v; i++ {
				want[r*v+i] = math.Exp(float64(sm[r*v+i])) / s
			}
		}
		if err := Softmax(3, v, sm); err != nil {
			t.Fatal(err)
		}
		closeTo(t, "softmax", sm, want, 1e-5)
	})
	if err := LogSoftmaxGather(1, 4, make([]float32, 4), 4, []int32{4}, nil, nil); err == nil {
		t.Error("target outside the vocabulary: no error")
	}
}

// refAttention is attention with materialised scores and the GoMLX graph's
// finite -1e9 bias, in float64, with its backward.
func refAttention(b, tt, hq, hkv, dh int, q, k, v, mask, dout []float32) (out, dq, dk, dv []float64) {
	grp := hq / hkv
	out = make([]float64, b*tt*hq*dh)
	dq = make([]float64, len(out))
	dk = make([]float64, b*tt*hkv*dh)
	dv = make([]float64, len(dk))
	for bi := 0; bi < b; bi++ {
		for h := 0; h < hq; h++ {
			kh := h / grp
			for i := 0; i < tt; i++ {
				qo := (bi*tt+i)*hq*dh + h*dh
				s := make([]float64, tt)
				m := math.Inf(-1)
				for j := 0; j < tt; j++ {
					ko := (bi*tt+j)*hkv*dh + kh*dh
					for d := 0; d < dh; d++ {
						s[j] += float64(q[qo+d]) * float64(k[ko+d])
					}
					bias := 0.0
					if j > i {
						bias -= 1e9
					}
					if mask[bi*tt+j] == 0 {
						bias -= 1e9
					}
					s[j] = float64(float32(float32(s[j]) + float32(bias))) // as float32 graphs round it
					m = math.Max(m, s[j])
				}
				p := make([]float64, tt)
				sum := 0.0
				for j := range p {
					p[j] = math.Exp(s[j] - m)
					sum += p[j]
				}
				dp := make([]float64, tt)
				for j := range p {
					p[j] /= sum
					ko := (bi*tt+j)*hkv*dh + kh*dh
					for d := 0; d < dh; d++ {
						out[qo+d] += p[j] * float64(v[ko+d])
						dp[j] += float64(dout[qo+d]) * float64(v[ko+d])
						dv[ko+d] += p[j] * float64(dout[qo+d])
					}
				}
				dd := 0.0
				for j := range p {
					dd += p[j] * dp[j]
				}
				for j := range p {
					ds := p[j] * (dp[j] - dd)
					ko := (bi*tt+j)*hkv*dh + kh*dh
					for d := 0; d < dh; d++ {
						dq[qo+d] += ds * float64(k[ko+d])
						dk[ko+d] += ds * float64(q[qo+d])
					}
				}
			}
		}
	}
	return
}

func TestAttention(t *testing.T) {
	skipNoEngine(t)
	// qScale 12 makes pad queries' scores exceed ±32, where the graph's
	// float32 -1e9 bias no longer ties them.
	for _, qScale := range []float64{1, 12} {
		t.Run(fmt.Sprintf("qscale%g", qScale), func(t *testing.T) { testAttention(t, qScale) })
	}
}

func testAttention(t *testing.T, qScale float64) {
	tol := 1e-4 // float32 against float64; peaked softmaxes (large scores) lose more
	if qScale > 1 {
		tol = 1e-3
	}
	forISAs(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(13, 14))
		b, tt, hq, hkv, dh := 3, 70, 4, 2, 6
		q, k, v := randSlice(rng, b*tt*hq*dh, qScale), randSlice(rng, b*tt*hkv*dh, 1), randSlice(rng, b*tt*hkv*dh, 1)
		dout := randSlice(rng, b*tt*hq*dh, 1)
		mask := make([]float32, b*tt)
		for i := range mask {
			mask[i] = 1
		}
		for i := 0; i < 9; i++ { // row 1: left padding (past a 16-key lane group); row 2: right padding and a hole
			mask[1*tt+i] = 0
			mask[1*tt+9+i] = 0
			mask[2*tt+tt-1-i] = 0
		}
		mask[2*tt+20] = 0
		out, lse := make([]float32, len(q)), make([]float32, b*hq*tt)
		if err := Attention(b, tt, hq, hkv, dh, q, k, v, mask, out, lse); err != nil {
			t.Fatal(err)
		}
		wo, wdq, wdk, wdv := refAttention(b, tt, hq, hkv, dh, q, k, v, mask, dout)
		closeTo(t, "out", out, wo, tol)
		dq, dk, dv := make([]float32, len(q)), make([]float32, len(k)), make([]float32, len(v))
		if err := AttentionBackward(b, tt, hq, hkv, dh, q, k, v, mask, out, lse, dout, dq, dk, dv); err != nil {
			t.Fatal(err)
		}
		closeTo(t, "dq", dq, wdq, tol)
		closeTo(t, "dk", dk, wdk, tol)
		closeTo(t, "dv", dv, wdv, tol)

		// Decode of the last position from a cache equals the full forward's last row.
		qd := make([]float32, b*hq*dh)
		for bi := 0; bi < b; bi++ {
			copy(qd[bi*hq*dh:(bi+1)*hq*dh], q[(bi*tt+tt-1)*hq*dh:])
		}
		od := make([]float32, len(qd))
		kt, vt := make([]float32, len(k)), make([]float32, len(v))
		for bi := 0; bi < b; bi++ {
			for p := 0; p < tt; p++ {
				for h := 0; h < hkv; h++ {
					for d := 0; d < dh; d++ {
						kt[((bi*hkv+h)*dh+d)*tt+p] = k[(bi*tt+p)*hkv*dh+h*dh+d]
						vt[((bi*hkv+h)*dh+d)*tt+p] = v[(bi*tt+p)*hkv*dh+h*dh+d]
					}
				}
			}
		}
		if err := AttentionDecode(b, tt, tt, hq, hkv, dh, qd, kt, vt, mask, od); err != nil {
			t.Fatal(err)
		}
		for bi := 0; bi < b; bi++ {
			if bi == 2 {
				continue // right padding: the last position is a pad query, causal keys differ only by the mask
			}
			want := make([]float64, hq*dh)
			for i := range want {
				want[i] = wo[(bi*tt+tt-1)*hq*dh+i]
			}
			closeTo(t, "decode", od[bi*hq*dh:(bi+1)*hq*dh], want, tol)
		}
	})
}

func TestAdamW(t *testing.T) {
	skipNoEngine(t)
	rng := rand.New(rand.NewPCG(15, 16))
	n := 100000
	p, g := randSlice(rng, n, 1), randSlice(rng, n, 1)
	m, u := randSlice(rng, n, 0.1), make([]float32, n)
	for i := range u {
		u[i] = float32(rng.Float64())
	}
	p0, m0, u0 := slices.Clone(p), slices.Clone(m), slices.Clone(u)
	if err := AdamWStep(p, g, m, u, 0.5, 0.9, 0.95, 1e-3, 2, 1e-8, 1e-4); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i += 997 {
		gr := float64(g[i]) * 0.5
		mm := 0.9*float64(m0[i]) + 0.1*gr
		uu := 0.95*float64(u0[i]) + 0.05*gr*gr
		pp := float64(p0[i]) * (1 - 1e-4)
		pp -= mm / (math.Sqrt(uu*2) + 1e-8) * 1e-3
		if math.Abs(float64(p[i])-pp) > 1e-6 || math.Abs(float64(m[i])-mm) > 1e-6 || math.Abs(float64(u[i])-uu) > 1e-6 {
			t.Fatalf("element %d: p %g m %g u %g, want %g %g %g", i, p[i], m[i], u[i], pp, mm, uu)
		}
	}
	want := 0.0
	for _, x := range g {
		want += float64(x) * float64(x)
	}
	if got := SumSquares(g); math.Abs(got-want) > 1e-9*want {
		t.Fatalf("SumSquares = %g, want %g", got, want)
	}
}

// FuzzSgemmShapes drives Sgemm with arbitrary dimensions and buffer sizes: it
// must return an error or compute without touching memory outside the slices
// (run under `make asan` for the memory check).
func FuzzSgemmShapes(f *testing.F) {
	f.Add(false, true, 3, 4, 5, 5, 5, 4, 20, 25, 12)
	f.Add(true, false, 8, 1, 2, 8, 1, 1, 16, 2, 8)
	f.Fuzz(func(t *testing.T, ta, tb bool, m, n, k, lda, ldb, ldc, la, lb, lc int) {
		if !Available {
			t.Skip()
		}
		clamp := func(x, hi int) int {
			if x < -2 {
				return -2
			}
			if x > hi {
				return hi
			}
			return x
		}
		m, n, k = clamp(m, 40), clamp(n, 40), clamp(k, 40)
		lda, ldb, ldc = clamp(lda, 50), clamp(ldb, 50), clamp(ldc, 50)
		la, lb, lc = clamp(la, 2000), clamp(lb, 2000), clamp(lc, 2000)
		if la < 0 || lb < 0 || lc < 0 {
			return
		}
		a, b, c := make([]float32, la), make([]float32, lb), make([]float32, lc)
		_ = Sgemm(ta, tb, m, n, k, 1, a, lda, b, ldb, 1, c, ldc)
	})
}

// FuzzRowOpShapes drives the row kernels' and attention's shape checks with
// arbitrary dimensions, buffer sizes and indices: each call must return an
// error or stay inside its slices (run under `make asan` for the memory check).
func FuzzRowOpShapes(f *testing.F) {
	f.Add(2, 3, 2, 1, 4, 16, 16, 5, int32(1))
	f.Add(1, 8, 4, 4, 2, 3, 64, 8, int32(-1))
	f.Fuzz(func(t *testing.T, b, tt, hq, hkv, dh, la, lb, lc int, idx int32) {
		if !Available {
			t.Skip()
		}
		clamp := func(x, lo, hi int) int { return max(lo, min(x, hi)) }
		b, tt, hq, hkv, dh = clamp(b, -1, 4), clamp(tt, -1, 12), clamp(hq, -1, 6), clamp(hkv, -1, 6), clamp(dh, -1, 10)
		la, lb, lc = clamp(la, 0, 3000), clamp(lb, 0, 3000), clamp(lc, 0, 300)
		a, x, small := make([]float32, la), make([]float32, lb), make([]float32, lc)
		ids := make([]int32, lc)
		for i := range ids {
			ids[i] = idx
		}
		_ = Attention(b, tt, hq, hkv, dh, a, x, x, small, a, small)
		_ = AttentionBackward(b, tt, hq, hkv, dh, a, x, x, small, a, small, a, a, x, x)
		_ = AttentionDecode(b, tt, tt+hq-hkv, hq, hkv, dh, a, x, x, small, a)
		_ = DecodeLayer(b, tt, hq, hkv, dh, hkv+1, int(idx), tt+hq, 1e-5, 1, x, ids, small, small, small, a, x, a)
		_ = RMSNorm(b, tt, a, small, 1e-5, x, small)
		_ = RMSNormBackward(b, tt, a, small, small, x, x, true, small)
		_ = RoPE(b, hq, dh, ids, small, small, 1, a, false)
		_ = LogSoftmaxGather(b, tt, a, tt+hkv, ids, small, small)
		_ = LogSoftmaxGatherBackward(b, tt, a, tt+hkv, ids, small, small)
		_ = Softmax(b, tt, a)
		_ = SwiGLU(a, x, small)
		_ = AdamWStep(a, x, small, a, 1, 0.9, 0.95, 1e-3, 1, 1e-8, 0)
	})
}
