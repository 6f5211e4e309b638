"""LSTM language model: the pico-llm baseline (embedding -> LSTM -> linear head)."""

import torch
import torch.nn as nn


class LSTMSeqModel(nn.Module):
    """Embedding(V, E) -> LSTM(E -> H, num_layers) -> Linear(H, V). hidden_size defaults to E."""

    def __init__(self, vocab_size, embed_size, hidden_size=None, num_layers=1, dropout=0.0):
        super().__init__()
        hidden_size = hidden_size or embed_size
        self.vocab_size, self.embed_size = vocab_size, embed_size
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.embedding = nn.Embedding(vocab_size, embed_size)
        # nn.LSTM applies dropout between stacked layers only: with one layer it would just warn.
        self.lstm = nn.LSTM(embed_size, hidden_size, num_layers=num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.lm_head = nn.Linear(hidden_size, vocab_size)

    def hidden(self, idx):
        """(B, T) ids -> (B, T, H) top-layer LSTM outputs."""
        out, _ = self.lstm(self.embedding(idx))
        return out

    def forward(self, idx):
        """(B, T) ids -> logits (B, T, V)."""
        return self.lm_head(self.hidden(idx))

    # Incremental generation (see sampling.generate): the state is the LSTM's (h, c), so each new
    # token costs one LSTM step, whatever the length of the text so far.
    def init_state(self, batch_size, device=None, dtype=None):
        w = self.lm_head.weight
        shape = (self.num_layers, batch_size, self.hidden_size)
        h = torch.zeros(shape, device=device or w.device, dtype=dtype or w.dtype)
        return (h, h.clone())

    def step(self, idx, state):
        """Feed the new tokens idx (B, T_new); return logits of the last position (B, V) and (h, c)."""
        out, state = self.lstm(self.embedding(idx), state)  # out: (B, T_new, H)
        return self.lm_head(out[:, -1]), state
