"""Turning logits into tokens: temperature, top-k, top-p (nucleus), greedy; and `generate`.

`generate` has one code path for every model: it feeds the prompt once through the model's
incremental state (`model.init_state`, `model.step`: the transformer's KV cache, the LSTM's (h, c),
the k-gram model's last k-1 tokens), then one token at a time.
"""

import math
import numbers
from dataclasses import dataclass

import torch

from .errors import PicoLLMError
from .models.decode import decode_fn, decode_threads
from .timing import phase
from .tokenizer import check_tokenizer

# The nucleus's boundary: a cumulative mass within P_TOLERANCE of p counts as reaching p. Logits are
# float32 in practice, and a float32 probability carries a relative rounding error of about 6e-8, so
# the top-n mass of probabilities written as decimals (0.05, 0.25, 0.7) comes out a few 1e-7 away from
# its exact value, on either side; a tolerance that large makes the exact rule on those decimals and
# the filter agree. 1e-6 is far below any mass that changes what is sampled (a token of probability
# under 1e-6 is drawn about once in a million steps). The lesson's hand version uses the same number.
P_TOLERANCE = 1e-6
# On MPS (no float64) the cumulative sum over V terms is itself float32: a margin of 16 float32 eps.
_P_TOL_FLOAT32 = max(P_TOLERANCE, 16 * torch.finfo(torch.float32).eps)


def _check_p(p):
    real = isinstance(p, numbers.Real) and not isinstance(p, bool)
    ok = real and 0.0 < float(p) <= 1.0  # False for nan too
    if not ok:
        raise PicoLLMError(f"top_p={p!r} is outside (0, 1]: use e.g. 0.9 (p=1 keeps every token, "
                         "a tiny p is greedy)")


def _check_finite(logits) -> None:
    """Refuse logits a distribution cannot be made from: a NaN or +inf anywhere, or a row that is
    all -inf (no token left). A NaN would sort first and push the real top token out of the nucleus."""
    top = logits.amax(dim=-1)  # NaN if a row holds one, +inf if it holds one, -inf if the row is all -inf
    if not bool(torch.isfinite(top).all()):
        if bool(logits.isnan().any()):
            what = f"{int(logits.isnan().sum())} NaN value(s)"
        elif bool((logits == float("inf")).any()):
            what = "+inf"
        else:
            what = "a row that is all -inf (every token excluded)"
        raise PicoLLMError(f"the logits hold {what}, so no next-token distribution can be made from them: the "
                           "model's output is broken (a diverged or damaged model: check its training loss), "
                           "or a filter excluded every token.")


def top_p_filter(logits, p):
    """Keep the nucleus: the smallest set of most probable tokens whose probability reaches p.

    logits: (..., V). Returns logits of the same shape with every token outside the nucleus set to
    -inf. At least one token (the most probable) is always kept; p=1 keeps all. Logits with a NaN
    or +inf, or a row that is all -inf, are refused (PicoLLMError): no distribution comes from them.

    The rule, exactly: sort the probabilities softmax(logits) from most to least probable; token n
    (counting from 1) is kept when the mass of the n-1 tokens above it is below p - P_TOLERANCE
    (1e-6). So the token whose mass crosses p stays, and a mass within 1e-6 of p counts as reaching
    it: float32 rounding never decides the boundary. [0.05, 0.25, 0.7] at p=0.7 keeps one token
    (0.7 reaches 0.7), at p=0.95 two, at p=0.96 all three. Half-precision logits round by far more
    than 1e-6: for them the rule is exact on the rounded values.
    """
    _check_p(p)
    _check_finite(logits)
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (..., V)
    # float64 (MPS has none: float32 there) as the cumulative sum runs over V terms
    wide = torch.float32 if logits.device.type == "mps" else torch.float64
    probs = sorted_logits.to(wide).softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each token
    tol = _P_TOL_FLOAT32 if wide == torch.float32 else P_TOLERANCE
    keep_sorted = before < p - tol  # (..., V) needed while the tokens above fall short of p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # back to vocabulary order
    return logits.masked_fill(~keep, float("-inf"))


def top_k_filter(logits, k):
    """Keep the k largest logits (ties at the k-th value are kept too); the rest become -inf."""
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
        raise PicoLLMError(f"top_k={k!r} must be a positive int: use e.g. 50, or None for no top-k")
    if k >= logits.size(-1):
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]  # (..., 1) the k-th largest
    return logits.masked_fill(logits < kth, float("-inf"))


def sampling_distribution(logits, temperature=1.0, top_p=None, *, top_k=None):
    """The distribution the next token is drawn from: logits (..., V) -> float32 probabilities (..., V).

    The logits are divided by `temperature` (> 0: below 1 sharpens, above 1 flattens), then filtered
    by top-k, then by top-p (so the nucleus is taken on the tempered distribution), and the softmax
    renormalises what is left: tokens outside the kept set get probability 0.
    """
    _check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        raise PicoLLMError("temperature=0 is greedy decoding, which has no distribution to draw from: "
                           "use sample_next(..., greedy=True), or a temperature > 0")
    _check_finite(logits)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return logits.float().softmax(dim=-1)


def sample_next(logits, *, temperature=1.0, top_k=None, top_p=None, greedy=False, generator=None):
    """Pick one token per row of logits (B, V) -> (B,) int64 ids.

    greedy (or temperature=0) takes the argmax. Otherwise a token is drawn with `generator` from
    `sampling_distribution` (temperature, then top-k, then top-p, renormalised).
    """
    _check_sampling(temperature, top_k, top_p)
    _check_finite(logits)  # argmax would pick a NaN, multinomial would fail in torch's words
    if greedy or temperature == 0:
        return logits.argmax(dim=-1)
    probs = sampling_distribution(logits, temperature, top_p, top_k=top_k)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_sampling(temperature, top_k, top_p) -> None:
    """The sampling settings, checked before any token is drawn."""
    if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
            or not math.isfinite(temperature) or temperature < 0):
        raise PicoLLMError(f"temperature={temperature!r} is invalid: use a number >= 0 (0 means greedy), e.g. 1.0")
    if top_k is not None and not (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1):
        raise PicoLLMError(f"top_k={top_k!r} must be a positive int: use e.g. 50, or None for no top-k")
    if top_p is not None:
        _check_p(top_p)


@dataclass
class Generation:
    """What `generate` returns. With num_samples > 1, text/ids/new_text/new_ids are lists of samples."""
    text: object      # str: prompt + continuation, decoded (None without a tokenizer)
    ids: list         # prompt + new token ids
    new_text: object  # str: the continuation alone
    new_ids: list     # the new token ids alone

    def __str__(self):
        if self.text is None:  # generated without a tokenizer
            return str(self.ids)
        return self.text if isinstance(self.text, str) else "\n".join(self.text)


def _encode(tokenizer, text):
    encode = getattr(tokenizer, "encode_ordinary", None) or tokenizer.encode  # tiktoken or a toy
    return list(encode(text))


def _last_logits(model, ids):
    """Uncached: run the (cropped) context again, apply lm_head to the last position only."""
    block_size = getattr(model, "block_size", None)
    if block_size is not None:
        ids = ids[:, -block_size:]
    return model.lm_head(model.hidden(ids)[:, -1])  # (B, V)


@torch.inference_mode()  # no_grad, and no version counters either: less overhead per token
@phase("generate")
def generate(model, tokenizer, prompt, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None,
             greedy=False, seed=None, use_cache=True, num_samples=1, fast=True):
    """Continue `prompt` (a str, or a list of token ids) by max_new_tokens tokens -> Generation.

    use_cache=True steps the model's incremental state; use_cache=False runs the whole (cropped)
    context again for every token (same tokens, slower). seed makes sampling reproducible.
    fast=True steps a transformer's cache with models.decode's fast step (same tokens, fewer
    operations); fast=False with its readable model.step, the one lesson 04 builds.
    A transformer sees the last block_size tokens; a longer prompt is cropped, with a note.
    tokenizer may be None when prompt is token ids: the result then has ids only (text is None).
    A tokenizer of another vocabulary than the model's (GPT-2's for a compact-vocabulary model) is
    refused (VocabularyError, naming both): its ids would name other tokens.
    """
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("a text prompt needs a tokenizer: pass get_tokenizer(), or the prompt as token ids")
        prompt_ids = _encode(tokenizer, prompt)
    else:
        prompt_ids = [int(t) for t in (prompt.tolist() if torch.is_tensor(prompt) else prompt)]
    if not prompt_ids:
        raise ValueError(f"prompt {prompt!r} is empty (no tokens): give at least one token of text, "
                         "e.g. prompt='Once upon a'")
    for arg, value, least in (("max_new_tokens", max_new_tokens, 0), ("num_samples", num_samples, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise PicoLLMError(f"{arg}={value!r} must be a whole number >= {least}, e.g. {arg}=20")
    check_tokenizer(model, tokenizer, who="generate")
    _check_sampling(temperature, top_k, top_p)
    block_size = getattr(model, "block_size", None)
    if block_size is not None and len(prompt_ids) > block_size:
        print(f"note: the prompt has {len(prompt_ids)} tokens, more than the context "
              f"(block_size={block_size}): the model sees its last {block_size} tokens")

    device = next(model.parameters()).device
    idx = torch.tensor([prompt_ids] * num_samples, dtype=torch.long, device=device)  # (N, T0)
    gen = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    threads = torch.get_num_threads()
    if use_cache and (one := decode_threads(model, num_samples, fast)):
        torch.set_num_threads(one)  # see models.decode.decode_threads
    try:
        new = []
        if max_new_tokens > 0:
            if use_cache:
                step, state = decode_fn(model, num_samples, fast=fast)
                logits, state = step(idx, state)  # prompt in one go
            else:
                logits = _last_logits(model, idx)
            for i in range(max_new_tokens):
                nxt = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                  greedy=greedy, generator=gen)[:, None]  # (N, 1)
                new.append(nxt)
                if i == max_new_tokens - 1:
                    break
                if use_cache:
                    logits, state = step(nxt, state)
                else:
                    logits = _last_logits(model, torch.cat([idx] + new, dim=1))
    finally:
        model.train(was_training)
        torch.set_num_threads(threads)

    new_ids = torch.cat(new, dim=1).tolist() if new else [[] for _ in range(num_samples)]
    ids = [prompt_ids + n for n in new_ids]
    decode = tokenizer.decode if tokenizer is not None else (lambda _: None)  # ids-only use
    text = [decode(s) for s in ids]
    new_text = [decode(n) for n in new_ids]
    if num_samples == 1:
        return Generation(text[0], ids[0], new_text[0], new_ids[0])
    return Generation(text, ids, new_text, new_ids)
