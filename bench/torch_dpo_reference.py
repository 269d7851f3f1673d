#!/usr/bin/env python3
"""PyTorch transcription of the reference's DPO loss, and the vectors that check ours.

The reference (PKU-Alignment/safe-rlhf @ 82743cc, safe_rlhf/algorithms/dpo/trainer.py,
DPOTrainer.loss; spec §2) computes, for a batch from PreferenceCollator (better and worse
rows right-padded together, pad id 0, attention_mask = ids != pad):

  * per-token log-probs of the policy and of the frozen reference model,
    log_softmax(logits[:, :-1]).gather(ids[:, 1:])  (entry t = log p(token t+1));
  * per pair, d = first index where the padded better/worse ids differ, end = last
    attention-mask index of each row, and the sums of entries [d, end] (the slice is
    applied to the shifted array: a quirk that skips token d and adds the pad token after
    the row unless the row is the batch's widest);
  * loss = mean_i −logσ(β·[(logπ − logπ_ref)(better) − (logπ − logπ_ref)(worse)]),
    and the logged better/worse sample rewards β·Δ, their sum, margin and accuracy.

This script transcribes that computation (a loop over the pairs, as the reference
writes it) with a fake model whose logits are given, in float64, on seeded random
batches, and writes the inputs and outputs as JSON. train/stages/dpo_test.go
(TestDPOLossMatchesReference) checks our DPOLoss, span and reference-sum code on them.

    /usr/bin/python3 bench/torch_dpo_reference.py > train/stages/testdata/dpo_reference.json
"""
import json
import sys

import torch
import torch.nn.functional as F


def gather_log_probabilities(logits, labels):
    """log p(labels) under logits (safe_rlhf/utils.py)."""
    return torch.gather(F.log_softmax(logits, dim=-1), dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)


def compute_log_probs(logits, input_ids):
    """DPOTrainer.compute_log_probs with the model's logits given."""
    return gather_log_probabilities(logits[:, :-1], input_ids[:, 1:])


def dpo_loss(better_ids, better_mask, worse_ids, worse_mask, logits, ref_logits, beta):
    """DPOTrainer.loss: the policy logits and reference logits are [2B, L, V] (better rows first)."""
    B = better_ids.size(0)
    ids = torch.cat([better_ids, worse_ids], dim=0)
    seq_lp = compute_log_probs(logits, ids)
    better_seq_lp, worse_seq_lp = seq_lp.chunk(chunks=2, dim=0)
    with torch.no_grad():
        ref_lp = compute_log_probs(ref_logits, ids)
        ref_better_seq_lp, ref_worse_seq_lp = ref_lp.chunk(chunks=2, dim=0)
    losses, better_rewards, worse_rewards = [], [], []
    for i in range(B):
        assert not torch.all(torch.eq(better_ids[i], worse_ids[i])).item()
        better_end = better_mask[i].nonzero()[-1].squeeze().item()
        worse_end = worse_mask[i].nonzero()[-1].squeeze().item()
        d = (better_ids[i] != worse_ids[i]).nonzero()[0].squeeze().item()
        assert 0 <= d <= better_end and 0 <= d <= worse_end
        bs, ws = slice(d, better_end + 1), slice(d, worse_end + 1)
        better_ratio = better_seq_lp[i, bs].sum(dim=-1) - ref_better_seq_lp[i, bs].sum(dim=-1)
        worse_ratio = worse_seq_lp[i, ws].sum(dim=-1) - ref_worse_seq_lp[i, ws].sum(dim=-1)
        losses.append(-F.logsigmoid(beta * (better_ratio - worse_ratio)))
        better_rewards.append(beta * better_ratio.detach())
        worse_rewards.append(beta * worse_ratio.detach())
    loss = torch.stack(losses).mean()
    br, wr = torch.stack(better_rewards), torch.stack(worse_rewards)
    return {
        "loss": loss.item(),
        "reward": (br + wr).mean().item(),
        "better_sample_reward": br.mean().item(),
        "worse_sample_reward": wr.mean().item(),
        "reward_accuracy": (br > wr).double().mean().item(),
        "reward_margin": (br - wr).mean().item(),
        "better_sample_rewards": br.tolist(),
        "worse_sample_rewards": wr.tolist(),
    }


def make_case(g, B, V, beta, policy_scale):
    """B pairs sharing a prompt prefix, then differing answers of random lengths."""
    better, worse = [], []
    for _ in range(B):
        prompt = torch.randint(1, V, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g).tolist()
        while True:
            a = torch.randint(1, V, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist()
            b = torch.randint(1, V, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist()
            if a[0] != b[0]:
                break
        better.append(prompt + a)
        worse.append(prompt + b)
    L = max(len(r) for r in better + worse)
    pad = lambda rows: torch.tensor([r + [0] * (L - len(r)) for r in rows], dtype=torch.long)
    bi, wi = pad(better), pad(worse)
    bm, wm = bi.ne(0), wi.ne(0)
    ref_logits = torch.randn(2 * B, L, V, generator=g, dtype=torch.float64)
    logits = ref_logits + policy_scale * torch.randn(2 * B, L, V, generator=g, dtype=torch.float64)
    out = dpo_loss(bi, bm, wi, wm, logits, ref_logits, beta)
    return {
        "B": B, "L": L, "V": V, "beta": beta,
        "better_input_ids": bi.tolist(), "better_attention_mask": bm.int().tolist(),
        "worse_input_ids": wi.tolist(), "worse_attention_mask": wm.int().tolist(),
        "logits": logits.tolist(), "ref_logits": ref_logits.tolist(),
        **out,
    }


def main():
    torch.set_default_dtype(torch.float64)
    g = torch.Generator().manual_seed(20241129)
    cases = []
    for B, beta, scale in [(1, 0.1, 1.0), (2, 0.1, 0.5), (3, 0.5, 1.0), (4, 0.1, 2.0), (4, 1.0, 0.3), (2, 0.05, 3.0)]:
        cases.append(make_case(g, B, 7, beta, scale))
    json.dump({"function": "safe_rlhf/algorithms/dpo/trainer.py:DPOTrainer.loss (transcribed)",
               "commit": "82743cc89e7d59321852d72ea262046ff7f7b893", "torch": torch.__version__,
               "cases": cases}, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
