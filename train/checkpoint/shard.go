package checkpoint

import (
	stdctx "context"
	"fmt"
	"io"
	"sort"

	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// Owned is one tensor of a training state sharded across ranks (ZeRO-1's
// optimiser moments): the full path of its float32 context variable, its
// shape, and the rank that holds it (see dist.Owners).
type Owned struct {
	Name  string
	Shape []int
	Owner int
}

// SaveSharded writes a checkpoint of a training state sharded across the ranks
// of comm, in the one checkpoint format (the full state, as one process would
// write it). Every rank must call it with the same owned list. Every rank
// first runs sync (bringing its context up to date); then rank 0 calls save
// with the tensors that other ranks own, whose bytes are fetched from their
// owners while the file is written, one tensor in flight at a time (no
// gathered copy of the state), while the other ranks serve them from ctx. A
// failure on any rank fails the call on every rank. Without owned tensors only
// rank 0 calls sync and save, and the others return at once.
func SaveSharded(comm dist.Communicator, ctx *context.Context, owned []Owned, sync func() error, save func(remote []safetensors.Tensor) (string, error)) (string, error) {
	bg := stdctx.Background()
	me := comm.Rank()
	if len(owned) == 0 || comm.Size() < 2 {
		if me != 0 {
			return "(by rank 0)", nil
		}
		if err := sync(); err != nil {
			return "", err
		}
		return save(nil)
	}
	owners := make([]int, len(owned))
	for i, o := range owned {
		owners[i] = o.Owner
	}
	syncErr := sync()
	if me != 0 {
		err := dist.Serve(bg, comm, owners, func(i int) ([]byte, error) {
			if syncErr != nil {
				return nil, syncErr
			}
			return variableBytes(ctx, owned[i].Name)
		})
		if err == nil {
			err = syncErr
		}
		if err != nil {
			return "", fmt.Errorf("checkpoint: sharded state: %w", err)
		}
		return "(by rank 0)", nil
	}
	var dir string
	err := syncErr
	if err == nil {
		var remote []safetensors.Tensor
		for i, o := range owned {
			if o.Owner == 0 {
				continue
			}
			remote = append(remote, safetensors.Tensor{Name: o.Name, DType: safetensors.F32, Shape: o.Shape,
				Stream: func(w io.Writer) error {
					b, err := dist.Fetch(bg, comm, i, o.Owner)
					if err != nil {
						return fmt.Errorf("sharded state %s: %w", o.Name, err)
					}
					_, err = w.Write(b)
					return err
				}})
		}
		dir, err = save(remote)
	}
	if endErr := dist.EndFetch(bg, comm, err); err == nil && endErr != nil {
		err = fmt.Errorf("checkpoint: sharded state: %w", endErr)
	}
	return dir, err
}

// WithRemote returns local with the tensors of remote (SaveSharded's) added, replacing any
// local tensor of the same name, sorted by name.
func WithRemote(local, remote []safetensors.Tensor) []safetensors.Tensor {
	if len(remote) == 0 {
		return local
	}
	names := make(map[string]bool, len(remote))
	for _, t := range remote {
		names[t.Name] = true
	}
	out := make([]safetensors.Tensor, 0, len(local)+len(remote))
	for _, t := range local {
		if !names[t.Name] {
			out = append(out, t)
		}
	}
	out = append(out, remote...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// variableBytes returns a copy of the bytes of the context variable at path.
func variableBytes(ctx *context.Context, path string) ([]byte, error) {
	scope, name := splitPath(path)
	v := ctx.GetVariableByScopeAndName(scope, name)
	if v == nil {
		return nil, fmt.Errorf("no variable %s", path)
	}
	t, err := v.Value()
	if err != nil {
		return nil, fmt.Errorf("variable %s: %w", path, err)
	}
	var out []byte
	if err := t.ConstBytes(func(b []byte) { out = append([]byte(nil), b...) }); err != nil {
		return nil, fmt.Errorf("variable %s: %w", path, err)
	}
	return out, nil
}
