package model

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/dtypes/bfloat16"
	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/internal/bf16"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// Precision (--dtype). In bf16 the model's activations and matmuls are
// bfloat16 (XLA's GPU GEMMs accumulate in float32), while RMSNorm
// statistics, softmax, log-softmax, log-probs, scores and everything after
// them are float32. Weights are stored in their variable's dtype: frozen
// weights in bf16, trainable ones (LoRA adapters, score heads, whole models
// without LoRA) as float32 masters, cast to the compute dtype where a graph
// reads them.

// paramDType is the context parameter holding the compute dtype's name.
const paramDType = "saferlhf_model_dtype"

// ParseDType maps a --dtype value ("bf16", "f32"; also "bfloat16",
// "float32") to a GoMLX dtype.
func ParseDType(s string) (dtypes.DType, error) {
	switch strings.ToLower(s) {
	case "bf16", "bfloat16":
		return dtypes.BFloat16, nil
	case "f32", "float32", "fp32":
		return dtypes.Float32, nil
	}
	return dtypes.InvalidDType, fmt.Errorf("dtype %q: want bf16 or f32", s)
}

// DTypeName is the --dtype spelling of dt ("bf16" or "f32").
func DTypeName(dt dtypes.DType) string {
	if dt == dtypes.BFloat16 {
		return "bf16"
	}
	return "f32"
}

// DefaultDType is --dtype's default for a backend spec: bf16 on xla:*
// backends, f32 on the pure-Go one (whose bf16 matmuls are slower than f32).
func DefaultDType(backendSpec string) string {
	if strings.HasPrefix(backendSpec, "xla") {
		return "bf16"
	}
	return "f32"
}

// SetComputeDType makes every model graph built under ctx's scope (and its
// sub-scopes) compute in dt (Float32 or BFloat16).
func SetComputeDType(ctx *context.Context, dt dtypes.DType) {
	ctx.SetParam(paramDType, dt.String())
}

// ComputeDType returns the compute dtype of models under ctx's scope
// (Float32 unless SetComputeDType said otherwise).
func ComputeDType(ctx *context.Context) dtypes.DType {
	if s, ok := ctx.GetParam(paramDType); ok {
		if name, ok := s.(string); ok && name == dtypes.BFloat16.String() {
			return dtypes.BFloat16
		}
	}
	return dtypes.Float32
}

// cast converts x to dt unless it already is (float32 to bf16 rounded to nearest even).
func cast(x *G.Node, dt dtypes.DType) *G.Node {
	if x.DType() == dt {
		return x
	}
	return bf16.ConvertDType(x, dt)
}

// Storage says how SetWeightsWith and LoadInto keep weights.
type Storage struct {
	// DType is the stored dtype (Float32 or BFloat16; zero means Float32).
	DType dtypes.DType
	// Backend, when set, receives each tensor as soon as it is built, and the
	// host copy is freed: the host never holds more than one tensor.
	Backend backends.Backend
}

func (st Storage) dtype() dtypes.DType {
	if st.DType == dtypes.InvalidDType {
		return dtypes.Float32
	}
	return st.DType
}

// SetWeightsWith is SetWeights storing the tensors as st says. The caller
// may drop w afterwards: no variable refers to its data.
func SetWeightsWith(ctx *context.Context, cfg *Config, w Weights, st Storage) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := w.Check(cfg, false); err != nil {
		return err
	}
	exp := ExpectedShapes(cfg, true)
	for _, name := range w.Names() {
		if _, ok := exp[name]; !ok {
			if name == NameLMHead && cfg.TieWordEmbeddings {
				continue // tied: the embedding table is the head
			}
			return fmt.Errorf("weights: unexpected tensor %q for this config", name)
		}
		t := w[name]
		var value *tensors.Tensor
		if st.dtype() == dtypes.BFloat16 {
			value = tensors.FromFlatDataAndDimensions(ToBF16(t.Data), t.Shape...)
		} else {
			value = tensors.FromFlatDataAndDimensions(slices.Clone(t.Data), t.Shape...)
		}
		if err := storeVar(ctx, name, value, st); err != nil {
			return err
		}
	}
	return nil
}

// storeVar creates or overwrites the variable name in ctx's scope with
// value, moving it to st.Backend first when set.
func storeVar(ctx *context.Context, name string, value *tensors.Tensor, st Storage) error {
	if st.Backend != nil {
		if err := value.MaterializeOnDevice(st.Backend, false, 0); err != nil {
			return fmt.Errorf("weights: tensor %q to device: %w", name, err)
		}
		value.FinalizeLocal()
	}
	if v := ctx.GetVariableByScopeAndName(ctx.Scope(), name); v != nil {
		if !slices.Equal(v.Shape().Dimensions, value.Shape().Dimensions) || v.Shape().DType != value.DType() {
			return fmt.Errorf("weights: tensor %q shape %s differs from variable %s", name, value.Shape(), v.Shape())
		}
		if err := v.SetValue(value); err != nil {
			return fmt.Errorf("weights: tensor %q: %w", name, err)
		}
		return nil
	}
	if err := catch(func() { ctx.Checked(false).VariableWithValue(name, value) }); err != nil {
		return fmt.Errorf("weights: tensor %q: %w", name, err)
	}
	return nil
}

// LoadInto reads an HF model directory (as Load) straight into variables of
// ctx's scope, tensor by tensor: bf16 files stored as bf16 are copied
// without widening, and with st.Backend set no host copy outlives its
// tensor, so host memory peaks at about one tensor (the files are
// memory-mapped). Returns the model's config.
func LoadInto(dir string, ctx *context.Context, st Storage) (*Config, error) {
	cfg, err := LoadHFConfig(dir)
	if err != nil {
		return nil, err
	}
	set, err := safetensors.OpenDir(dir)
	if err != nil {
		return nil, err
	}
	defer set.Close()
	prefix, exp, err := hfLayout(dir, cfg, set)
	if err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	for _, name := range sortedKeys(exp) {
		stored := strings.TrimPrefix(name, prefix)
		dt, shape, err := set.Info(stored)
		if err != nil {
			return nil, fmt.Errorf("%s: tensor %q: %w", dir, stored, err)
		}
		if !dt.IsFloat() {
			return nil, fmt.Errorf("%s: tensor %q has dtype %s, want a float type", dir, stored, dt)
		}
		if !slices.Equal(shape, exp[name]) {
			return nil, fmt.Errorf("%s: tensor %q has shape %v, config.json implies %v", dir, stored, shape, exp[name])
		}
		var value *tensors.Tensor
		if dt == safetensors.BF16 && st.dtype() == dtypes.BFloat16 {
			raw, err := set.Bytes(stored)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", dir, err)
			}
			if err := checkFiniteBF16(dir, stored, raw); err != nil {
				return nil, err
			}
			value = tensors.FromShape(shapes.Make(dtypes.BFloat16, shape...))
			if err := value.MutableBytes(func(b []byte) { copy(b, raw) }); err != nil {
				return nil, fmt.Errorf("%s: tensor %q: %w", dir, stored, err)
			}
		} else {
			data := make([]float32, sizeOf(shape))
			if err := set.Float32Into(stored, data); err != nil {
				return nil, err
			}
			if err := checkFinite(dir, stored, data); err != nil {
				return nil, err
			}
			if st.dtype() == dtypes.BFloat16 {
				value = tensors.FromFlatDataAndDimensions(ToBF16(data), shape...)
			} else {
				value = tensors.FromFlatDataAndDimensions(data, shape...)
			}
		}
		if err := storeVar(ctx, name, value, st); err != nil {
			return nil, fmt.Errorf("%s: %w", dir, err)
		}
	}
	if err := checkDescribed(dir, set, exp, prefix, cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// ToBF16 rounds float32 values to bfloat16 (nearest, ties to even, as
// PyTorch), in parallel for large inputs.
func ToBF16(x []float32) []bfloat16.BFloat16 {
	out := make([]bfloat16.BFloat16, len(x))
	parallelRange(len(x), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			out[i] = bfloat16.BFloat16(safetensors.Float32ToBF16(x[i]))
		}
	})
	return out
}

// parallelRange splits [0, n) over the CPUs when n is large.
func parallelRange(n int, fn func(lo, hi int)) {
	workers := runtime.GOMAXPROCS(0)
	if n < 1<<20 || workers == 1 {
		fn(0, n)
		return
	}
	chunk := (n + workers - 1) / workers
	var wg sync.WaitGroup
	for lo := 0; lo < n; lo += chunk {
		wg.Add(1)
		go func(lo, hi int) {
			defer wg.Done()
			fn(lo, hi)
		}(lo, min(lo+chunk, n))
	}
	wg.Wait()
}

// float32Of copies a variable's value (float32 or bfloat16) to host float32.
func float32Of(t *tensors.Tensor) ([]float32, error) {
	switch t.DType() {
	case dtypes.Float32:
		return tensors.CopyFlatData[float32](t)
	case dtypes.BFloat16:
		b, err := tensors.CopyFlatData[bfloat16.BFloat16](t)
		if err != nil {
			return nil, err
		}
		out := make([]float32, len(b))
		for i, v := range b {
			out[i] = v.Float32()
		}
		return out, nil
	}
	return nil, fmt.Errorf("weights: dtype %s not supported", t.DType())
}

// RandomInto fills ctx's scope with random weights of cfg's shapes (norms 1,
// biases 0, other tensors uniform with standard deviation 0.02, HF's LLaMA
// init scale), tensor by tensor as st says, so a 7B-shape model never exists
// on the host (benchmarks: --init random). Deterministic in seed.
func RandomInto(ctx *context.Context, cfg *Config, seed uint64, st Storage) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	exp := ExpectedShapes(cfg, true)
	for _, name := range sortedKeys(exp) {
		shape := exp[name]
		data := make([]float32, sizeOf(shape))
		switch {
		case len(shape) == 1 && (name == NameFinalNorm || strings.HasSuffix(name, "layernorm.weight")):
			for i := range data {
				data[i] = 1
			}
		case len(shape) == 1:
		default:
			h := seed
			for _, c := range name {
				h = splitmix(h ^ uint64(c))
			}
			const a = 0.02 * 1.7320508075688772 // uniform(-a, a) has std 0.02
			parallelRange(len(data), func(lo, hi int) {
				for i := lo; i < hi; i++ {
					u := float64(splitmix(h+uint64(i))>>11) / (1 << 53)
					data[i] = float32((2*u - 1) * a)
				}
			})
		}
		var value *tensors.Tensor
		if st.dtype() == dtypes.BFloat16 {
			value = tensors.FromFlatDataAndDimensions(ToBF16(data), shape...)
		} else {
			value = tensors.FromFlatDataAndDimensions(data, shape...)
		}
		if err := storeVar(ctx, name, value, st); err != nil {
			return err
		}
	}
	return nil
}

// splitmix is SplitMix64's output function.
func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}
