package llama

import (
	"fmt"
	"maps"
	"slices"

	"github.com/saferlhf/saferlhf/train/model"
)

// Derive returns a model of m's configuration that reads m's parameters
// (shared, not copied: a frozen base) except the tensors of own, which are
// copied and replace or add to them: a LoRA actor over the frozen SFT weights
// the reference model also reads, or a critic with its own score head and
// adapters over the reward model's trunk. Only own's tensors are trainable;
// loraScale is α/r of own's adapters.
func (m *Model) Derive(own model.Weights, loraScale float64) (*Model, error) {
	d := &Model{Cfg: m.Cfg, Params: maps.Clone(m.Params), Shapes: maps.Clone(m.Shapes), LoRAScale: float32(loraScale),
		Trainable: map[string]bool{}}
	for name, t := range own {
		if len(t.Data) != t.Size() {
			return nil, fmt.Errorf("llama: derive: tensor %q has %d values for shape %v", name, len(t.Data), t.Shape)
		}
		if sh, ok := m.Shapes[name]; ok && !slices.Equal(sh, t.Shape) {
			return nil, fmt.Errorf("llama: derive: tensor %q has shape %v, the base's is %v", name, t.Shape, sh)
		}
		if _, ok := m.Shapes[name]; !ok && !isLoRA(name) {
			return nil, fmt.Errorf("llama: derive: tensor %q is neither in the base nor a LoRA adapter", name)
		}
		d.Params[name], d.Shapes[name] = slices.Clone(t.Data), slices.Clone(t.Shape)
	}
	for name := range d.Params {
		d.Trainable[name] = own[name] != nil
		if !isLoRA(name) {
			continue
		}
		stem := loraStem(name)
		ws, ok := d.Shapes[stem+".weight"]
		a, b := d.Shapes[stem+".lora_A.weight"], d.Shapes[stem+".lora_B.weight"]
		if !ok || len(a) != 2 || len(b) != 2 || a[1] != ws[1] || b[0] != ws[0] || a[0] != b[1] {
			return nil, fmt.Errorf("llama: derive: LoRA adapter %q does not fit its linear %v (A %v, B %v)", name, ws, a, b)
		}
	}
	return d, nil
}
