// Package model holds the LLaMA-family transformer of Safe RLHF's six models
// (actor, reference, reward, cost, reward critic, cost critic) as GoMLX graph
// functions, their weights in and out, and batched KV-cache generation.
//
// Weights live in a GoMLX context, one variable per HF tensor name, under a
// scope the caller picks, so several models share one context:
//
//	cfg, w, err := model.LoadLlama2C("stories260K.bin")  // or model.Load(hfDir)
//	ctx := context.New()
//	err = model.SetWeights(ctx.In("actor"), cfg, w)
//	model.SetTrainable(ctx.In("reference"), false)      // frozen copy
//
// Graph functions take the context at that scope and token ids [B, T] int32
// with a mask [B, T] float32 (1 real token, 0 pad). Left and right padding
// both work: RoPE positions are cumsum(mask)-1 clamped at 0 and attention is
// causal restricted to mask==1 keys (an all-pad query row gives finite
// values, never NaN).
//
//	Hidden(ctx, cfg, ids, mask)        [B, T, D]   last hidden state (after the final norm)
//	Logits(ctx, cfg, ids, mask)        [B, T, V]
//	TokenLogProbs(ctx, cfg, ids, mask) [B, T-1]    log p(ids[t+1] | ids[:t+1]), spec §1.2
//	Scores(ctx, cfg, ids, mask)        [B, T]      score head per token (critic values: [:, :-1])
//	EndScores(ctx, cfg, ids, mask)     [B], [B,T]  score at the last mask==1 token, and Scores
//	AtEnd(x, mask)                     gathers any [B, T] tensor at the last mask==1 token
//
// All are differentiable on the pure-Go backend. Trainers call
// EnableFastGradients once before building gradient graphs: it registers a
// DotGeneral gradient made of two DotGenerals (GoMLX's stock one materialises
// an outer product the pure-Go backend cannot fuse, ~25× the forward pass).
//
// The graph is shaped for GoMLX's pure-Go backend (see
// shared/reference/gomlx-cpu.md): RoPE tables are host constants gathered at
// each token's position into full-shape tensors, rotate-half is a tiny
// matmul, the causal+padding bias is built once per forward at the scores'
// full shape and added before a plain Softmax, RMSNorm uses Div(Sqrt) and its
// weight is folded into the following matmul's weight when that is cheaper,
// and x[:, :-1] is a matmul with a 0/1 matrix (Slice's gradient needs Pad,
// which the pure-Go backend lacks).
//
// Shared frozen bases and LoRA: ShareBase(ctx, base) makes a model scope read
// the weights it lacks from another scope, AddLoRA adds trainable low-rank
// adapters (PEFT names "<linear>.lora_A.weight"/".lora_B.weight", B zero so a
// fresh adapter is exact) that graph functions add to their linear's weight,
// and Detach copies chosen shared weights (a critic's score head) into the
// scope. E.g. actor = LoRA over the frozen SFT weights also read by the
// reference; GetWeights returns merged weights for Save.
//
// Generation: NewGenerator builds a Generator over a context scope;
// Generate(prompts, opts) samples with a KV cache and returns a Rollout
// (left-padded prompt, response, right pad; attention mask as spec §1.2).
// Because the generator reads the same context variables, a policy update
// (an optimizer step in the same context, or SetWeights) is visible to the
// next Generate call with no recompilation.
package model
