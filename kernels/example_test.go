package kernels_test

import (
	"fmt"

	"github.com/saferlhf/saferlhf/kernels"
)

// Example runs the host side of one PPO-Lag rl_step on a tiny rollout:
// λ update, KL-shaped rewards and costs, fused GAE, then the actor and critic
// losses with their gradients (spec §1.8 order). The printed values agree with
// the reference formulas run in PyTorch (bench/torch_kernels.py) on the same data.
func Example() {
	ws := kernels.NewWorkspace(0)
	defer ws.Close()
	const B, L, start = 2, 4, 1 // per-token width L = T−1; the response starts at start = S−1
	N := L - start
	seqMask := []float32{0, 1, 1, 0, 1, 1, 1, 1} // attention_mask[:, 1:]
	logp := []float32{-1, -2, -1.5, -3, -0.5, -1, -2, -1}
	ref := []float32{-1.1, -2.2, -1.4, -3, -0.6, -1, -2.1, -0.9}
	values := []float32{0.1, 0.2, 0.3, 0, 0.5, 0.4, 0.3, 0.2}
	costValues := []float32{0, -0.1, 0.2, 0, 0.1, 0.1, 0, 0}

	lag, _ := kernels.NewLagrange(kernels.LagrangeConfig{LambdaInit: 1, LambdaLR: 0.1, LambdaMax: 5})
	_ = lag.AddEpisodeCosts([]float64{0.5, -0.2}) // the batch's end costs
	step := lag.Update(0)

	rewards, costs := make([]float32, B*L), make([]float32, B*L)
	st, err := kernels.KLShapedRewardsCosts(ws, kernels.KLArgs[float32]{B: B, L: L, KLCoeff: 0.01, ClipRangeScore: 50, Start: start,
		Reward: []float32{1, -1}, Cost: []float32{0.5, -0.2}, LogProbs: logp, RefLogProbs: ref, SeqMask: seqMask}, rewards, costs)
	if err != nil {
		panic(err)
	}
	adv := kernels.NewGAEOut[float32](B, N, true)
	if err := kernels.GAE(ws, kernels.GAEArgs[float32]{B: B, L: L, Start: start, Gamma: 1, Lambda: 0.95,
		RewardValues: values, Rewards: rewards, CostValues: costValues, Costs: costs, SeqMask: seqMask}, adv); err != nil {
		panic(err)
	}
	resp := func(x []float32) []float32 { // [:, start:]
		out := make([]float32, 0, B*N)
		for i := range B {
			out = append(out, x[i*L+start:(i+1)*L]...)
		}
		return out
	}
	newLogp := resp(logp) // the actor's new log-probs (here: unchanged)
	grad := make([]float32, B*N)
	actor, err := kernels.ActorLossPPOLag(ws, kernels.ActorArgs[float32]{B: B, N: N, ClipRatio: 0.2, Lambda: step.Lambda,
		LogProbs: newLogp, OldLogProbs: resp(logp), RewardAdv: adv.RewardAdv, CostAdv: adv.CostAdv, Mask: resp(seqMask)}, grad)
	if err != nil {
		panic(err)
	}
	vgrad := make([]float32, B*N)
	critic, err := kernels.CriticLoss(ws, kernels.CriticArgs[float32]{B: B, N: N, ClipValue: 5, Values: resp(values),
		OldValues: resp(values), Returns: adv.RewardRet, Mask: resp(seqMask)}, vgrad)
	if err != nil {
		panic(err)
	}
	fmt.Printf("λ %.4f  J_c %.2f  KL %.3f\n", step.Lambda, step.EpisodeCost, st.KL)
	fmt.Printf("actor %.4f  clipfrac %.1f  critic %.4f\n", actor.Loss, actor.ClipFrac, critic)
	// Output:
	// λ 1.0151  J_c 0.15  KL 0.050
	// actor 0.1808  clipfrac 0.0  critic 0.5184
}
