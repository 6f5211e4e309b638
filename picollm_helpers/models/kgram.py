"""k-gram MLP language model: each position predicts the next token from the last k tokens only.

For position t the window is tokens t-k+1..t (the current token included: this window predicts
token t+1). Positions before the start of the sequence are filled with token id 0, as pico-llm
did (PAD_ID: GPT-2's "!", or with a compact vocabulary the corpus's lowest GPT-2 id, e.g. "-" in
3seqs; the model sees that token before the text starts).

The window goes through an MLP:
    Linear(k * D_in -> E) + SiLU,  num_inner_layers x (Linear(E -> E) + SiLU),  lm_head Linear(E -> V)
with D_in = E (input_mode="embedding": one shared nn.Embedding(V, E), the k vectors concatenated)
or D_in = V (input_mode="onehot": the k one-hot vectors concatenated, k * V inputs).

Everything is vectorized over batch and time: F.pad + unfold builds all (B, T, k) windows at once.
In one-hot mode the first Linear(k*V -> E) is never fed a dense one-hot matrix: multiplying a
one-hot vector by a weight matrix just selects a column, so we gather column j*V + token_j for each
slot j and sum them. `kgram_forward_loop` keeps the report's per-token loop as a reference.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

PAD_ID = 0
INPUT_MODES = ("embedding", "onehot")


class KGramMLPSeqModel(nn.Module):
    """chunk_size: positions per chunk when running the MLP (bounds the (B, chunk, k*E) inputs);
    chunk_size <= 1 means all positions at once."""

    def __init__(self, vocab_size, k=3, embed_size=1024, num_inner_layers=1, chunk_size=1,
                 input_mode="embedding"):
        super().__init__()
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode={input_mode!r} is not known: use one of {', '.join(INPUT_MODES)}")
        if k < 1:
            raise ValueError(f"k={k} must be at least 1: the model needs one token of context")
        self.vocab_size, self.k, self.embed_size = vocab_size, k, embed_size
        self.num_inner_layers, self.chunk_size, self.input_mode = num_inner_layers, chunk_size, input_mode
        self.pad_id = PAD_ID
        if input_mode == "embedding":
            self.embedding = nn.Embedding(vocab_size, embed_size)
            self.in_proj = nn.Linear(k * embed_size, embed_size)
        else:
            self.embedding = None
            self.in_proj = nn.Linear(k * vocab_size, embed_size)  # weight (E, k*V), as for dense one-hots
        self.inner = nn.Sequential(*[m for _ in range(num_inner_layers)
                                     for m in (nn.Linear(embed_size, embed_size), nn.SiLU())])
        self.lm_head = nn.Linear(embed_size, vocab_size)

    def windows(self, idx):
        """(B, T) ids -> (B, T, k): row t holds tokens t-k+1..t, left-padded with pad_id."""
        return F.pad(idx, (self.k - 1, 0), value=self.pad_id).unfold(1, self.k, 1)

    def mlp(self, win):
        """(B, T, k) windows -> (B, T, E) hidden states."""
        if self.input_mode == "onehot":
            # in_proj(one_hot(win).flatten(2)) without the (B, T, k*V) one-hot tensor: slot j of the
            # window selects column j*V + token of the weight; the k columns are summed.
            cols = win + torch.arange(self.k, device=win.device) * self.vocab_size  # (B, T, k)
            x = F.embedding(cols, self.in_proj.weight.t()).sum(2) + self.in_proj.bias  # (B, T, E)
        else:
            x = self.in_proj(self.embedding(win).flatten(2))  # (B, T, k, E) -> (B, T, k*E) -> (B, T, E)
        return self.inner(F.silu(x))

    def hidden(self, idx):
        """(B, T) ids -> (B, T, E) hidden states before lm_head."""
        win = self.windows(idx)  # (B, T, k)
        T = idx.size(1)
        n = T if self.chunk_size <= 1 else self.chunk_size
        return torch.cat([self.mlp(win[:, s:s + n]) for s in range(0, T, n)], dim=1)

    def forward(self, idx):
        """(B, T) ids -> logits (B, T, V)."""
        return self.lm_head(self.hidden(idx))

    # Incremental generation (see sampling.generate): the state is just the last k-1 tokens.
    def init_state(self, batch_size, device=None, dtype=None):
        return torch.full((batch_size, self.k - 1), self.pad_id, dtype=torch.long,
                          device=device or self.lm_head.weight.device)

    def step(self, idx, state):
        """Feed the new tokens idx (B, T_new); return logits of the last position (B, V) and the state."""
        ctx = torch.cat([state, idx], dim=1)  # (B, k-1 + T_new)
        h = self.mlp(ctx[:, -self.k:].unsqueeze(1))  # only the last window: (B, 1, E)
        return self.lm_head(h[:, 0]), ctx[:, ctx.size(1) - (self.k - 1):]


def kgram_forward_loop(model, idx):
    """The report's implementation style: Python loops over time and batch, one window at a time.

    Builds each window's one-hot vector (onehot mode) or embedding (embedding mode) and runs the
    MLP on it alone. Same result as model(idx), many times slower: kept to show the speed-up.
    """
    B, T = idx.shape
    k, V = model.k, model.vocab_size
    rows = []
    for t in range(T):
        for b in range(B):
            context = [model.pad_id] * max(0, k - 1 - t) + idx[b, max(0, t - k + 1):t + 1].tolist()
            context = torch.tensor(context, dtype=torch.long, device=idx.device)  # (k,)
            if model.input_mode == "onehot":
                x = F.one_hot(context, V).flatten().to(model.in_proj.weight.dtype)  # (k*V,)
            else:
                x = model.embedding(context).flatten()  # (k*E,)
            h = model.inner(F.silu(model.in_proj(x[None])))  # (1, E)
            rows.append(model.lm_head(h))  # (1, V)
    return torch.cat(rows).view(T, B, V).transpose(0, 1)  # (B, T, V)
