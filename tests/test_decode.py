"""The fast decode step (models/decode.py) computes what the readable KV-cache step and uncached
generation compute: the same logits up to float rounding and the same tokens, in every mode; at
batch 1 both as decode_native.c's compiled step (tests/test_decode_native.py tests it alone) and
as the eager step it replaces."""

import contextlib

import pytest
import torch

from picollm_helpers.models import TransformerModel, decode, decode_native
from picollm_helpers.models.decode import FastState, decode_fn, fast_step_one, static_step_one
from picollm_helpers.sampling import generate

V = 97


def make(seed=0, **kw):
    """A small model whose logits are far apart (the last norm's gain scaled up, which leaves a tied
    embedding alone), so float rounding between the paths cannot swap two tokens: a mismatch means a
    real difference in what they compute."""
    args = dict(vocab_size=V, embed_size=32, n_heads=4, n_blocks=2, block_size=16, pos_emb="learned")
    args.update(kw)
    torch.manual_seed(seed)
    model = TransformerModel(**args).eval()
    with torch.no_grad():
        last_norm = model.blocks[-1].norm2 if model.use_post_norm else model.norm_f
        last_norm.weight.mul_(40.0)
    return model


SHAPES = [dict(), dict(pos_emb="none"), dict(pos_emb="sinusoidal", embed_scale=True), dict(pos_emb="rope"),
          dict(use_post_norm=True), dict(pos_emb="rope", use_post_norm=True),
          dict(embed_size=48, n_heads=6, n_blocks=3, block_size=24, mlp_ratio=2)]


@pytest.mark.parametrize("native", [True, False], ids=["compiled", "eager"])
@pytest.mark.parametrize("kw", SHAPES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
@pytest.mark.parametrize("new", [5, 11, 30])  # inside the window, filling it exactly, sliding past it
def test_fast_readable_and_uncached_generation_give_the_same_greedy_tokens(kw, new, native):
    model = make(**kw)
    prompt = [3, 14, 15, 9, 26]
    with contextlib.nullcontext() if native else decode_native.disabled():
        assert (decode_fn(model, 1)[1].native is not None) == native
        fast = generate(model, None, prompt, new, greedy=True).new_ids
    readable = generate(model, None, prompt, new, greedy=True, fast=False).new_ids
    uncached = generate(model, None, prompt, new, greedy=True, use_cache=False).new_ids
    assert len(fast) == new and fast == readable == uncached
    assert len(set(fast)) > 1  # a model stuck on one token would hide a position error


@pytest.mark.parametrize("kw", [SHAPES[0], SHAPES[3], SHAPES[4]], ids=["learned", "rope", "post-norm"])
def test_products_split_over_threads_give_the_same_tokens(kw, monkeypatch):
    """A model whose weights exceed STREAM_BYTES splits every product into one part per thread (here
    every model does): the same greedy tokens as the readable and uncached paths, the window sliding."""
    monkeypatch.setattr(decode, "STREAM_BYTES", 0)
    model = make(**kw)  # V = 97 is odd: the output layer's last part is padded
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two parts, also on a one-core runner
    try:
        with decode_native.disabled():  # the eager step (test_decode_native.py splits the compiled one)
            _, state = decode_fn(model, 1)
            assert state.threads == 2 and state.layers[0][1].shape[0] == 2
            assert state.head.shape[0] == 2 * decode.HEAD_PARTS_PER_THREAD  # 8 row parts of 13: 7 rows of padding
            prompt = [3, 14, 15, 9, 26]
            fast = generate(model, None, prompt, 30, greedy=True).new_ids
        assert fast == generate(model, None, prompt, 30, greedy=True, fast=False).new_ids
        assert fast == generate(model, None, prompt, 30, greedy=True, use_cache=False).new_ids
        assert len(set(fast)) > 1
    finally:
        torch.set_num_threads(threads)


def test_weights_in_parts_multiply_as_the_whole_weight():
    w = torch.randn(6, 7)  # (K, N): N = 7 does not split evenly
    x, add = torch.randn(3, 6), torch.randn(3, 8)
    for parts in (1, 2, 3):
        wp = decode._parts(w, parts)
        n = wp.shape[0] * wp.shape[2]
        torch.testing.assert_close(decode._mm(x, wp)[:, :7], x @ w)
        if n == 8:
            torch.testing.assert_close(decode._mm(x, wp, add), add + torch.cat([x @ w, torch.zeros(3, 1)], 1))


def test_output_layer_in_row_parts_multiplies_as_the_whole_weight():
    w = torch.randn(7, 6)  # a Linear's (N, K): N = 7 does not split evenly
    x = torch.randn(3, 6)
    for parts in (1, 2, 3, 8):
        wp = decode._rows(w, parts)
        assert wp.shape[0] == parts and wp.shape[0] * wp.shape[1] >= 7
        y = decode._rows_mm(x, wp)
        torch.testing.assert_close(y[:, :7], x @ w.t())
        assert not y[:, 7:].any()  # the padding rows give zeros, never a token's logit


@pytest.mark.parametrize("kw", SHAPES[:4], ids=["learned", "none", "sinusoidal", "rope"])
def test_fast_step_logits_match_the_readable_step_at_every_position(kw):
    """Batch 3 with different prompts, token by token up to the block size: each fast step's logits
    equal the readable step's (both fed the same tokens, each on its own cache)."""
    model = make(**kw)
    prompts = torch.randint(0, V, (3, 4), generator=torch.Generator().manual_seed(1))  # (B, T0)
    with torch.inference_mode():
        step, fast_state = decode_fn(model, 3)
        assert isinstance(fast_state, FastState)
        ref_state = model.init_state(3)
        a, fast_state = step(prompts, fast_state)
        b, ref_state = model.step(prompts, ref_state)
        for _ in range(model.block_size + 3 - prompts.size(1)):  # past the block size: the window slides
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
            nxt = b.argmax(-1, keepdim=True)  # (B, 1)
            a, fast_state = step(nxt, fast_state)
            b, ref_state = model.step(nxt, ref_state)
            assert fast_state.pos == ref_state.pos and torch.equal(fast_state.tokens, ref_state.tokens)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("parts", [1, 2])
def test_static_step_equals_the_fast_step(parts):
    """The static-shape step (what torch.compile compiles: whole cache, a mask) computes the same
    logits, with the products whole or in parts."""
    model = make(pos_emb="rope")
    with torch.inference_mode():
        s1 = FastState(model, 2, "cpu", torch.float32, parts=parts)
        s2 = FastState(model, 2, "cpu", torch.float32, parts=parts)
        prompt = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(2))
        model.step(prompt, s1), model.step(prompt, s2)
        nxt = torch.tensor([[5], [7]])
        for _ in range(8):
            a = fast_step_one(model, nxt, s1)
            b = static_step_one(model, nxt, s2, torch.tensor(s2.pos))
            s2.advance(1)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(s1.k[1][:, :, :s1.pos], s2.k[1][:, :, :s2.pos])  # written where it belongs
            nxt = a.argmax(-1, keepdim=True)


def test_sampling_with_a_seed_gives_the_same_tokens_fast_or_readable():
    model = make(seed=3)
    kw = dict(top_p=0.9, temperature=1.0, seed=7, num_samples=4)
    fast = generate(model, None, [1, 2, 3], 12, **kw).new_ids
    assert fast == generate(model, None, [1, 2, 3], 12, fast=False, **kw).new_ids
    assert len({tuple(s) for s in fast}) > 1  # the samples differ from one another


def test_a_hooked_model_takes_the_readable_step_and_the_hook_sees_every_token():
    model = make()
    seen = []
    handle = model.blocks[0].attn.hook_pattern.register_forward_hook(lambda m, i, out: seen.append(out.shape))
    try:
        step, state = decode_fn(model, 1)
        assert not isinstance(state, FastState)
        generate(model, None, [1, 2, 3], 4, greedy=True)
    finally:
        handle.remove()
    assert seen == [(1, 4, 3, 3), (1, 4, 1, 4), (1, 4, 1, 5), (1, 4, 1, 6)]  # prompt, then one token at a time
    assert isinstance(decode_fn(model, 1)[1], FastState)  # hook removed: fast again


def test_generation_leaves_the_thread_count_as_it_was():
    model = make()
    threads = torch.get_num_threads()
    generate(model, None, [1, 2], 6, greedy=True)
    assert torch.get_num_threads() == threads


def test_the_compiled_step_gives_the_readable_steps_tokens():
    """decode_fn(compile=True): the static step under torch.compile (or, where this machine cannot
    compile, the eager fast step after one note) continues the prompt with the readable step's tokens."""
    model = make(pos_emb="rope")
    prompt = torch.tensor([[3, 14, 15, 9, 26]])
    with torch.inference_mode():
        step, state = decode_fn(model, 1, compile=True)
        logits, state = step(prompt, state)
        tokens = []
        for _ in range(8):
            tokens.append(int(logits.argmax(-1)))
            logits, state = step(torch.tensor([[tokens[-1]]]), state)
    assert tokens == generate(model, None, prompt[0].tolist(), 8, greedy=True, fast=False).new_ids
