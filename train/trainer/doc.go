// Package trainer holds the training machinery shared by every stage (SFT, reward
// and cost models, PPO-Lagrangian).
//
// Stepper compiles ONE GoMLX graph per input shape that computes a loss given by a
// caller's graph function (LossFn) over a context scope and the batch inputs, its
// gradients with respect to the trainable variables of that scope (minus frozen
// scopes), DeepSpeed-style global-norm clipping (default 1.0) and the PyTorch AdamW
// update (betas 0.9/0.95, eps 1e-8, decoupled weight decay skipped for biases and
// norms; spec §1.10). It returns the loss and the named scalar metrics to the host.
// The optimizer is train/optim's AdamW. The learning rate is an input fed per step,
// so any schedule (optim.Schedule.LR) costs nothing. With Accumulation = K > 1 each Step is a micro-batch whose gradient/K is
// added to accumulators; the K-th call also applies the update.
//
//	s, err := trainer.NewStepper(backend, ctx, trainer.Config{
//		Scope: "/policy", Frozen: []string{"/policy/ref"}, WeightDecay: 0.1,
//		Loss: func(ctx *context.Context, in []*graph.Node) (*graph.Node, map[string]*graph.Node) {
//			... // ctx is at /policy with Reuse set; in = the Step inputs in order
//		}})
//	res, err := s.Step(lr, ids, mask, labels) // res.Loss, res.Metrics["accuracy"], res.GradNorm
//	ev, err := s.Eval(ids, mask, labels)      // no gradients, no update
//
// Optimizer state lives in context variables under "/optim"+Scope (moments "<var>_m1",
// "<var>_m2", accumulators "<var>_accum", scalar "step"), so saving every variable of
// the context and restoring it resumes bit for bit (the Loop does it through
// train/checkpoint).
//
// NativeStepper does the same on the native C engine (native/llama) with a
// host-side loss (NativeLoss) that writes its gradients into the model's
// backward; it keeps weights and AdamW state in host memory and writes them into
// the same context variables, under the same names, at each checkpoint
// (Steps.SyncContext), so a checkpoint is one format whichever engine trained.
//
// Loop is the generic supervised loop built on Steps (a Stepper or a NativeStepper): epochs over a resumable
// batch source, evaluation every N steps on held-out batches, train/checkpoint
// checkpoints every N steps and at the end (atomic, the previous one stays usable;
// model weights as HF safetensors plus every context variable), exact --resume
// (weights, optimizer state, step, data position; refused for another stage's
// checkpoint or a changed configuration), a progress bar, JSONL metrics and
// PNG plots, an error naming the step and quantity on NaN/Inf, and a checkpoint on
// context cancellation (Ctrl-C).
package trainer
