package datasets

import (
	"slices"
	"testing"
)

func TestCollate(t *testing.T) {
	sft := []Example{
		{Kind: KindSFT, InputIDs: []int32{1, 5, 6, 2}, Labels: []int32{-100, -100, 6, 2}},
		{Kind: KindSFT, InputIDs: []int32{1, 7}, Labels: []int32{-100, 7}},
	}
	b := CollateSFT(sft, 0)
	if b.Rows != 2 || b.T != 4 || !slices.Equal(b.IDs, []int32{1, 5, 6, 2, 1, 7, 0, 0}) ||
		!slices.Equal(b.Labels, []int32{-100, -100, 6, 2, -100, 7, -100, -100}) ||
		!slices.Equal(b.Mask, []float32{1, 1, 1, 1, 1, 1, 0, 0}) {
		t.Errorf("sft %+v", b)
	}
	pairs := []Example{
		{Kind: KindSafetyPreference, Safer: []int32{1, 3}, Unsafer: []int32{1, 4, 4}, SaferSign: Safe, UnsaferSign: Unsafe},
		{Kind: KindSafetyPreference, Safer: []int32{1}, Unsafer: []int32{1, 9}, SaferSign: SafetyUnknown, UnsaferSign: SafetyUnknown},
	}
	b = CollatePairs(pairs, 0)
	if b.Rows != 4 || b.T != 3 || !slices.Equal(b.IDs, []int32{1, 3, 0, 1, 0, 0, 1, 4, 4, 1, 9, 0}) ||
		!slices.Equal(b.Signs, []float32{1, 0, -1, 0}) {
		t.Errorf("pairs %+v", b)
	}
	b = CollatePrompts([]Example{{InputIDs: []int32{1, 2, 3}}, {InputIDs: []int32{1}}}, 0)
	if !slices.Equal(b.IDs, []int32{1, 2, 3, 0, 0, 1}) || !slices.Equal(b.Mask, []float32{1, 1, 1, 0, 0, 1}) {
		t.Errorf("prompts %+v", b)
	}
}
