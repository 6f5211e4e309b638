"""The three pico-llm language models and `build_model`, which makes one from a RunConfig.

Every model maps (B, T) int64 ids to (B, T, V) logits, exposes `hidden(idx)` (B, T, D) and
`lm_head` (Linear D -> V) with forward(idx) == lm_head(hidden(idx)), and supports incremental
generation: `state = model.init_state(B)`, `logits, state = model.step(new_ids, state)`.
"""

import torch.nn as nn

from .kgram import KGramMLPSeqModel, kgram_forward_loop
from .lstm import LSTMSeqModel
from .transformer import RMSNorm, TransformerModel

# The model kinds by their pico-llm names, in the order pico-llm trains them. The CLI's --models
# choices, build_model and the kind recorded in checkpoints all read this one table.
MODELS = {"kgram_mlp_seq": KGramMLPSeqModel, "lstm": LSTMSeqModel, "transformer": TransformerModel}
KINDS = tuple(MODELS)

__all__ = ["LSTMSeqModel", "KGramMLPSeqModel", "TransformerModel", "RMSNorm", "build_model",
           "model_kind", "param_count_formula", "kgram_forward_loop", "MODELS", "KINDS"]


def vocab_size_of(model) -> int | None:
    """How many token ids a model outputs: its vocab_size, else its lm_head's rows, else None."""
    v = getattr(model, "vocab_size", None)
    if v is None and isinstance(getattr(model, "lm_head", None), nn.Linear):
        v = model.lm_head.out_features
    return None if v is None else int(v)


def _model_kwargs(kind, cfg):
    """Constructor arguments for `kind`, read from cfg by the pico-llm flag names."""
    if kind == "lstm":
        return dict(embed_size=cfg.embed_size, hidden_size=cfg.embed_size,
                    num_layers=cfg.lstm_layers, dropout=cfg.dropout)
    if kind == "kgram_mlp_seq":
        return dict(k=cfg.kgram_k, embed_size=cfg.embed_size, num_inner_layers=cfg.num_inner_mlp_layers,
                    chunk_size=cfg.kgram_chunk_size, input_mode=cfg.kgram_input)
    if kind == "transformer":
        return dict(embed_size=cfg.embed_size, n_heads=cfg.n_heads, n_blocks=cfg.n_blocks,
                    block_size=cfg.block_size, pos_emb=cfg.pos_emb, use_post_norm=cfg.use_post_norm,
                    embed_scale=getattr(cfg, "embed_scale", None), dropout=cfg.dropout,
                    attention=getattr(cfg, "attention", "softmax"))
    raise ValueError(f"model kind {kind!r} is not known: use one of {', '.join(KINDS)}")


def build_model(kind, cfg, vocab_size=50257):
    """kind: "lstm" | "kgram_mlp_seq" | "transformer" (pico-llm's names); cfg: a RunConfig."""
    kwargs = _model_kwargs(kind, cfg)
    return MODELS[kind](vocab_size, **kwargs)


def model_kind(model) -> str | None:
    """The kind build_model takes for one of the kit's models, None for any other module."""
    return next((kind for kind, cls in MODELS.items() if type(model) is cls), None)


def param_count_formula(kind, cfg, vocab_size=50257):
    """Number of parameters of build_model(kind, cfg, vocab_size), from the architecture alone."""
    a, V = _model_kwargs(kind, cfg), vocab_size
    if kind == "lstm":
        E, H, L = a["embed_size"], a["hidden_size"], a["num_layers"]
        # each layer: 4 gates, weights on the input and on h, two bias vectors (bias_ih, bias_hh)
        lstm = sum(4 * H * ((E if i == 0 else H) + H) + 8 * H for i in range(L))
        return V * E + lstm + (H * V + V)
    if kind == "kgram_mlp_seq":
        k, E, n = a["k"], a["embed_size"], a["num_inner_layers"]
        d_in = E if a["input_mode"] == "embedding" else V
        emb = V * E if a["input_mode"] == "embedding" else 0
        return emb + (k * d_in * E + E) + n * (E * E + E) + (E * V + V)
    E, L, T = a["embed_size"], a["n_blocks"], a["block_size"]
    # per block: two RMSNorm weights, qkv + out projection, MLP E -> 4E -> E (no biases)
    block = 2 * E + 4 * E * E + 2 * 4 * E * E
    pos = T * E if a["pos_emb"] == "learned" else 0
    final_norm = 0 if a["use_post_norm"] else E
    if a["attention"] != "softmax":  # linear attention: the token shift (3E); gated_delta: alpha, beta per head
        block += 3 * E + (2 * a["n_heads"] * (E + 1) if a["attention"] == "gated_delta" else 0)
    return V * E + pos + L * block + final_norm + E * V
