package stages

import "github.com/gomlx/gomlx/pkg/core/tensors"

func tensorsOf(x []int32, d ...int) *tensors.Tensor {
	return tensors.FromFlatDataAndDimensions(x, d...)
}
func tensorsOfF(x []float32, d ...int) *tensors.Tensor {
	return tensors.FromFlatDataAndDimensions(x, d...)
}
