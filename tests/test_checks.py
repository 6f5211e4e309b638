"""The exercise checks: each passes the kit's reference, says "not implemented yet" for a stub,
reports a student's own exception as such, and fails, readably, on deliberately wrong code."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from picollm_helpers.checks import CHECKS, check_top_p_filter
from picollm_helpers.checks.transformer import cached_attention
from picollm_helpers.interp import run_with_cache, run_with_hooks
from picollm_helpers.models.transformer import Block, CausalSelfAttention, RMSNorm, causal_mask


def stub(*args, **kwargs):
    raise NotImplementedError("exercise: write this")


# Deliberately wrong implementations, each a mistake a student makes -------------------------------

def top_p_without_crossing_token(logits, p):
    probs = logits.softmax(-1)
    sp, order = probs.sort(-1, descending=True)
    keep_sorted = sp.cumsum(-1) <= p  # drops the token that crosses p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))


def top_p_forgets_to_unsort(logits, p):
    sl, _ = logits.sort(-1, descending=True)
    probs = sl.softmax(-1)
    keep = (probs.cumsum(-1) - probs) < p
    return sl.masked_fill(~keep, float("-inf"))  # in sorted order, not the vocabulary's


def top_k_strict(logits, k):
    kth = logits.topk(k, -1).values[..., -1:]
    return logits.masked_fill(logits <= kth, float("-inf"))  # drops the k-th itself


def top_k_flat(logits, k):
    kth = logits.flatten().topk(k).values[-1]  # the k-th of the whole batch, not per row
    return logits.masked_fill(logits < kth, float("-inf"))


def embedding_wrong_axis(ids, weight):
    return F.one_hot(ids, weight.size(1)).float() @ weight.t()  # one-hot over E, not V (fails on shape)


def embedding_off_by_one(ids, weight):
    return F.one_hot((ids + 1) % weight.size(0), weight.size(0)).float() @ weight


def step_without_zero_grad(model, x, y, opt):
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)
    loss.backward()
    opt.step()  # gradients accumulate from step to step
    return loss.item()


def step_counts_padding(model, x, y, opt):
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten().clamp(min=0))  # padding as token 0
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def step_loss_after_update(model, x, y, opt):
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100).item()


def kgram_right_padded(model, idx):
    win = F.pad(idx, (0, model.k - 1), value=model.pad_id).unfold(1, model.k, 1)  # future tokens
    return model.lm_head(model.mlp(win))


def kgram_window_excludes_current(model, idx):
    win = F.pad(idx, (model.k, 0), value=model.pad_id)[:, :-1].unfold(1, model.k, 1)  # shifted one back
    return model.lm_head(model.mlp(win))


class RMSNormNoWeight(RMSNorm):
    def forward(self, x):
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class RMSNormEpsOutside(RMSNorm):
    def forward(self, x):
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * self.weight


class LayerNormInstead(RMSNorm):
    def forward(self, x):
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        x = x - x.mean(-1, keepdim=True)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * self.weight


def head_no_mask(x, wq, wk, wv):
    q, k, v = x @ wq, x @ wk, x @ wv
    return (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).softmax(-1) @ v


def head_no_scale(x, wq, wk, wv):
    q, k, v = x @ wq, x @ wk, x @ wv
    T = x.size(1)
    att = (q @ k.transpose(-2, -1)).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return att.softmax(-1) @ v


def head_mask_off_by_one(x, wq, wk, wv):
    q, k, v = x @ wq, x @ wk, x @ wv
    T = x.size(1)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(1), float("-inf"))  # sees one token ahead
    return att.softmax(-1) @ v


def head_softmax_wrong_dim(x, wq, wk, wv):
    q, k, v = x @ wq, x @ wk, x @ wv
    T = x.size(1)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.nan_to_num(att.softmax(-2)) @ v  # normalises over queries


class AttentionHeadsMixedUp(CausalSelfAttention):
    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        # (B, T, C) -> (B, H, T, hd) with view alone: heads and time mixed up
        q, k, v = (t.reshape(B, self.n_heads, T, self.head_dim) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class AttentionNoProj(CausalSelfAttention):
    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)


class AttentionRenamed(nn.Module):
    def __init__(self, embed_size, n_heads):
        super().__init__()
        self.c_attn = nn.Linear(embed_size, 3 * embed_size, bias=False)
        self.c_proj = nn.Linear(embed_size, embed_size, bias=False)

    def forward(self, x):
        return x


class BlockAlwaysPreNorm(Block):
    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class BlockNoResidual(Block):
    def forward(self, x):
        if self.use_post_norm:
            x = self.norm1(self.attn(x))
            return self.norm2(self.mlp(x))
        x = self.attn(self.norm1(x))
        return self.mlp(self.norm2(x))


def cache_without_mask(attn, x_new, past_k, past_v):
    B, T, C = x_new.shape
    q, k, v = attn.qkv(x_new).view(B, T, 3, attn.n_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    k, v = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
    y = F.scaled_dot_product_attention(q, k, v)  # new tokens see each other's futures
    return attn.proj(y.transpose(1, 2).reshape(B, T, C)), k, v


def cache_mask_top_left(attn, x_new, past_k, past_v):
    B, T, C = x_new.shape
    q, k, v = attn.qkv(x_new).view(B, T, 3, attn.n_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    k, v = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # aligned top-left: wrong after a cache
    return attn.proj(y.transpose(1, 2).reshape(B, T, C)), k, v


def cache_forgets_past(attn, x_new, past_k, past_v):
    B, T, C = x_new.shape
    q, k, v = attn.qkv(x_new).view(B, T, 3, attn.n_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # attends to the new tokens only
    return attn.proj(y.transpose(1, 2).reshape(B, T, C)), torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)


def ngram_share_joined_reference(samples, reference, n):
    stream = [t for ex in reference for t in ex]  # joined: n-grams that span two examples count too
    found = {tuple(stream[i:i + n]) for i in range(len(stream) - n + 1)}
    grams = [tuple(s[i:i + n]) for s in samples for i in range(len(s) - n + 1)]
    return sum(g in found for g in grams) / max(1, len(grams))


def ngram_share_unique(samples, reference, n):
    found = {tuple(ex[i:i + n]) for ex in reference for i in range(len(ex) - n + 1)}
    grams = {tuple(s[i:i + n]) for s in samples for i in range(len(s) - n + 1)}  # repeats counted once
    return sum(g in found for g in grams) / max(1, len(grams))


def ngram_share_mean_of_samples(samples, reference, n):
    found = {tuple(ex[i:i + n]) for ex in reference for i in range(len(ex) - n + 1)}
    shares = []
    for s in samples:  # a mean of per-sample shares weighs a short sample like a long one
        grams = [tuple(s[i:i + n]) for i in range(len(s) - n + 1)]
        if grams:
            shares.append(sum(g in found for g in grams) / len(grams))
    return sum(shares) / max(1, len(shares))


def ngram_share_misses_last(samples, reference, n):
    found = {tuple(ex[i:i + n]) for ex in reference for i in range(len(ex) - n + 1)}
    grams = [tuple(s[i:i + n]) for s in samples for i in range(len(s) - n)]  # off by one: the last is lost
    return sum(g in found for g in grams) / max(1, len(grams))


def prev_score_includes_query_0(pattern):
    T = pattern.size(-1)
    q = torch.arange(T)
    return pattern[..., q, (q - 1).clamp(min=0)].mean(dim=(0, 2))  # query 0 counted, reading itself


def prev_score_reads_self(pattern):
    q = torch.arange(1, pattern.size(-1))
    return pattern[..., q, q].mean(dim=(0, 2))  # the diagonal, not the key before


def prev_score_wrong_axis(pattern):
    q = torch.arange(1, pattern.size(-1))
    return pattern[..., q - 1, q].mean(dim=(0, 2))  # query and key swapped: above the diagonal, always 0


def sinusoidal_halves(pos, dim):
    inv = 10000.0 ** (-torch.arange(dim // 2, dtype=torch.float64) * 2 / dim)
    ang = pos.double()[:, None] * inv
    return torch.cat([ang.sin(), ang.cos()], dim=-1)  # all sines, then all cosines: not interleaved


def sinusoidal_exponent_i(pos, dim):
    inv = 10000.0 ** (-torch.arange(dim // 2, dtype=torch.float64) / dim)  # i/dim, not 2i/dim
    ang = pos.double()[:, None] * inv
    return torch.stack([ang.sin(), ang.cos()], dim=-1).flatten(1)


def sinusoidal_cos_first(pos, dim):
    inv = 10000.0 ** (-torch.arange(dim // 2, dtype=torch.float64) * 2 / dim)
    ang = pos.double()[:, None] * inv
    return torch.stack([ang.cos(), ang.sin()], dim=-1).flatten(1)  # cos at 2i, sin at 2i+1


def grad_norms_summed(model):
    # the norms of the parameters added up, instead of the square root of the summed squares
    return torch.tensor([sum(p.grad.norm().item() for p in b.parameters()) for b in model.blocks], dtype=torch.float64)


def grad_norms_attention_only(model):
    # only the attention weights: the MLP and the norms' gains are forgotten
    return torch.tensor([sum(p.grad.pow(2).sum().item() for p in b.attn.parameters()) ** 0.5 for b in model.blocks],
                        dtype=torch.float64)


def grad_norms_of_weights(model):
    # the weights' norms, not their gradients'
    return torch.tensor([sum(p.pow(2).sum().item() for p in b.parameters()) ** 0.5 for b in model.blocks],
                        dtype=torch.float64)


def grad_norms_as_list(model):
    # the right numbers, as a list: lesson 08 goes on with `.tolist()` on the result
    return [sum(p.grad.pow(2).sum().item() for p in b.parameters()) ** 0.5 for b in model.blocks]


def grad_norms_float32(model):
    # the right numbers in float32: the lesson's tables and ratios work in float64
    return torch.tensor([sum(p.grad.pow(2).sum().item() for p in b.parameters()) ** 0.5 for b in model.blocks])


def sinusoidal_float32(pos, dim):
    inv = 10000.0 ** (-torch.arange(dim // 2, dtype=torch.float32) * 2 / dim)  # right formula, float32 dtype
    ang = pos.float()[:, None] * inv
    return torch.stack([ang.sin(), ang.cos()], dim=-1).flatten(1)


def sinusoidal_float32_cast(pos, dim):
    return sinusoidal_float32(pos, dim).double()  # float64 dtype, float32 precision: off at large positions


# lesson 09: the sparse autoencoder's pieces

def sae_encode_no_b_dec(x, W_enc, b_enc, b_dec, k=None):
    return torch.relu(x @ W_enc + b_enc)  # the decoder bias is not subtracted first


def sae_encode_ignores_k(x, W_enc, b_enc, b_dec, k=None):
    return torch.relu((x - b_dec) @ W_enc + b_enc)  # TopK asked for, plain ReLU given


def sae_encode_topk_wrong_dim(x, W_enc, b_enc, b_dec, k=None):
    pre = (x - b_dec) @ W_enc + b_enc
    if k is None:
        return torch.relu(pre)
    top = pre.topk(min(k, pre.size(0)), dim=0)  # the top tokens of each feature, not the top features of a token
    return torch.zeros_like(pre).scatter(0, top.indices, torch.relu(top.values))


def sae_encode_topk_no_relu(x, W_enc, b_enc, b_dec, k=None):
    pre = (x - b_dec) @ W_enc + b_enc
    if k is None:
        return torch.relu(pre)
    top = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, top.values)  # negative activations kept


def normalize_decoder_columns(W_dec):
    return W_dec / W_dec.norm(dim=0, keepdim=True)  # each input dimension, not each feature


def normalize_decoder_whole(W_dec):
    return W_dec / W_dec.norm()  # one norm for the whole matrix


def normalize_decoder_squared(W_dec):
    return W_dec / W_dec.pow(2).sum(1, keepdim=True)  # divided by the squared norm


def sae_loss_mse_mean(x, x_hat, f, l1_coeff):
    recon = F.mse_loss(x_hat, x)  # averaged over d_in too
    sparsity = l1_coeff * f.abs().sum(-1).mean()
    return recon + sparsity, recon, sparsity


def sae_loss_l1_mean_features(x, x_hat, f, l1_coeff):
    recon = (x_hat - x).pow(2).sum(-1).mean()
    sparsity = l1_coeff * f.abs().mean()  # averaged over the features instead of summed
    return recon + sparsity, recon, sparsity


def sae_loss_l2_penalty(x, x_hat, f, l1_coeff):
    recon = (x_hat - x).pow(2).sum(-1).mean()
    sparsity = l1_coeff * f.pow(2).sum(-1).mean()  # L2, which does not make f sparse
    return recon + sparsity, recon, sparsity


def _resample(W_enc, b_enc, W_dec, dead, x, x_hat, enc_scale, *, best=False, use_input=False, unit=True,
              reset_bias=True):
    W_enc, b_enc, W_dec = W_enc.clone(), b_enc.clone(), W_dec.clone()
    idx = dead.nonzero().flatten()
    if len(idx) == 0:
        return W_enc, b_enc, W_dec
    r = x if use_input else x - x_hat
    order = (x - x_hat).pow(2).sum(-1).argsort(descending=not best)[: len(idx)]
    d = r[order] / r[order].norm(dim=-1, keepdim=True) if unit else r[order]
    W_dec[idx] = d
    W_enc[:, idx] = d.T * enc_scale
    if reset_bias:
        b_enc[idx] = 0.0
    return W_enc, b_enc, W_dec


def resample_best_inputs(*a):
    return _resample(*a, best=True)  # the inputs the SAE already reconstructs best


def resample_from_inputs(*a):
    return _resample(*a, use_input=True)  # the input itself, not what the SAE misses of it


def resample_not_unit(*a):
    return _resample(*a, unit=False)  # decoder rows no longer of unit norm


def resample_keeps_bias(*a):
    return _resample(*a, reset_bias=False)  # a dead feature's negative bias keeps it dead


def induction_off_by_one(pattern, seq_len):
    q = torch.arange(seq_len, 2 * seq_len)
    return pattern[..., q, q - seq_len].mean(dim=(0, 2))  # the earlier copy itself: a duplicate-token score


def induction_all_queries(pattern, seq_len):
    q = torch.arange(1, 2 * seq_len)
    return pattern[..., q, (q - seq_len + 1).clamp(min=0)].mean(dim=(0, 2))  # the first copy counted too


def induction_summed(pattern, seq_len):
    q = torch.arange(seq_len, 2 * seq_len)
    return pattern[..., q, q - seq_len + 1].sum(dim=2).mean(0)  # a sum over the queries, not their mean


def _earlier_same(idx):
    T = idx.size(-1)
    return (idx[:, :, None] == idx[:, None, :]) & torch.ones(T, T, dtype=torch.bool).tril(-1)  # (B, q, k)


def duplicate_includes_self(pattern, idx):
    T = idx.size(-1)
    same = (idx[:, :, None] == idx[:, None, :]) & torch.ones(T, T, dtype=torch.bool).tril()   # k <= q: itself too
    has = _earlier_same(idx).any(-1).float()
    return ((pattern * same[:, None]).sum(-1) * has[:, None]).sum(dim=(0, 2)) / has.sum()


def duplicate_over_all_queries(pattern, idx):
    return (pattern * _earlier_same(idx)[:, None]).sum(-1).mean(dim=(0, 2))  # queries without a copy count as 0


def duplicate_max_not_sum(pattern, idx):
    dup = _earlier_same(idx)
    has = dup.any(-1).float()
    mass = (pattern * dup[:, None]).amax(-1)  # only the largest earlier copy, not all of them
    return (mass * has[:, None]).sum(dim=(0, 2)) / has.sum()


def _ablated_with(z_fn, layer, heads):
    def fn(model, idx, layer, heads):
        def hook(z, name):
            z = z.clone()
            z[:, :, heads] = z_fn(z[:, :, heads])
            return z
        return run_with_hooks(model, idx, {f"blocks.{layer}.attn.hook_z": hook})
    return fn


def ablation_zero(model, idx, layer, heads):
    return _ablated_with(torch.zeros_like, layer, heads)(model, idx, layer, heads)  # zero-, not mean-ablation


def ablation_batch_mean_only(model, idx, layer, heads):
    return _ablated_with(lambda z: z.mean(0, keepdim=True).expand_as(z), layer, heads)(model, idx, layer, heads)


def ablation_wrong_axis(model, idx, layer, heads):
    def hook(z, name):
        z = z.clone()
        z[:, heads] = z[:, heads].mean(dim=(0, 2))  # positions taken for heads
        return z
    return run_with_hooks(model, idx, {f"blocks.{layer}.attn.hook_z": hook})


def lens_without_norm(model, idx):
    names = ["hook_embed"] + [f"blocks.{i}.hook_resid_post" for i in range(len(model.blocks))]
    _, cache = run_with_cache(model, idx, names)
    return torch.stack([model.lm_head(cache[n]) for n in names])  # the final norm skipped


def lens_blocks_only(model, idx):
    names = [f"blocks.{i}.hook_resid_post" for i in range(len(model.blocks))]
    _, cache = run_with_cache(model, idx, names)
    return torch.stack([model.lm_head(model.norm_f(cache[n])) for n in names])  # no row for the embeddings


def lens_block_middles(model, idx):
    names = ["hook_embed"] + [f"blocks.{i}.hook_resid_mid" for i in range(len(model.blocks))]
    _, cache = run_with_cache(model, idx, names)
    return torch.stack([model.lm_head(model.norm_f(cache[n])) for n in names])  # read before each block's MLP


WRONG = {
    "block_grad_norms": [grad_norms_summed, grad_norms_attention_only, grad_norms_of_weights, grad_norms_as_list,
                         grad_norms_float32],
    "sinusoidal_encoding": [sinusoidal_halves, sinusoidal_exponent_i, sinusoidal_cos_first, sinusoidal_float32,
                            sinusoidal_float32_cast],
    "top_p_filter": [top_p_without_crossing_token, top_p_forgets_to_unsort],
    "top_k_filter": [top_k_strict, top_k_flat],
    "one_hot_embedding": [embedding_wrong_axis, embedding_off_by_one],
    "training_step": [step_without_zero_grad, step_counts_padding, step_loss_after_update],
    "kgram_logits": [kgram_right_padded, kgram_window_excludes_current],
    "rms_norm": [RMSNormNoWeight, RMSNormEpsOutside, LayerNormInstead],
    "attention_head": [head_no_mask, head_no_scale, head_mask_off_by_one, head_softmax_wrong_dim],
    "causal_self_attention": [AttentionHeadsMixedUp, AttentionNoProj, AttentionRenamed],
    "transformer_block": [BlockAlwaysPreNorm, BlockNoResidual],
    "kv_cache_step": [cache_without_mask, cache_mask_top_left, cache_forgets_past],
    "previous_token_score": [prev_score_includes_query_0, prev_score_reads_self, prev_score_wrong_axis],
    "induction_score": [induction_off_by_one, induction_all_queries, induction_summed],
    "duplicate_token_score": [duplicate_includes_self, duplicate_over_all_queries, duplicate_max_not_sum],
    "mean_ablated_logits": [ablation_zero, ablation_batch_mean_only, ablation_wrong_axis],
    "logit_lens": [lens_without_norm, lens_blocks_only, lens_block_middles],
    "sae_encode": [sae_encode_no_b_dec, sae_encode_ignores_k, sae_encode_topk_wrong_dim, sae_encode_topk_no_relu],
    "normalize_decoder": [normalize_decoder_columns, normalize_decoder_whole, normalize_decoder_squared],
    "sae_loss": [sae_loss_mse_mean, sae_loss_l1_mean_features, sae_loss_l2_penalty],
    "resample_dead": [resample_best_inputs, resample_from_inputs, resample_not_unit, resample_keeps_bias],
    "ngram_share": [ngram_share_joined_reference, ngram_share_unique, ngram_share_mean_of_samples,
                    ngram_share_misses_last],
}


def _stub_class(reference):
    class Stub(reference):
        def forward(self, *args, **kwargs):
            raise NotImplementedError("exercise: write this")
    return Stub


def _stub_for(check):
    return _stub_class(check.reference) if isinstance(check.reference, type) else stub


def test_every_check_has_wrong_implementations():
    assert set(WRONG) == set(CHECKS), "each exercise's check needs at least one deliberately wrong implementation"


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_the_reference_passes(name):
    v = CHECKS[name].run(CHECKS[name].reference)
    assert v.passed, v.message
    assert v.n_cases >= 2 and v.message == f"{name}: the kit's checks passed ({v.n_cases} cases)"


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_a_stub_is_not_implemented_yet(name):
    v = CHECKS[name].run(_stub_for(CHECKS[name]))
    assert v.status == "not implemented" and "not implemented yet" in v.message


def test_a_failure_names_the_input_expected_and_received_with_the_tolerance():
    v = check_top_p_filter.run(top_p_without_crossing_token)
    assert v.status == "failed"
    lines = v.message.splitlines()
    assert lines[0].startswith("top_p_filter: failed case 1 of ")
    assert any(line.strip().startswith("input: tensor of shape (4,)") for line in lines)
    assert any(line.strip().startswith("expected:") for line in lines)
    assert any(line.strip().startswith("received:") for line in lines)
    assert "infinite" in v.message  # the kept sets differ: -inf in one and not the other
    # the first differing position and both values there: token 1 (probability 0.3) crosses p=0.6
    assert "1 of 4 entries differ; the first at position (1,): expected -1.203972816, got -inf" in v.message


def test_a_failure_gives_the_difference_not_the_recipe():
    """No failure message repeats the exercise's recipe: the ones that compared values say where they differ."""
    for name, wrongs in WRONG.items():
        for wrong in wrongs:
            v = CHECKS[name].run(wrong)
            if v.status == "failed":
                assert "hint" not in v.message.lower(), (name, wrong.__name__)
                assert ("differ" in v.message or "shape" in v.message or "dtype" in v.message
                        or "do not load" in v.message or " is " in v.message), (name, wrong.__name__, v.message)


def test_the_first_differing_position_is_given_in_the_tensors_shape():
    from picollm_helpers.checks._core import Mismatch, compare_values
    e = torch.zeros(2, 3, 4)
    g = e.clone()
    g[1, 2, 0], g[1, 2, 3] = 0.5, 2.0
    with pytest.raises(Mismatch, match=r"2 of 24 entries differ .*the first at position \(1, 2, 0\): expected 0, "
                                       r"got 0\.5; largest finite difference 2"):
        compare_values(e, g, atol=1e-6, rtol=0.0)
    with pytest.raises(Mismatch, match=r"has shape \(3, 2, 4\), expected \(2, 3, 4\)"):
        compare_values(e, e.reshape(3, 2, 4), atol=1e-6, rtol=0.0)


def test_a_students_exception_is_reported_as_theirs():
    def broken(logits, p):
        return logits.softmax(dim=5)  # IndexError inside torch

    v = check_top_p_filter.run(broken)
    assert v.status == "raised"
    assert v.message.startswith("top_p_filter: your function raised IndexError")
    assert "logits.softmax(dim=5)" in v.message  # the student's own line


def test_calling_a_check_prints_the_verdict_and_returns_what_to_use(capsys):
    assert check_top_p_filter(CHECKS["top_p_filter"].reference) is CHECKS["top_p_filter"].reference
    assert "\u2713 top_p_filter: the kit's checks passed (16 cases)" in capsys.readouterr().out
    assert check_top_p_filter(stub) is CHECKS["top_p_filter"].reference
    out = capsys.readouterr().out
    assert "not implemented yet" in out and "continues with the kit's reference implementation" in out
    assert check_top_p_filter(top_p_without_crossing_token) is CHECKS["top_p_filter"].reference


def test_an_input_the_student_changes_in_place_does_not_leak_into_the_next_call():
    def in_place(logits, p):
        out = CHECKS["top_p_filter"].reference(logits.clone(), p)
        logits.zero_()  # wrecks its input
        return out

    assert check_top_p_filter.run(in_place).passed


def test_the_cache_reference_equals_the_full_forward():
    torch.manual_seed(0)
    attn = CausalSelfAttention(16, 4).eval()
    x = torch.randn(2, 7, 16)
    k = v = torch.zeros(2, 4, 0, 4)
    ys = []
    with torch.no_grad():
        for t in range(7):
            y, k, v = cached_attention(attn, x[:, t:t + 1], k, v)
            ys.append(y)
        torch.testing.assert_close(torch.cat(ys, 1), attn(x), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(cached_attention(attn, x, k[:, :, :0], v[:, :, :0])[0], attn(x))
    assert causal_mask(2, 5, "cpu").tolist() == [[True, True, True, True, False], [True] * 5]


def test_what_the_lesson_goes_on_with_is_checked_as_it_is_used():
    """A green tick means the lesson goes on: 08 calls .tolist() on block_grad_norms' result and 06 asserts
    float64 for sinusoidal_encoding, so a list, a float32 tensor, or a float32 computation cast to float64 fail."""
    v = CHECKS["block_grad_norms"].run(grad_norms_as_list)
    assert v.status == "failed" and "should be a float64 tensor of shape (1,), got a list [" in v.message
    assert "dtype float32, expected float64" in CHECKS["block_grad_norms"].run(grad_norms_float32).message
    assert "dtype float32, expected float64" in CHECKS["sinusoidal_encoding"].run(sinusoidal_float32).message
    v = CHECKS["sinusoidal_encoding"].run(sinusoidal_float32_cast)
    assert v.status == "failed" and "entries differ" in v.message
    big = torch.arange(100_000, 100_004)  # the check's large positions: float32 angles are visibly off there
    assert (sinusoidal_float32_cast(big, 16) - CHECKS["sinusoidal_encoding"].reference(big, 16)).abs().max() > 1e-3


def test_a_kv_cache_message_names_only_what_the_notebook_has():
    """No check message or used-name points at a helper the student's notebook does not import (the old
    kv_cache_step hint named causal_mask, which lesson 04 never imports and which needs a device argument)."""
    for name, check in CHECKS.items():
        for wrong in WRONG[name]:
            assert "causal_mask" not in check.run(wrong).message
        assert "picollm_helpers." not in check.used


# Lesson 03: the nucleus at its boundary, and the distribution a token is drawn from ----------------

def top_p_float64_no_slack(logits, p):
    probs = logits.double().softmax(-1)
    sp, order = probs.sort(-1, descending=True)
    keep_sorted = (sp.cumsum(-1) - sp) < p  # exact in float64, but float32 inputs are rounded
    keep_sorted[..., 0] = True
    return logits.masked_fill(~torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted), float("-inf"))


def top_p_float32_no_slack(logits, p):
    sp, order = logits.softmax(-1).sort(-1, descending=True)
    keep_sorted = (sp.cumsum(-1) - sp) < p
    keep_sorted[..., 0] = True
    return logits.masked_fill(~torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted), float("-inf"))


def top_p_float32_with_slack(logits, p):  # correct: the rule with the lesson's 1e-6, all in float32
    sp, order = logits.softmax(-1).sort(-1, descending=True)
    keep_sorted = (sp.cumsum(-1) - sp) < p - 1e-6
    keep_sorted[..., 0] = True
    return logits.masked_fill(~torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted), float("-inf"))


def top_p_searchsorted(logits, p):  # correct: the lesson's hand version, n = first top-n mass >= p - 1e-6
    sp, order = logits.double().softmax(-1).sort(-1, descending=True)
    n_keep = torch.searchsorted(sp.cumsum(-1).contiguous(), torch.full((*sp.shape[:-1], 1), p - 1e-6,
                                                                       dtype=torch.float64)) + 1
    keep_sorted = torch.arange(sp.size(-1)) < n_keep
    return logits.masked_fill(~torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted), float("-inf"))


def test_the_top_p_check_fails_a_filter_that_lets_rounding_decide_and_passes_every_correct_one():
    for wrong in (top_p_float64_no_slack, top_p_float32_no_slack):
        v = check_top_p_filter.run(wrong)
        assert v.status == "failed" and "float32 [" in v.message, (wrong.__name__, v.message)
    for right in (top_p_float32_with_slack, top_p_searchsorted):
        v = check_top_p_filter.run(right)
        assert v.passed, (right.__name__, v.message)


def distribution_filter_then_temperature(logits, temperature, p):
    return (CHECKS["top_p_filter"].reference(logits, p) / temperature).softmax(-1)  # nucleus of the untempered


def distribution_times_temperature(logits, temperature, p):
    return CHECKS["top_p_filter"].reference(logits * temperature, p).softmax(-1)  # sharpens when it should flatten


def distribution_not_renormalised(logits, temperature, p):
    kept = CHECKS["top_p_filter"].reference(logits / temperature, p).isfinite()
    return (logits / temperature).softmax(-1) * kept  # the cut tokens' mass is lost, the rest sums below 1


def distribution_without_the_nucleus(logits, temperature, p):
    return (logits / temperature).softmax(-1)  # temperature only


WRONG["sampling_distribution"] = [distribution_filter_then_temperature, distribution_times_temperature,
                                  distribution_not_renormalised, distribution_without_the_nucleus]


@pytest.mark.parametrize("wrong", WRONG["sampling_distribution"], ids=lambda f: f.__name__)
def test_the_sampling_distribution_check_fails_plausible_mistakes(wrong):
    v = CHECKS["sampling_distribution"].run(wrong)
    assert v.status == "failed", f"{wrong.__name__} passed"
    assert v.message.startswith("sampling_distribution: failed case ") and "differ" in v.message


def test_the_sampling_distribution_check_passes_a_correct_one_in_any_float_dtype():
    def in_float64(logits, temperature, p):
        return CHECKS["top_p_filter"].reference(logits.double() / temperature, p).softmax(-1)

    def by_hand(logits, temperature, p):  # the nucleus's probabilities, renormalised by their sum
        probs = CHECKS["top_p_filter"].reference(logits / temperature, p).exp()
        return probs / probs.sum(-1, keepdim=True)

    for right in (in_float64, by_hand):
        assert CHECKS["sampling_distribution"].run(right).passed, right.__name__


# masked_loss (lesson 01) and kgram_windows (lesson 02) ------------------------------------------------------------

def _pad_as_class_0(targets):
    return targets.masked_fill(targets == -100, 0)


def loss_counts_padding(logits, targets):           # the padded positions scored as if their target were token 0
    return F.cross_entropy(logits.flatten(0, 1), _pad_as_class_0(targets).flatten())


def loss_over_all_positions(logits, targets):       # the real tokens' loss summed, but divided by B*T
    nll = -logits.log_softmax(-1).gather(-1, _pad_as_class_0(targets)[..., None])[..., 0]
    return (nll * (targets != -100)).sum() / targets.numel()


def loss_mean_of_row_means(logits, targets):        # each row's mean, then the mean of the rows
    nll = -logits.log_softmax(-1).gather(-1, _pad_as_class_0(targets)[..., None])[..., 0]
    mask = (targets != -100).float()
    return ((nll * mask).sum(1) / mask.sum(1)).mean()


def loss_summed(logits, targets):                   # a sum, not a mean
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")


def loss_as_float(logits, targets):                 # .item(): the number is right, but training cannot use it
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten()).item()


def loss_masks_token_0(logits, targets):            # treats token id 0 as padding too
    return F.cross_entropy(logits.flatten(0, 1), _pad_as_class_0(targets).flatten(), ignore_index=0)


def windows_exclude_current(idx, k, pad_id):        # tokens t-k..t-1: the target's own predecessor is missing
    return F.pad(idx, (k, 0), value=pad_id)[:, :-1].unfold(1, k, 1)


def windows_padded_with_zero(idx, k, pad_id):       # 0 instead of pad_id before the start of the text
    return F.pad(idx, (k - 1, 0), value=0).unfold(1, k, 1)


def windows_reversed(idx, k, pad_id):               # the newest token first
    return F.pad(idx, (k - 1, 0), value=pad_id).unfold(1, k, 1).flip(-1)


def windows_right_padded(idx, k, pad_id):           # tokens t..t+k-1: the window reads the future
    return F.pad(idx, (0, k - 1), value=pad_id).unfold(1, k, 1)


def windows_loop_off_by_one(idx, k, pad_id):        # a loop that starts each window one position late
    B, T = idx.shape
    out = torch.full((B, T, k), pad_id, dtype=idx.dtype)
    for t in range(T):
        for j in range(k):
            src = t - k + 2 + j
            if 0 <= src < T:
                out[:, t, j] = idx[:, src]
    return out


WRONG["masked_loss"] = [loss_counts_padding, loss_over_all_positions, loss_mean_of_row_means, loss_summed,
                        loss_as_float, loss_masks_token_0]
WRONG["kgram_windows"] = [windows_exclude_current, windows_padded_with_zero, windows_reversed, windows_right_padded,
                          windows_loop_off_by_one]


@pytest.mark.parametrize("name,wrong", [(n, w) for n in ("masked_loss", "kgram_windows") for w in WRONG[n]],
                         ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_the_padding_mask_and_window_checks_fail_plausible_mistakes(name, wrong):
    v = CHECKS[name].run(wrong)
    assert v.status == "failed", f"{wrong.__name__} passed the {name} check ({v.message})"
    assert v.message.startswith(f"{name}: failed case ")


def test_the_padding_mask_and_window_checks_pass_correct_hand_written_versions():
    def loss_by_hand(logits, targets):              # log-softmax, pick the target, mask, mean over real tokens
        real = targets != -100
        logp = logits.log_softmax(-1)[real]         # (N, V)
        return -logp.gather(-1, targets[real][:, None]).mean()

    def windows_by_loop(idx, k, pad_id):
        B, T = idx.shape
        rows = []
        for t in range(T):
            ctx = [idx.new_full((B,), pad_id) if s < 0 else idx[:, s] for s in range(t - k + 1, t + 1)]
            rows.append(torch.stack(ctx, dim=1))    # (B, k)
        return torch.stack(rows, dim=1)             # (B, T, k)

    assert CHECKS["masked_loss"].run(loss_by_hand).passed
    assert CHECKS["kgram_windows"].run(windows_by_loop).passed


# Lesson 10: linear attention -------------------------------------------------------------------------

def _phi(x):
    return F.elu(x) + 1


def linear_mask_off_by_one(q, k, v, eps=1e-6):         # a position does not see itself
    w = (_phi(q) @ _phi(k).transpose(-2, -1)).tril(-1)
    return (w @ v) / (w.sum(-1, keepdim=True) + eps)


def linear_mask_sees_next(q, k, v, eps=1e-6):          # the mask one position too far: sees the next key
    w = (_phi(q) @ _phi(k).transpose(-2, -1)).tril(1)
    return (w @ v) / (w.sum(-1, keepdim=True) + eps)


def linear_no_normaliser(q, k, v, eps=1e-6):           # the weighted sum, never divided by the weights' sum
    return (_phi(q) @ _phi(k).transpose(-2, -1)).tril() @ v


def linear_no_feature_map(q, k, v, eps=1e-6):          # raw q.k: weights can be negative
    w = (q @ k.transpose(-2, -1)).tril()
    return (w @ v) / (w.sum(-1, keepdim=True) + eps)


def linear_softmax_instead(q, k, v, eps=1e-6):         # softmax attention under another name
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _recurrent(q, k, v, S=None, z=None, eps=1e-6, read_first=False, keep_state=True, with_z=True):
    B, H, T, d = q.shape
    fq, fk = _phi(q), _phi(k)
    if S is None or not keep_state:
        S, z = q.new_zeros(B, H, d, v.size(-1)), q.new_zeros(B, H, d)
    ys = []
    for t in range(T):
        if read_first:
            num, den = (fq[:, :, t, :, None] * S).sum(-2), (fq[:, :, t] * z).sum(-1, keepdim=True)
        S = S + fk[:, :, t, :, None] * v[:, :, t, None, :]
        z = z + fk[:, :, t]
        if not read_first:
            num, den = (fq[:, :, t, :, None] * S).sum(-2), (fq[:, :, t] * z).sum(-1, keepdim=True)
        ys.append(num / (den + eps) if with_z else num)
    return torch.stack(ys, dim=2), S, z


def recurrent_state_updated_after_read(q, k, v, S=None, z=None, eps=1e-6):
    return _recurrent(q, k, v, S, z, eps, read_first=True)


def recurrent_ignores_the_given_state(q, k, v, S=None, z=None, eps=1e-6):
    return _recurrent(q, k, v, S, z, eps, keep_state=False)


def recurrent_no_normaliser(q, k, v, S=None, z=None, eps=1e-6):
    return _recurrent(q, k, v, S, z, eps, with_z=False)


def _delta(q, k, v, alpha, beta, S=None, read_first=False, undecayed_read=False, no_beta=False, no_delta=False):
    B, H, T, d = q.shape
    if S is None:
        S = q.new_zeros(B, H, d, v.size(-1))
    ys = []
    for t in range(T):
        kt, a, b = k[:, :, t], alpha[:, :, t, None, None], beta[:, :, t, None]
        if read_first:
            ys.append((q[:, :, t, :, None] * a * S).sum(-2))
        old = (kt[..., None] * S).sum(-2)
        S = a * S
        if not undecayed_read:
            old = (kt[..., None] * S).sum(-2)
        if no_delta:
            old = torch.zeros_like(old)
        S = S + kt[..., None] * ((1.0 if no_beta else b) * (v[:, :, t] - old))[:, :, None, :]
        if not read_first:
            ys.append((q[:, :, t, :, None] * S).sum(-2))
    return torch.stack(ys, dim=2), S


def delta_read_before_write(q, k, v, alpha, beta, S=None):
    return _delta(q, k, v, alpha, beta, S, read_first=True)


def delta_old_value_before_decay(q, k, v, alpha, beta, S=None):   # reads S_{t-1}^T k, not alpha S_{t-1}^T k
    return _delta(q, k, v, alpha, beta, S, undecayed_read=True)


def delta_without_beta(q, k, v, alpha, beta, S=None):
    return _delta(q, k, v, alpha, beta, S, no_beta=True)


def delta_plain_addition(q, k, v, alpha, beta, S=None):          # gated linear attention: no correction
    return _delta(q, k, v, alpha, beta, S, no_delta=True)


WRONG["causal_linear_attention"] = [linear_mask_off_by_one, linear_mask_sees_next, linear_no_normaliser,
                                    linear_no_feature_map, linear_softmax_instead]
WRONG["linear_attention_recurrent"] = [recurrent_state_updated_after_read, recurrent_ignores_the_given_state,
                                       recurrent_no_normaliser]
WRONG["gated_delta_recurrent"] = [delta_read_before_write, delta_old_value_before_decay, delta_without_beta,
                                  delta_plain_addition]
LINEAR_CHECKS = ("causal_linear_attention", "linear_attention_recurrent", "gated_delta_recurrent")


@pytest.mark.parametrize("name,wrong", [(n, w) for n in LINEAR_CHECKS for w in WRONG[n]],
                         ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_the_linear_attention_checks_fail_plausible_mistakes(name, wrong):
    v = CHECKS[name].run(wrong)
    assert v.status == "failed", f"{wrong.__name__} passed the {name} check ({v.message})"
    assert v.message.startswith(f"{name}: failed case ")


def test_the_linear_attention_checks_pass_correct_hand_written_versions():
    def parallel_by_loops(q, k, v, eps=1e-6):          # one query at a time, an explicit sum over its keys
        out = torch.zeros_like(v)
        for t in range(q.size(2)):
            w = (_phi(q[:, :, t:t + 1]) * _phi(k[:, :, :t + 1])).sum(-1)   # (B, H, t + 1)
            out[:, :, t] = (w[..., None] * v[:, :, :t + 1]).sum(2) / (w.sum(-1, keepdim=True) + eps)
        return out

    def delta_as_matrices(q, k, v, alpha, beta, S=None):   # S <- alpha (I - beta k k^T) S + beta k v^T
        B, H, T, d = q.shape
        S = q.new_zeros(B, H, d, v.size(-1)) if S is None else S
        eye = torch.eye(d, dtype=q.dtype)
        ys = []
        for t in range(T):
            kt, a, b = k[:, :, t, :, None], alpha[:, :, t, None, None], beta[:, :, t, None, None]
            S = a * (eye - b * kt @ kt.transpose(-2, -1)) @ S + b * kt @ v[:, :, t, None, :]
            ys.append((S.transpose(-2, -1) @ q[:, :, t, :, None])[..., 0])
        return torch.stack(ys, dim=2), S

    assert CHECKS["causal_linear_attention"].run(parallel_by_loops).passed
    assert CHECKS["linear_attention_recurrent"].run(_recurrent).passed
    assert CHECKS["gated_delta_recurrent"].run(delta_as_matrices).passed


# Lesson 08: the warmup schedule and one residual sub-layer in either arrangement --------------------------

def warmup_from_zero(step, warmup_steps):
    return 1.0 if step >= warmup_steps else step / warmup_steps  # off by one: the first step gets learning rate 0


def warmup_one_step_late(step, warmup_steps):
    return min(1.0, (step + 1) / (warmup_steps + 1))  # full learning rate one step after the warmup ends


def warmup_never_full(step, warmup_steps):
    return min(step + 1, warmup_steps) / (warmup_steps + 1) if warmup_steps else 1.0  # never reaches 1


def warmup_divides_by_zero(step, warmup_steps):
    return min(1.0, (step + 1) / warmup_steps)  # right with warmup, ZeroDivisionError without


def warmup_then_decays(step, warmup_steps):
    return (step + 1) / warmup_steps if step < warmup_steps else warmup_steps / (step + 1)  # falls after the warmup


def sublayer_always_pre(x, sublayer, norm, post):
    return x + sublayer(norm(x))  # the flag ignored: pre-norm in both arrangements


def sublayer_post_norms_the_branch(x, sublayer, norm, post):
    return x + norm(sublayer(x)) if post else x + sublayer(norm(x))  # post: the norm on the branch, not the sum


def sublayer_post_reads_normed(x, sublayer, norm, post):
    return norm(x + sublayer(norm(x))) if post else x + sublayer(norm(x))  # post: a norm before and after


def sublayer_post_no_residual(x, sublayer, norm, post):
    return norm(sublayer(x)) if post else x + sublayer(norm(x))  # post: the residual connection forgotten


def sublayer_pre_norms_the_sum(x, sublayer, norm, post):
    return norm(x + sublayer(x)) if post else norm(x + sublayer(norm(x)))  # pre: the stream normalised too


WRONG["warmup_multiplier"] = [warmup_from_zero, warmup_one_step_late, warmup_never_full, warmup_divides_by_zero,
                              warmup_then_decays]
WRONG["residual_sublayer"] = [sublayer_always_pre, sublayer_post_norms_the_branch, sublayer_post_reads_normed,
                              sublayer_post_no_residual, sublayer_pre_norms_the_sum]


def test_the_warmup_reference_is_the_schedule_training_uses():
    from picollm_helpers.config import RunConfig
    from picollm_helpers.training import lr_at

    for warmup in (0, 1, 5, 100):
        cfg = RunConfig(learning_rate=3e-3, warmup_steps=warmup)
        for step in range(0, 250, 7):
            assert lr_at(step, 250, cfg) == pytest.approx(3e-3 * CHECKS["warmup_multiplier"].reference(step, warmup))


def test_the_warmup_and_sublayer_checks_pass_correct_hand_written_versions():
    def warmup_by_cases(step, warmup_steps):       # the two phases spelled out, with integers until the end
        if warmup_steps == 0 or step + 1 >= warmup_steps:
            return 1.0
        return float(step + 1) / float(warmup_steps)

    def sublayer_by_branches(x, sublayer, norm, post):
        if post:
            return norm(x + sublayer(x))
        h = norm(x)
        return x + sublayer(h)

    assert CHECKS["warmup_multiplier"].run(warmup_by_cases).passed
    assert CHECKS["residual_sublayer"].run(sublayer_by_branches).passed


def test_the_interpretability_checks_pass_correct_hand_written_versions():
    """Lesson 07's tools written out as a student would (index tensors, a hook, the cache) pass their checks."""
    def induction(pattern, seq_len):
        q = torch.arange(seq_len, 2 * seq_len)
        return pattern[..., q, q - seq_len + 1].mean(dim=(0, 2))

    def duplicate(pattern, idx):
        dup = _earlier_same(idx)                                    # (B, q, k)
        has = dup.any(-1)                                           # (B, q)
        mass = (pattern * dup[:, None]).sum(-1)                     # (B, H, q)
        return mass.permute(1, 0, 2)[:, has].mean(-1)               # (H,)

    def ablated(model, idx, layer, heads):
        def hook(z, name):
            z = z.clone()
            for h in heads:
                z[:, :, h] = z[:, :, h].mean(dim=(0, 1))
            return z
        return run_with_hooks(model, idx, {f"blocks.{layer}.attn.hook_z": hook})

    def lens(model, idx):
        _, cache = run_with_cache(model, idx)
        streams = [cache["hook_embed"]] + [cache[f"blocks.{i}.hook_resid_post"] for i in range(len(model.blocks))]
        return torch.stack([model.lm_head(model.norm_f(s)) for s in streams])

    for name, fn in [("induction_score", induction), ("duplicate_token_score", duplicate),
                     ("mean_ablated_logits", ablated), ("logit_lens", lens)]:
        assert CHECKS[name].run(fn).passed, CHECKS[name].run(fn).message


# Lesson 05: early stopping and the memorising bigram table --------------------------------------------------------

def early_zero_based(test_loss, patience=None):
    return min(range(len(test_loss)), key=lambda e: test_loss[e])  # the index, not the epoch


def early_last_of_a_tie(test_loss, patience=None):
    best = 0
    for e in range(1, len(test_loss)):
        if test_loss[e] <= test_loss[best]:  # a tie counted as an improvement: the later epoch kept
            best = e
        elif patience is not None and e - best >= patience:
            break
    return best + 1


def early_ignores_patience(test_loss, patience=None):
    return min(range(len(test_loss)), key=lambda e: test_loss[e]) + 1  # looks at epochs training never reached


def early_one_epoch_late(test_loss, patience=None):
    best = 0
    for e in range(1, len(test_loss)):
        if test_loss[e] < test_loss[best]:
            best = e
        elif patience is not None and e - best > patience:  # waits one epoch more than the patience
            break
    return best + 1


def early_returns_stop_epoch(test_loss, patience=None):
    best = 0
    for e in range(1, len(test_loss)):
        if test_loss[e] < test_loss[best]:
            best = e
        elif patience is not None and e - best >= patience:
            return e + 1  # the epoch training stopped at, not the model it keeps
    return len(test_loss)


def bigram_across_sequences(train, test, vocab_size, alpha):
    joined = [[t for s in train for t in s]]  # pairs that span two training sequences counted too
    return CHECKS["bigram_losses"].reference(joined, test, vocab_size, alpha)


def bigram_smoothing_without_vocab(train, test, vocab_size, alpha):
    counts = np.zeros((vocab_size, vocab_size))
    for s in train:
        for a, b in zip(s, s[1:]):
            counts[a, b] += 1

    def loss(seqs):
        pairs = [(a, b) for s in seqs for a, b in zip(s, s[1:])]
        # alpha added once to the row total, not alpha x vocab_size: the row is no longer a distribution
        return -np.mean([np.log((counts[a, b] + alpha) / (counts[a].sum() + alpha)) for a, b in pairs])
    return loss(train), loss(test)


def bigram_mean_of_sequences(train, test, vocab_size, alpha):
    ref = CHECKS["bigram_losses"].reference
    # a mean of per-sequence losses weighs a short sequence like a long one
    return tuple(float(np.mean([ref(train, [s], vocab_size, alpha)[1] for s in seqs])) for seqs in (train, test))


def bigram_counts_test_too(train, test, vocab_size, alpha):
    _, te = CHECKS["bigram_losses"].reference(train + test, test, vocab_size, alpha)  # the test set in the table
    return CHECKS["bigram_losses"].reference(train, test, vocab_size, alpha)[0], te


def bigram_log2(train, test, vocab_size, alpha):
    return tuple(v / np.log(2) for v in CHECKS["bigram_losses"].reference(train, test, vocab_size, alpha))  # bits


WRONG["early_stopping_epoch"] = [early_zero_based, early_last_of_a_tie, early_ignores_patience, early_one_epoch_late,
                                 early_returns_stop_epoch]
WRONG["bigram_losses"] = [bigram_across_sequences, bigram_smoothing_without_vocab, bigram_mean_of_sequences,
                          bigram_counts_test_too, bigram_log2]


def test_the_early_stopping_and_bigram_checks_pass_correct_hand_written_versions():
    def early_with_a_counter(test_loss, patience=None):   # counts the epochs since the last improvement
        best_loss, best_epoch, waited = float("inf"), 0, 0
        for epoch, loss in enumerate(test_loss, start=1):
            if loss < best_loss:
                best_loss, best_epoch, waited = loss, epoch, 0
            else:
                waited += 1
                if patience is not None and waited >= patience:
                    break
        return best_epoch

    def bigram_with_numpy(train, test, vocab_size, alpha):   # a count matrix and vectorised look-ups
        counts = np.zeros((vocab_size, vocab_size))
        for s in train:
            np.add.at(counts, (s[:-1], s[1:]), 1)
        logp = np.log((counts + alpha) / (counts.sum(1, keepdims=True) + alpha * vocab_size))
        out = []
        for seqs in (train, test):
            a = np.concatenate([s[:-1] for s in seqs]).astype(int)
            b = np.concatenate([s[1:] for s in seqs]).astype(int)
            out.append(float(-logp[a, b].mean()))
        return tuple(out)

    assert CHECKS["early_stopping_epoch"].run(early_with_a_counter).passed
    assert CHECKS["bigram_losses"].run(bigram_with_numpy).passed


# Lesson 06: rotary position embeddings ------------------------------------------------------------------------

def _rope_angles(pos, hd, base=10000.0, exponent=2.0):
    inv_freq = base ** (-exponent * torch.arange(hd // 2, dtype=torch.float64) / hd)   # (hd/2,)
    return pos.to(torch.float64)[:, None] * inv_freq                                   # (T, hd/2)


def _rotate_halves(x, angle):
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def rope_interleaved(x, pos):   # Su et al.'s neighbouring pairs (2i, 2i+1), not the kit's halves
    angle = _rope_angles(pos, x.shape[-1])
    pairs = x.unflatten(-1, (-1, 2))                                                  # (..., T, hd/2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


def rope_base_1000(x, pos):
    return _rotate_halves(x, _rope_angles(pos, x.shape[-1], base=1000.0))


def rope_exponent_i(x, pos):    # 10000^(-i/hd): the pairs turn too slowly
    return _rotate_halves(x, _rope_angles(pos, x.shape[-1], exponent=1.0))


def rope_clockwise(x, pos):
    return _rotate_halves(x, -_rope_angles(pos, x.shape[-1]))


def rope_positions_from_zero(x, pos):   # ignores the positions it is given
    return _rotate_halves(x, _rope_angles(torch.arange(x.shape[-2]), x.shape[-1]))


def rope_position_plus_one(x, pos):
    return _rotate_halves(x, _rope_angles(pos + 1, x.shape[-1]))


def rope_scales_not_rotates(x, pos):    # each coordinate times cos: no pair is mixed, q.k is not relative
    cos = _rope_angles(pos, x.shape[-1]).cos().to(x.dtype)
    return x * torch.cat([cos, cos], dim=-1)


def rope_float32_angles(x, pos):        # angles in float32: at position 1000 they are off by about 6e-5
    angle = (pos.float()[:, None] * 10000.0 ** (-2 * torch.arange(x.shape[-1] // 2).float() / x.shape[-1]))
    return _rotate_halves(x, angle.double())


WRONG["rope_rotate"] = [rope_interleaved, rope_base_1000, rope_exponent_i, rope_clockwise, rope_positions_from_zero,
                        rope_position_plus_one, rope_scales_not_rotates, rope_float32_angles]


def test_the_rope_check_passes_correct_hand_written_versions():
    from picollm_helpers.checks import check_rope_rotate

    def as_complex(x, pos):   # each pair (x_i, x_{i + hd/2}) as one complex number, times e^(i angle)
        x1, x2 = x.chunk(2, dim=-1)
        angle = _rope_angles(pos, x.shape[-1])                                             # (T, hd/2)
        z = torch.complex(x1.double(), x2.double()) * torch.polar(torch.ones_like(angle), angle)
        return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)

    def as_rotation_matrices(x, pos):   # an explicit 2x2 rotation for every position and pair
        angle = _rope_angles(pos, x.shape[-1])                           # (T, hd/2)
        rot = torch.stack([torch.stack([angle.cos(), -angle.sin()], -1),
                           torch.stack([angle.sin(), angle.cos()], -1)], -2)   # (T, hd/2, 2, 2)
        pairs = torch.stack(x.double().chunk(2, dim=-1), dim=-1)          # (..., T, hd/2, 2)
        turned = (rot @ pairs[..., None])[..., 0]                          # (..., T, hd/2, 2)
        return torch.cat([turned[..., 0], turned[..., 1]], dim=-1).to(x.dtype)

    for fn in (as_complex, as_rotation_matrices):
        v = check_rope_rotate.run(fn)
        assert v.passed, v.message


def test_the_rope_property_case_names_a_map_that_is_not_a_rotation():
    """A map that is not a rotation fails the relative-position case by the score change it makes, and a rotation
    with the wrong layout or base still passes that case (any rotation by angles proportional to the position is
    relative): the property and the comparison with the kit catch different mistakes."""
    from picollm_helpers.checks.positions import SHIFT, _observe_rope, _rope_cases
    from picollm_helpers.models.positions import rope_rotate
    (x, pos), kwargs = _rope_cases()[-1].arguments()
    assert kwargs == {"shift": SHIFT}
    assert _observe_rope(rope_rotate, x, pos, **kwargs).abs().max() < 1e-12
    for relative in (rope_interleaved, rope_base_1000, rope_clockwise, rope_position_plus_one):
        assert _observe_rope(relative, x, pos, **kwargs).abs().max() < 1e-12, relative.__name__
    assert _observe_rope(rope_scales_not_rotates, x, pos, **kwargs).abs().max() > 0.1
    assert CHECKS["rope_rotate"].run(rope_scales_not_rotates).status == "failed"


def test_rope_rotate_is_what_the_transformers_attention_applies():
    """The exercise's reference is the rotation the kit's attention applies to queries and keys: hook_q holds
    rope_rotate of the unrotated queries, and q_m . k_n depends on m - n only."""
    from picollm_helpers.models.positions import rope_rotate
    from picollm_helpers.models.transformer import TransformerModel
    torch.manual_seed(0)
    model = TransformerModel(50, 32, n_heads=4, n_blocks=1, block_size=16, pos_emb="rope")
    idx = torch.randint(0, 50, (2, 9))
    _, cache = run_with_cache(model, idx, names=["blocks.0.attn.hook_q"])
    attn = model.blocks[0].attn
    with torch.no_grad():
        h = model.blocks[0].norm1(model.wte(idx))                                             # (B, T, E)
        q = attn.qkv(h).view(2, 9, 3, 4, 8)[:, :, 0].transpose(1, 2)                           # (B, H, T, hd)
    torch.testing.assert_close(cache["blocks.0.attn.hook_q"], rope_rotate(q, torch.arange(9)))
    qv, kv = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    def score(m, n):
        return (rope_rotate(qv[None], torch.tensor([m]))[0] @ rope_rotate(kv[None], torch.tensor([n]))[0]).item()

    assert math.isclose(score(5, 2), score(105, 102), abs_tol=1e-9) and not math.isclose(score(5, 2), score(5, 3))


# Last in the module, so that it runs every wrong implementation registered in WRONG above, the later
# lessons' included (a parametrize list is read when its test is defined).
@pytest.mark.parametrize("name,wrong", [(n, w) for n, ws in WRONG.items() for w in ws],
                         ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_a_wrong_implementation_fails_readably(name, wrong):
    v = CHECKS[name].run(wrong)
    assert v.status in ("failed", "raised"), f"{wrong.__name__} passed the {name} check"
    assert v.message.startswith(name + ": ")
    assert "Traceback" not in v.message
    if v.status == "failed":
        assert "case" in v.message and "hint:" not in v.message
