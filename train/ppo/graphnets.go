package ppo

import (
	"fmt"
	"maps"
	"math"
	"strings"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/kernels"
	"github.com/saferlhf/saferlhf/kernels/ingraph"
	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/safetensors"
	"github.com/saferlhf/saferlhf/train/trainer"
)

// Context scopes of the six models (spec §1.1). They share one GoMLX context; a checkpoint holds
// every variable outside the frozen scopes, which is what exact resume needs.
const (
	ScopeActor        = "/actor"
	ScopeReference    = "/reference"
	ScopeReward       = "/reward"
	ScopeCost         = "/cost"
	ScopeRewardCritic = "/reward_critic"
	ScopeCostCritic   = "/cost_critic"
)

// ScoreNormalizer returns the normaliser of a score model's config.json statistics with the
// normalize function fn (kernels.Affine for rewards, kernels.Scale for costs, spec §3); it fails
// for a model saved without statistics.
func ScoreNormalizer(c *model.Config, fn kernels.NormalizeFunction) (*kernels.Normalizer, error) {
	if len(c.Score.Mean) != 1 || len(c.Score.Var) != 1 {
		return nil, fmt.Errorf("no normaliser statistics (config.json mean/var) for a score_dim 1 model")
	}
	n, err := kernels.NewNormalizer(kernels.IdentityNormalizer, fn, 0)
	if err != nil {
		return nil, err
	}
	n.Mean, n.Var = c.Score.Mean[0], c.Score.Var[0]
	if !(n.Var >= 0) || math.IsInf(n.Var, 0) || math.IsNaN(n.Mean) || math.IsInf(n.Mean, 0) {
		return nil, fmt.Errorf("normaliser mean %g var %g: want finite, var >= 0", n.Mean, n.Var)
	}
	return n, nil
}

// ModelSpec is a model's configuration and where its weights come from:
// host Weights, else an HF directory Dir read tensor by tensor
// (model.LoadInto), else random weights drawn from RandomSeed
// (model.RandomInto, for benchmarks). NewGraphNets keeps no reference to
// Weights: drop them after it returns and the host holds no model copy.
type ModelSpec struct {
	Cfg        *model.Config
	Weights    model.Weights
	Dir        string
	RandomSeed uint64
}

// load puts the model in ctx's scope as st says.
func (s *ModelSpec) load(ctx *context.Context, st model.Storage) error {
	switch {
	case s.Weights != nil:
		return model.SetWeightsWith(ctx, s.Cfg, s.Weights, st)
	case s.Dir != "":
		_, err := model.LoadInto(s.Dir, ctx, st)
		return err
	default:
		return model.RandomInto(ctx, s.Cfg, s.RandomSeed, st)
	}
}

// GraphNetsConfig configures GraphNets.
type GraphNetsConfig struct {
	Backend backends.Backend
	// Actor is the SFT policy (LM head); the reference model is a frozen copy of it.
	Actor ModelSpec
	// Reward and Cost are the frozen score models; Cost.Cfg is nil for plain PPO.
	Reward, Cost ModelSpec
	// RewardCritic and CostCritic default to copies of Reward and Cost (the reference's default).
	RewardCritic, CostCritic *ModelSpec
	// WithCostCritic trains a cost critic (the Lagrangian variants).
	WithCostCritic bool
	// Tokenizer is the actor's (and critics') tokenizer; RewardTokenizer and CostTokenizer are
	// the score models'. When one differs (tokenizer.Same), that model scores the sequences
	// re-tokenised through text (spec §1.1, batch_retokenize); nil means the actor's.
	Tokenizer, RewardTokenizer, CostTokenizer tokenizer.Tokenizer
	// RewardNorm and CostNorm, when set, normalise the reward and cost end scores (spec §3).
	RewardNorm, CostNorm *kernels.Normalizer
	// Pad and EOS token ids (pad is also <unk> for llama2.c vocabularies: attention_mask = seq ≠ pad).
	Pad, EOS int32
	// Generation settings.
	MaxNewTokens, MaxPromptTokens int
	Temperature, TopP, RepPenalty float64
	// TopK keeps the K most likely tokens before top-p (HF's default 50; 0: off).
	TopK int
	// Optimizer settings (spec §1.10).
	ActorWeightDecay, CriticWeightDecay, GradClip float64
	// SaveModel writes a model directory (model.Save); SavePolicy fails without it.
	// The tensors stream one at a time (model.StreamWeights).
	SaveModel func(dir string, cfg *model.Config, ts []safetensors.Tensor) error
	// LoRA, when LoRA.Rank > 0, trains low-rank adapters instead of full weights: the actor reads the
	// frozen reference weights and adds its adapters, and each critic that starts from its score model
	// reads that frozen model's trunk, with its own score head and adapters. One frozen copy of each
	// base serves two models.
	LoRA model.LoRAConfig
	// LoRASeed seeds the adapters' initialisation.
	LoRASeed uint64
	// DType is the compute dtype (--dtype): Float32 (the zero value) or
	// BFloat16, in which frozen weights are stored in bf16 and trainable
	// ones stay float32 masters (see model.SetComputeDType).
	DType dtypes.DType
	// MicroBatchSize, when > 0 and smaller than TrainBatchSize (which it must divide), splits each
	// update into TrainBatchSize/MicroBatchSize micro-batches whose gradients are accumulated in
	// graph before one AdamW step (--micro-batch-size): activation memory, attention's B×H×T×T
	// included, is that of one micro-batch.
	MicroBatchSize, TrainBatchSize int
	// Updates selects whole-model update graphs or layerwise updates (default: layerwise on XLA).
	Updates UpdatePrograms
	// Comm, with more than one rank, averages the actor's and critics' gradients across ranks
	// before each optimiser step (TrainBatchSize is then this rank's share of the micro-batch).
	Comm dist.Communicator
	// ZeroStage 1 shards the AdamW moments of the actor and critics across the ranks of Comm
	// (ZeRO-1, see train/trainer's zero.go); 0 keeps all of them on every rank.
	ZeroStage int
	// Reducer, if set, averages the three Steppers' gradients instead of the host path over
	// Comm (--collectives: collectives.Reducer, NCCL on the device buffers).
	Reducer trainer.GradientReducer
}

// GraphNets runs the six networks as GoMLX graphs in one context: the post_rollout scoring pass
// as per-layer programs shared by the models of one shape (model.Layerwise), and three Steppers
// (actor, reward critic, cost critic) whose loss, gradient and AdamW update are one compiled graph
// each. On the native backend the same work runs on native models kept for the run (nativeNets);
// the context then holds their trained state as of the last checkpoint or save.
type GraphNets struct {
	cfg                  GraphNetsConfig
	ctx                  *context.Context
	actorCfg, rCfg, cCfg *model.Config
	rcCfg, ccCfg         *model.Config
	// lw runs the scoring passes; the models as it sees them (the reference and, under LoRA, the
	// score models read zero adapters so that they run their partner's programs).
	lw                                     *model.Layerwise
	actorM, refM, rcM, ccM, rewardM, costM model.Model
	actor, rcritic, ccritic                *trainer.Stepper
	// The trained variables of the layerwise updates (set on first use).
	actorTrained, rcTrained, ccTrained trainedSet
	gen                                generator
	clipRatio, clipValue               float64
	accum                              int // micro-batches per update
	// retok[k] scores score model k (0 reward, 1 cost) on re-tokenised sequences; nil when it
	// shares the actor's tokenizer.
	retok [2]*retokScorer
	// nat holds the native models (backend "native"), built on first use.
	nat *nativeNets
	// natCommTime is the native updates' time in gradient all-reduces.
	natCommTime time.Duration
	// xfer counts the bytes scoring and the updates move between host and device; genXfer
	// generation's (model.Generator.Transfers).
	xfer, genXfer Transfers
	// maskExec computes the attention mask of device-resident ids (seq ≠ pad).
	maskExec *G.Exec
}

// retokScorer runs one frozen score model on sequences re-tokenised for its vocabulary.
type retokScorer struct {
	src, dst tokenizer.Tokenizer
	maxLen   int // the model's max_position_embeddings
	lw       *model.Layerwise
	model    model.Model
}

// NewGraphNets loads the models into one context and compiles nothing yet (graphs compile on first use).
func NewGraphNets(c GraphNetsConfig, clipRatio, clipValue float64) (*GraphNets, error) {
	if c.Backend == nil {
		return nil, fmt.Errorf("ppo: GraphNetsConfig.Backend is nil")
	}
	if c.Actor.Cfg == nil || c.Reward.Cfg == nil {
		return nil, fmt.Errorf("ppo: the actor and the reward model are required")
	}
	if c.RewardCritic == nil {
		c.RewardCritic = &c.Reward
	}
	if c.WithCostCritic {
		if c.Cost.Cfg == nil {
			return nil, fmt.Errorf("ppo: a cost critic needs a cost model")
		}
		if c.CostCritic == nil {
			c.CostCritic = &c.Cost
		}
	}
	if err := model.EnableFastGradients(); err != nil {
		return nil, fmt.Errorf("ppo: %w", err)
	}
	n := &GraphNets{cfg: c, ctx: context.New(), actorCfg: c.Actor.Cfg, rCfg: c.Reward.Cfg, cCfg: c.Cost.Cfg,
		rcCfg: c.RewardCritic.Cfg, clipRatio: clipRatio, clipValue: clipValue}
	if c.DType == dtypes.InvalidDType {
		c.DType = dtypes.Float32
	}
	if c.DType != dtypes.Float32 && backend.IsNative(c.Backend) {
		return nil, fmt.Errorf("ppo: --dtype %s: the native engine computes in float32 (use --dtype f32, or --backend go or xla:cuda)", model.DTypeName(c.DType))
	}
	model.SetComputeDType(n.ctx, c.DType)
	set := func(scope string, s *ModelSpec, trainable bool) error {
		sc := n.ctx.InAbsPath(scope)
		st := model.Storage{DType: c.DType, Backend: c.Backend}
		if trainable {
			st.DType = dtypes.Float32 // float32 masters
		}
		if err := s.load(sc, st); err != nil {
			return fmt.Errorf("ppo: %s: %w", scope, err)
		}
		model.SetTrainable(sc, trainable)
		return nil
	}
	// adapt makes scope a LoRA model over the frozen base scope (sharing its weights), with its own
	// trainable copies of the detached weights and fresh adapters.
	adapt := func(scope, base string, cfg *model.Config, detach ...string) error {
		sc := n.ctx.InAbsPath(scope)
		model.ShareBase(sc, n.ctx.InAbsPath(base))
		if err := model.Detach(sc, detach...); err != nil {
			return fmt.Errorf("ppo: %s: %w", scope, err)
		}
		if err := model.AddLoRA(sc, cfg, c.LoRA, c.LoRASeed); err != nil {
			return fmt.Errorf("ppo: %s: %w", scope, err)
		}
		model.SetTrainable(sc, true)
		return nil
	}
	lora := c.LoRA.Rank > 0
	if err := set(ScopeReference, &c.Actor, false); err != nil {
		return nil, err
	}
	if lora {
		if err := adapt(ScopeActor, ScopeReference, c.Actor.Cfg); err != nil {
			return nil, err
		}
	} else if err := set(ScopeActor, &c.Actor, true); err != nil {
		return nil, err
	}
	if err := set(ScopeReward, &c.Reward, false); err != nil {
		return nil, err
	}
	if lora && c.RewardCritic == &c.Reward {
		if err := adapt(ScopeRewardCritic, ScopeReward, c.Reward.Cfg, model.NameScoreW, model.NameScoreB); err != nil {
			return nil, err
		}
	} else if err := set(ScopeRewardCritic, c.RewardCritic, true); err != nil {
		return nil, err
	}
	if c.Cost.Cfg != nil {
		if err := set(ScopeCost, &c.Cost, false); err != nil {
			return nil, err
		}
	}
	if c.WithCostCritic {
		n.ccCfg = c.CostCritic.Cfg
		if lora && c.CostCritic == &c.Cost {
			if err := adapt(ScopeCostCritic, ScopeCost, c.Cost.Cfg, model.NameScoreW, model.NameScoreB); err != nil {
				return nil, err
			}
		} else if err := set(ScopeCostCritic, c.CostCritic, true); err != nil {
			return nil, err
		}
	}
	for k, sm := range []struct {
		tok   tokenizer.Tokenizer
		scope string
		cfg   *model.Config
	}{{c.RewardTokenizer, ScopeReward, c.Reward.Cfg}, {c.CostTokenizer, ScopeCost, c.Cost.Cfg}} {
		if sm.tok == nil || sm.cfg == nil || tokenizer.Same(sm.tok, c.Tokenizer) {
			continue
		}
		if c.Tokenizer == nil {
			return nil, fmt.Errorf("ppo: a score model has its own tokenizer, so GraphNetsConfig.Tokenizer (the actor's) is required")
		}
		if critic := [2]*ModelSpec{c.RewardCritic, c.CostCritic}[k]; critic != nil && critic.Cfg == sm.cfg {
			return nil, fmt.Errorf("ppo: the %s critic must share the actor's tokenizer, but it defaults to the %s model, whose tokenizer differs: give the critic another initialisation (e.g. the actor)",
				[2]string{"reward", "cost"}[k], [2]string{"reward", "cost"}[k])
		}
		n.retok[k] = &retokScorer{src: c.Tokenizer, dst: sm.tok, maxLen: sm.cfg.MaxPositions}
	}
	// No host copy of any model outlives loading.
	n.cfg.Actor.Weights, n.cfg.Reward.Weights, n.cfg.Cost.Weights = nil, nil, nil
	n.cfg.RewardCritic, n.cfg.CostCritic = nil, nil
	accum := 1
	if c.MicroBatchSize > 0 && c.MicroBatchSize < c.TrainBatchSize {
		if c.TrainBatchSize%c.MicroBatchSize != 0 {
			return nil, fmt.Errorf("ppo: micro-batch size %d must divide the train batch size %d", c.MicroBatchSize, c.TrainBatchSize)
		}
		accum = c.TrainBatchSize / c.MicroBatchSize
	}
	n.accum = accum
	n.scoringModels(lora)
	var err error
	if n.actor, err = trainer.NewStepper(c.Backend, n.ctx, trainer.Config{Scope: ScopeActor, Loss: n.actorLoss,
		WeightDecay: c.ActorWeightDecay, ClipNorm: c.GradClip, Accumulation: accum, Comm: c.Comm, ZeroStage: c.ZeroStage, Reducer: c.Reducer}); err != nil {
		return nil, fmt.Errorf("ppo: actor: %w", err)
	}
	if n.rcritic, err = trainer.NewStepper(c.Backend, n.ctx, trainer.Config{Scope: ScopeRewardCritic,
		Loss: n.criticLoss(n.rcCfg), WeightDecay: c.CriticWeightDecay, ClipNorm: c.GradClip, Accumulation: accum, Comm: c.Comm, ZeroStage: c.ZeroStage, Reducer: c.Reducer}); err != nil {
		return nil, fmt.Errorf("ppo: reward critic: %w", err)
	}
	if c.WithCostCritic {
		if n.ccritic, err = trainer.NewStepper(c.Backend, n.ctx, trainer.Config{Scope: ScopeCostCritic,
			Loss: n.criticLoss(n.ccCfg), WeightDecay: c.CriticWeightDecay, ClipNorm: c.GradClip, Accumulation: accum, Comm: c.Comm, ZeroStage: c.ZeroStage, Reducer: c.Reducer}); err != nil {
			return nil, fmt.Errorf("ppo: cost critic: %w", err)
		}
	}
	if n.gen, err = newGenerator(n); err != nil {
		return nil, err
	}
	return n, nil
}

// CollectiveSeconds is the time the actor and critics have spent averaging gradients across ranks.
func (n *GraphNets) CollectiveSeconds() float64 {
	d := n.actor.CollectiveTime() + n.rcritic.CollectiveTime() + n.natCommTime
	if n.ccritic != nil {
		d += n.ccritic.CollectiveTime()
	}
	return d.Seconds()
}

// Context returns the context holding all six models and the optimizer state.
func (n *GraphNets) Context() *context.Context { return n.ctx }

// scoringModels sets up the Layerwise scoring of the six models. Under LoRA the reference reads
// zero adapters shaped like the actor's, and each score model zero adapters shaped like its
// critic's, so each pair runs one set of compiled programs (exactly: x·Wᵀ + s·(x·Aᵀ)·0ᵀ = x·Wᵀ).
// --micro-batch-size also bounds the rows of a scoring pass (attention's B×H×T×T).
func (n *GraphNets) scoringModels(lora bool) {
	n.lw = model.NewLayerwise(n.cfg.Backend)
	n.lw.RowChunk = n.cfg.MicroBatchSize
	m := func(scope string, cfg *model.Config) model.Model {
		return model.ScopeModel(n.ctx.InAbsPath(scope), cfg)
	}
	n.actorM, n.refM, n.rcM = m(ScopeActor, n.actorCfg), m(ScopeReference, n.actorCfg), m(ScopeRewardCritic, n.rcCfg)
	n.rewardM = m(ScopeReward, n.rCfg)
	if n.ccCfg != nil {
		n.ccM = m(ScopeCostCritic, n.ccCfg)
	}
	if n.cCfg != nil {
		n.costM = m(ScopeCost, n.cCfg)
	}
	if lora {
		n.refM = n.lw.ZeroAdapters(n.refM, n.actorM)
		n.rewardM = n.lw.ZeroAdapters(n.rewardM, n.rcM)
		if n.ccCfg != nil && n.cCfg != nil {
			n.costM = n.lw.ZeroAdapters(n.costM, n.ccM)
		}
	}
	for k, mm := range []model.Model{n.rewardM, n.costM} {
		if n.retok[k] != nil {
			n.retok[k].lw, n.retok[k].model = n.lw, mm
		}
	}
}

// Programs returns the layerwise programs (scoring, layerwise updates) compiled so far, with their
// sizes and compile times.
func (n *GraphNets) Programs() []model.ProgramStat { return n.lw.Programs() }

// Score implements Nets: the scoring pass (the native engine's or the graph's), then the
// score normalisation (--normalize-reward/--normalize-cost).
func (n *GraphNets) Score(r *Rollout) error {
	score := n.graphScore
	if backend.IsNative(n.cfg.Backend) {
		score = n.nativeScore
	}
	if err := score(r); err != nil {
		return err
	}
	for _, s := range []struct {
		norm   *kernels.Normalizer
		scores []float32
	}{{n.cfg.RewardNorm, r.Reward}, {n.cfg.CostNorm, r.Cost}} {
		if s.norm != nil && s.scores != nil {
			if err := kernels.NormalizeInto(s.norm, s.scores, s.scores); err != nil {
				return fmt.Errorf("score: %w", err)
			}
		}
	}
	return nil
}

// graphScore is post_rollout's no-grad pass (spec §1.2 step 3): actor and reference log-probs,
// reward and cost critic values, then the reward and cost end scores (re-tokenised for a score
// model with its own tokenizer). With r.onDevice the per-token outputs stay on the device
// (graphScoreOn).
func (n *GraphNets) graphScore(r *Rollout) error {
	if r.onDevice {
		return n.graphScoreOn(r)
	}
	B, T := r.B, r.T
	var err error
	if r.LogProbs, err = n.hostLogProbs(n.actorM, r.Seq, r.Mask, B, T); err != nil {
		return fmt.Errorf("score B=%d T=%d: actor: %w", B, T, err)
	}
	if r.RefLogProbs, err = n.hostLogProbs(n.refM, r.Seq, r.Mask, B, T); err != nil {
		return fmt.Errorf("score B=%d T=%d: reference: %w", B, T, err)
	}
	v, _, err := n.hostScores(n.rcM, r.Seq, r.Mask, B, T)
	if err != nil {
		return fmt.Errorf("score B=%d T=%d: reward critic: %w", B, T, err)
	}
	r.RewardValues = dropLastCol(v, B, T)
	if n.ccCfg != nil {
		if v, _, err = n.hostScores(n.ccM, r.Seq, r.Mask, B, T); err != nil {
			return fmt.Errorf("score B=%d T=%d: cost critic: %w", B, T, err)
		}
		r.CostValues = dropLastCol(v, B, T)
	}
	return n.endScores(r, func(m model.Model) ([]float32, error) {
		_, end, err := n.hostScores(m, r.Seq, r.Mask, B, T)
		return end, err
	})
}

// endScores fills r's reward and cost end scores with end (or re-tokenised).
func (n *GraphNets) endScores(r *Rollout, end func(model.Model) ([]float32, error)) error {
	var err error
	if n.retok[0] == nil {
		if r.Reward, err = end(n.rewardM); err != nil {
			return fmt.Errorf("score B=%d T=%d: reward model: %w", r.B, r.T, err)
		}
	} else if r.Reward, err = n.retok[0].score(r, &n.xfer); err != nil {
		return fmt.Errorf("reward model (re-tokenised): %w", err)
	}
	if n.cCfg != nil {
		if n.retok[1] == nil {
			if r.Cost, err = end(n.costM); err != nil {
				return fmt.Errorf("score B=%d T=%d: cost model: %w", r.B, r.T, err)
			}
		} else if r.Cost, err = n.retok[1].score(r, &n.xfer); err != nil {
			return fmt.Errorf("cost model (re-tokenised): %w", err)
		}
	}
	return nil
}

// hostLogProbs is Layerwise.TokenLogProbs on host data, its transfers counted in n.xfer.
func (n *GraphNets) hostLogProbs(m model.Model, ids []int32, mask []float32, B, T int) ([]float32, error) {
	n.xfer.IDsUp.Add(int64(4 * len(ids)))
	n.xfer.Up.Add(int64(4 * len(mask)))
	out, err := n.lw.TokenLogProbs(m, ids, mask, B, T)
	n.xfer.Down.Add(int64(4 * len(out)))
	return out, err
}

// hostScores is Layerwise.Scores on host data, its transfers counted in n.xfer.
func (n *GraphNets) hostScores(m model.Model, ids []int32, mask []float32, B, T int) (scores, end []float32, err error) {
	return countedScores(n.lw, &n.xfer, m, ids, mask, B, T)
}

func countedScores(lw *model.Layerwise, x *Transfers, m model.Model, ids []int32, mask []float32, B, T int) (scores, end []float32, err error) {
	x.IDsUp.Add(int64(4 * len(ids)))
	x.Up.Add(int64(4 * len(mask)))
	scores, end, err = lw.Scores(m, ids, mask, B, T)
	x.Down.Add(int64(4 * (len(scores) + len(end))))
	return scores, end, err
}

// graphScoreOn is graphScore keeping the per-token tensors on the device (r.dev): the ids go up
// once, the attention mask is computed from them there (seq ≠ pad, as Generate builds it), and
// only the end scores come back.
func (n *GraphNets) graphScoreOn(r *Rollout) (err error) {
	B, T := r.B, r.T
	d := &rolloutDev{seq: upload(&n.xfer, r.Seq, B, T)}
	r.dev = d
	defer func() {
		if err != nil {
			r.free()
		}
	}()
	if d.mask, err = n.maskOn(d.seq); err != nil {
		return fmt.Errorf("score B=%d T=%d: attention mask: %w", B, T, err)
	}
	if d.logp, err = n.lw.TokenLogProbsOn(n.actorM, d.seq, d.mask); err != nil {
		return fmt.Errorf("score B=%d T=%d: actor: %w", B, T, err)
	}
	if d.ref, err = n.lw.TokenLogProbsOn(n.refM, d.seq, d.mask); err != nil {
		return fmt.Errorf("score B=%d T=%d: reference: %w", B, T, err)
	}
	var end *tensors.Tensor
	if d.rV, end, err = n.lw.ScoresOn(n.rcM, d.seq, d.mask); err != nil {
		return fmt.Errorf("score B=%d T=%d: reward critic: %w", B, T, err)
	}
	end.FinalizeAll()
	if n.ccCfg != nil {
		if d.cV, end, err = n.lw.ScoresOn(n.ccM, d.seq, d.mask); err != nil {
			return fmt.Errorf("score B=%d T=%d: cost critic: %w", B, T, err)
		}
		end.FinalizeAll()
	}
	return n.endScores(r, func(m model.Model) ([]float32, error) {
		scores, end, err := n.lw.ScoresOn(m, d.seq, d.mask)
		if err != nil {
			return nil, err
		}
		scores.FinalizeAll()
		defer end.FinalizeAll()
		return download[float32](&n.xfer, end)
	})
}

// maskOn returns the attention mask (float32, 1 where ids ≠ pad) of device ids.
func (n *GraphNets) maskOn(ids *tensors.Tensor) (*tensors.Tensor, error) {
	if n.maskExec == nil {
		pad := n.cfg.Pad
		e, err := G.NewExec(n.cfg.Backend, func(ids *G.Node) *G.Node {
			return G.ConvertDType(G.NotEqual(ids, G.Scalar(ids.Graph(), ids.DType(), pad)), dtypes.Float32)
		})
		if err != nil {
			return nil, err
		}
		n.maskExec = e
	}
	out, err := execGraph(n.maskExec, ids)
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// score re-tokenises r (batch) and returns the score model's end scores (transfers counted in x).
func (s *retokScorer) score(r *Rollout, x *Transfers) ([]float32, error) {
	seq, mask, W := s.batch(r)
	_, end, err := countedScores(s.lw, x, s.model, seq, mask, r.B, W)
	if err != nil {
		return nil, fmt.Errorf("B=%d T=%d: %w", r.B, W, err)
	}
	return end, nil
}

// batch re-tokenises every row of r (its attention-masked tokens) for the score model's
// vocabulary and right pads them into one [r.B, W] batch (W rounded up to 16 to bound
// recompiles). A row longer than the model's positions keeps BOS and its last tokens.
func (s *retokScorer) batch(r *Rollout) (seq []int32, mask []float32, W int) {
	rows := make([][]int32, r.B)
	for i := range rows {
		var ids []int32
		for t := 0; t < r.T; t++ {
			if r.Mask[i*r.T+t] != 0 {
				ids = append(ids, r.Seq[i*r.T+t])
			}
		}
		row := tokenizer.Retokenize(s.src, s.dst, ids)
		if s.maxLen > 1 && len(row) > s.maxLen {
			row = append(row[:1:1], row[len(row)-(s.maxLen-1):]...)
		}
		rows[i] = row
		W = max(W, len(row))
	}
	W = (W + 15) / 16 * 16
	if s.maxLen > 1 {
		W = min(W, s.maxLen)
	}
	seq = make([]int32, r.B*W)
	mask = make([]float32, r.B*W)
	for i, row := range rows {
		for t := range W {
			seq[i*W+t] = s.dst.Pad()
			if t < len(row) {
				seq[i*W+t], mask[i*W+t] = row[t], 1
			}
		}
	}
	return seq, mask, W
}

// actorLoss is the actor's LossFn. Inputs: ids, mask, old log-probs, reward advantages, response
// mask, then (PPO-Lag) cost advantages and λ, then optionally PTX ids, PTX mask, PTX label mask,
// the PTX loss's denominator (PTXBatch.den) and the PTX coefficient. The losses are kernels/ingraph's (spec §1.5); with PTX the loss is
// ½(actor + coeff·ptx), the gradient DeepSpeed's doubled accumulation produces (spec §1.9).
func (n *GraphNets) actorLoss(ctx *context.Context, in []*G.Node) (*G.Node, map[string]*G.Node) {
	logp := model.TokenLogProbs(ctx, n.actorCfg, in[0], in[1])
	var out ingraph.ActorOut
	rest := in[5:]
	if n.cfg.WithCostCritic {
		out = ingraph.ActorLossPPOLag(logp, in[2], in[3], rest[0], in[4], rest[1], n.clipRatio)
		rest = rest[2:]
	} else {
		out = ingraph.ActorLossPPO(logp, in[2], in[3], in[4], n.clipRatio)
	}
	loss := out.Loss
	metrics := map[string]*G.Node{"actor_loss": out.Loss, "clip_frac": out.ClipFrac, "approx_kl": out.ApproxKL}
	if len(rest) > 0 {
		ptx := graphLMLoss(model.TokenLogProbs(ctx, n.actorCfg, rest[0], rest[1]), rest[2], rest[3])
		metrics["ptx_loss"] = ptx
		loss = G.MulScalar(G.Add(loss, G.Mul(rest[4], ptx)), 0.5)
	} else {
		metrics["ptx_loss"] = G.ScalarZero(loss.Graph(), loss.DType())
	}
	return loss, metrics
}

// criticLoss returns a critic's LossFn: inputs ids, mask, old values, returns, response mask, all
// per-token ones padded to width T with a zero last column (no Slice in the graph).
func (n *GraphNets) criticLoss(cfg *model.Config) trainer.LossFn {
	return func(ctx *context.Context, in []*G.Node) (*G.Node, map[string]*G.Node) {
		v := model.Scores(ctx, cfg, in[0], in[1])
		return ingraph.CriticLoss(v, in[2], in[3], in[4], n.clipValue), nil
	}
}

// UpdateActor implements Nets.
func (n *GraphNets) UpdateActor(b ActorBatch) (ActorStats, error) {
	r, ptx := b.Rollout, b.PTX
	if withCost := b.CostAdv != nil || b.RewardAdv == nil && r.dev != nil && r.dev.rl != nil && r.dev.rl.cAdv != nil; withCost != n.cfg.WithCostCritic {
		return ActorStats{}, fmt.Errorf("actor: cost advantages given = %v, but the nets were built with cost critic = %v", withCost, n.cfg.WithCostCritic)
	}
	if backend.IsNative(n.cfg.Backend) {
		return n.nativeUpdateActor(b)
	}
	if ptx == nil && n.layerwiseUpdates() {
		return n.updateActorLayerwise(b)
	}
	k := n.accum
	if r.B%k != 0 || (ptx != nil && ptx.B%k != 0) {
		return ActorStats{}, fmt.Errorf("actor: batch %d (PTX %v) not divisible into %d micro-batches", r.B, ptx != nil, k)
	}
	// k micro-batches of rows (of the rollout and of the PTX batch), gradients accumulated in
	// graph and applied once: the micro-batches' mean loss, as DeepSpeed's gradient accumulation.
	var st ActorStats
	for i := 0; i < k; i++ {
		in, err := n.actorInputs(b, i, k)
		if err != nil {
			return ActorStats{}, err
		}
		args := []any{in.ids, in.mask, in.logp, in.rAdv, in.resp}
		if in.cAdv != nil {
			args = append(args, in.cAdv, in.lambda)
		}
		if ptx != nil {
			pa, err := n.ptxArgs(in, b, i, k)
			if err != nil {
				in.free()
				return ActorStats{}, fmt.Errorf("actor: %w", err)
			}
			args = append(args, pa...)
		}
		res, err := n.actor.Step(b.LR, args...)
		in.free()
		if err != nil {
			return ActorStats{}, err
		}
		st.Loss += res.Metrics["actor_loss"] / float64(k)
		st.PTXLoss += res.Metrics["ptx_loss"] / float64(k)
		st.ClipFrac += res.Metrics["clip_frac"] / float64(k)
		st.ApproxKL += res.Metrics["approx_kl"] / float64(k)
		if res.Applied {
			st.GradNorm = res.GradNorm
		}
	}
	return st, nil
}

// microBatch is one micro-batch's update inputs as tensors: rows of the rollout's device
// tensors (sliced on the device) or of its host slices (uploaded); owned are the ones made for
// it, which free releases.
type microBatch struct {
	ids, mask              *tensors.Tensor // [mb,T]
	logp, rAdv, cAdv, resp *tensors.Tensor // [mb,L] (actor)
	lambda                 *tensors.Tensor // scalar (PPO-Lag actor)
	old, ret, criticMask   *tensors.Tensor // [mb,T] (critic)
	owned                  []*tensors.Tensor
}

func (m *microBatch) free() { freeTensors(m.owned...) }

// rowsOf returns rows [lo, hi) of the device tensor x (x itself when that is all of it).
func (n *GraphNets) rowsOf(m *microBatch, x *tensors.Tensor, lo, hi int) (*tensors.Tensor, error) {
	if x == nil || lo == 0 && hi == x.Shape().Dimensions[0] {
		return x, nil
	}
	t, err := n.lw.SliceRows(x, lo, hi)
	if err == nil {
		m.owned = append(m.owned, t)
	}
	return t, err
}

// upRows uploads rows [lo, hi) of the [B, w] host matrix x.
func upRows[T float32 | int32](n *GraphNets, m *microBatch, x []T, lo, hi, w int) *tensors.Tensor {
	t := upload(&n.xfer, x[lo*w:hi*w], hi-lo, w)
	m.owned = append(m.owned, t)
	return t
}

// actorInputs returns micro-batch i of k of b's actor inputs: from the device when b carries no
// host advantages (the rl_step's RL math ran on the device: r.dev.rl), else from its host slices.
func (n *GraphNets) actorInputs(b ActorBatch, i, k int) (*microBatch, error) {
	r := b.Rollout
	L, mb := r.L(), r.B/k
	lo, hi := i*mb, (i+1)*mb
	m := &microBatch{}
	if b.RewardAdv == nil {
		d := r.dev
		if d == nil || d.rl == nil {
			return nil, fmt.Errorf("actor: no advantages (neither host slices nor the device RL math's)")
		}
		for _, p := range []struct{ dst, src **tensors.Tensor }{{&m.ids, &d.seq}, {&m.mask, &d.mask}, {&m.logp, &d.logp},
			{&m.rAdv, &d.rl.rAdv}, {&m.resp, &d.rl.resp}, {&m.cAdv, &d.rl.cAdv}} {
			var err error
			if *p.dst, err = n.rowsOf(m, *p.src, lo, hi); err != nil {
				m.free()
				return nil, fmt.Errorf("actor: %w", err)
			}
		}
	} else {
		m.ids, m.mask = upRows(n, m, r.Seq, lo, hi, r.T), upRows(n, m, r.Mask, lo, hi, r.T)
		m.logp, m.rAdv, m.resp = upRows(n, m, r.LogProbs, lo, hi, L), upRows(n, m, b.RewardAdv, lo, hi, L), upRows(n, m, b.Mask, lo, hi, L)
		if b.CostAdv != nil {
			m.cAdv = upRows(n, m, b.CostAdv, lo, hi, L)
		}
	}
	if m.cAdv != nil {
		m.lambda = uploadScalar(&n.xfer, b.Lambda)
		m.owned = append(m.owned, m.lambda)
	}
	return m, nil
}

// ptxArgs returns micro-batch i of k of b's PTX inputs (see actorLoss), owned by m (freed with
// it, so their device copies do not wait for the garbage collector).
func (n *GraphNets) ptxArgs(m *microBatch, b ActorBatch, i, k int) ([]any, error) {
	ptx := b.PTX
	pb, T := ptx.B/k, ptx.T
	plo := i * pb
	den, err := ptx.den(i, k, plo, plo+pb)
	if err != nil {
		return nil, err
	}
	lm := make([]float32, pb*(T-1))
	for j := 0; j < pb; j++ {
		for t := 0; t+1 < T; t++ {
			if ptx.Labels[(plo+j)*T+t+1] != -100 {
				lm[j*(T-1)+t] = 1
			}
		}
	}
	ts := []*tensors.Tensor{upload(&n.xfer, ptx.IDs[plo*T:(plo+pb)*T], pb, T), upload(&n.xfer, ptx.Mask[plo*T:(plo+pb)*T], pb, T),
		upload(&n.xfer, lm, pb, T-1), uploadScalar(&n.xfer, den), uploadScalar(&n.xfer, b.PTXCoeff)}
	m.owned = append(m.owned, ts...)
	args := make([]any, len(ts))
	for j, t := range ts {
		args[j] = t
	}
	return args, nil
}

// criticInputs returns micro-batch i of k of a critic's inputs: from the device when returns is
// nil (r.dev.rl), else from the host slices, padded to width T with a zero last column.
func (n *GraphNets) criticInputs(cost bool, r *Rollout, returns, mask []float32, i, k int) (*microBatch, error) {
	L, mb := r.L(), r.B/k
	lo, hi := i*mb, (i+1)*mb
	m := &microBatch{}
	if returns == nil {
		d := r.dev
		if d == nil || d.rl == nil {
			return nil, fmt.Errorf("critic: no returns (neither host slices nor the device RL math's)")
		}
		old, ret := d.rl.rOld, d.rl.rRet
		if cost {
			old, ret = d.rl.cOld, d.rl.cRet
		}
		for _, p := range []struct{ dst, src **tensors.Tensor }{{&m.ids, &d.seq}, {&m.mask, &d.mask}, {&m.old, &old},
			{&m.ret, &ret}, {&m.criticMask, &d.rl.criticMask}} {
			var err error
			if *p.dst, err = n.rowsOf(m, *p.src, lo, hi); err != nil {
				m.free()
				return nil, fmt.Errorf("critic: %w", err)
			}
		}
		return m, nil
	}
	old := r.RewardValues
	if cost {
		old = r.CostValues
	}
	pad := func(x []float32) []float32 { return padLastCol(x[lo*L:hi*L], mb, L) }
	m.ids, m.mask = upRows(n, m, r.Seq, lo, hi, r.T), upRows(n, m, r.Mask, lo, hi, r.T)
	m.old, m.ret, m.criticMask = upRows(n, m, pad(old), 0, mb, r.T), upRows(n, m, pad(returns), 0, mb, r.T), upRows(n, m, pad(mask), 0, mb, r.T)
	return m, nil
}

// Accumulation is the number of micro-batches of an update (gradient accumulation), which
// PTXBatch.Den counts.
func (n *GraphNets) Accumulation() int { return n.accum }

// UpdateCritic implements Nets.
func (n *GraphNets) UpdateCritic(cost bool, lr float64, r *Rollout, returns, mask []float32) (float64, error) {
	if backend.IsNative(n.cfg.Backend) {
		return n.nativeUpdateCritic(cost, lr, r, returns, mask)
	}
	s := n.rcritic
	if cost {
		s = n.ccritic
	}
	if s == nil {
		return 0, fmt.Errorf("critic: no cost critic")
	}
	if n.layerwiseUpdates() {
		return n.updateCriticLayerwise(cost, lr, r, returns, mask)
	}
	if r.B%n.accum != 0 {
		return 0, fmt.Errorf("critic: batch %d not divisible into %d micro-batches", r.B, n.accum)
	}
	loss := 0.0
	for i := 0; i < n.accum; i++ {
		in, err := n.criticInputs(cost, r, returns, mask, i, n.accum)
		if err != nil {
			return 0, err
		}
		res, err := s.Step(lr, in.ids, in.mask, in.old, in.ret, in.criticMask)
		in.free()
		if err != nil {
			return 0, err
		}
		loss += res.Loss / float64(n.accum)
	}
	return loss, nil
}

// frozenScopes hold the models no step trains; checkpoints reference them instead of copying them.
var frozenScopes = []string{ScopeReference, ScopeReward, ScopeCost}

// Checkpoint implements Nets: the actor's weights (LoRA merged) and config.json, and every
// variable of the context outside the frozen scopes (trained weights or adapters, optimizer
// moments and steps), streamed from the variables.
func (n *GraphNets) Checkpoint() (*NetsCheckpoint, error) {
	if err := n.syncNative(); err != nil {
		return nil, err
	}
	// The actor's weights stream tensor by tensor from its variables (adapters merged on the
	// device): no host copy of the model. Without LoRA the actor's variables are its HF weights:
	// stored once, in the weights.
	c := &NetsCheckpoint{WeightsScope: ScopeActor}
	var err error
	if c.Weights, err = model.StreamWeights(n.ctx.InAbsPath(ScopeActor), n.actorCfg, n.cfg.Backend, false); err != nil {
		return nil, err
	}
	if c.Config, err = n.actorCfg.HFConfigJSON(); err != nil {
		return nil, err
	}
	c.State, err = checkpoint.ContextTensors(n.ctx, func(v *context.Variable) bool {
		for _, s := range frozenScopes {
			if v.Scope() == s || strings.HasPrefix(v.Scope(), s+context.ScopeSeparator) {
				return false
			}
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	c.StateMeta = checkpoint.TrainableMetadata(n.ctx, c.State)
	return c, nil
}

// ShardedState returns the AdamW moments of the actor and critics that are sharded across
// ranks (--zero-stage 1) with their owners, and the context holding this rank's share; nil
// when every rank holds all of them.
func (n *GraphNets) ShardedState() ([]checkpoint.Owned, *context.Context) {
	var out []checkpoint.Owned
	if n.nat != nil {
		for _, t := range []*nativeTrained{n.nat.actor, n.nat.critics[0], n.nat.critics[1]} {
			if t != nil && t.owners != nil {
				out = append(out, trainer.OwnedMoments(t.optim, t.trainedVars(), t.owners)...)
			}
		}
	} else {
		for _, s := range []*trainer.Stepper{n.actor, n.rcritic, n.ccritic} {
			if s != nil {
				out = append(out, s.ShardedState()...)
			}
		}
	}
	return out, n.ctx
}

// OptimizerStateBytes are the bytes of the AdamW moments (float32) of the actor and critics
// this rank holds.
func (n *GraphNets) OptimizerStateBytes() int64 {
	if n.nat == nil {
		return 4 * trainer.OptimizerStateElements(n.ctx, "/optim")
	}
	var b int64
	for _, t := range []*nativeTrained{n.nat.actor, n.nat.critics[0], n.nat.critics[1]} {
		if t != nil {
			b += 4 * t.opt.StateElements()
		}
	}
	return b
}

// SyncState brings the context up to date with the native models (a no-op on the graph path).
func (n *GraphNets) SyncState() error { return n.syncNative() }

// Restore implements Nets.
func (n *GraphNets) Restore(l *checkpoint.Loaded) error {
	if l.TrainState == nil {
		return fmt.Errorf("ppo: checkpoint %s has no training state", l.Dir)
	}
	for _, name := range l.TrainState.Names() {
		for _, s := range frozenScopes {
			if strings.HasPrefix(name, s+context.ScopeSeparator) {
				return fmt.Errorf("ppo: checkpoint %s holds %s of the frozen scope %s", l.Dir, name, s)
			}
		}
	}
	n.nat = nil                  // rebuilt from the restored variables
	foreign := map[string]bool{} // ZeRO-1: the moments other ranks own stay on disk
	for _, s := range []*trainer.Stepper{n.actor, n.rcritic, n.ccritic} {
		if s != nil {
			f, err := s.RestorePartition(l.TrainState)
			if err != nil {
				return fmt.Errorf("ppo: checkpoint %s: %w", l.Dir, err)
			}
			maps.Copy(foreign, f)
		}
	}
	if err := l.RestoreContextExcept(n.ctx, foreign); err != nil {
		return err
	}
	for _, s := range []*trainer.Stepper{n.actor, n.rcritic, n.ccritic} {
		if s != nil {
			if err := s.LoadContext(); err != nil {
				return err
			}
		}
	}
	return nil
}

// ActorWeights returns the current policy weights.
func (n *GraphNets) ActorWeights() (model.Weights, error) {
	if err := n.syncNative(); err != nil {
		return nil, err
	}
	return model.GetWeights(n.ctx.InAbsPath(ScopeActor), n.actorCfg)
}

// SavePolicy implements Nets.
func (n *GraphNets) SavePolicy(dir string) error {
	if n.cfg.SaveModel == nil {
		return fmt.Errorf("ppo: no SaveModel function configured")
	}
	if err := n.syncNative(); err != nil {
		return err
	}
	ts, err := model.StreamWeights(n.ctx.InAbsPath(ScopeActor), n.actorCfg, n.cfg.Backend, true)
	if err != nil {
		return err
	}
	return n.cfg.SaveModel(dir, n.actorCfg, ts)
}

// dropLastCol turns [B, T] into [B, T−1] (critic scores[:, :-1]).
func dropLastCol(x []float32, B, T int) []float32 {
	out := make([]float32, B*(T-1))
	for i := 0; i < B; i++ {
		copy(out[i*(T-1):(i+1)*(T-1)], x[i*T:i*T+T-1])
	}
	return out
}

// padLastCol turns [B, L] into [B, L+1] with a zero last column.
func padLastCol(x []float32, B, L int) []float32 {
	out := make([]float32, B*(L+1))
	for i := 0; i < B; i++ {
		copy(out[i*(L+1):i*(L+1)+L], x[i*L:(i+1)*L])
	}
	return out
}

// execSafe runs an Exec, turning GoMLX panics into errors.
func execSafe(e *context.Exec, args ...any) (out []*tensors.Tensor, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	return e.Exec(args...)
}
