"""Checks for the lessons' exercises: one per exercise, called in the cell after it.

    top_p_filter = check_top_p_filter(top_p_filter)

runs the student's function (or class) and the kit's reference on the same small hand-made and
random cases and prints one verdict: "the kit's checks passed (N cases)", or the first failing case
with its input, the expected and the received value and where they first differ (the recipe is
the exercise's hint, in the notebook, not in the message). It returns what the lesson goes on with:
the student's code when it passed, the kit's reference otherwise, so a lesson whose exercises are
not done yet still runs to the end. `CHECKS[name].run(fn)` gives the Verdict without printing.

One file per lesson topic: embedding (01), kgram (02), sampling (03), transformer (04),
overfitting (05), positions (06), interp (07), norms (08), sae (09), linear_attention (10).
"""

from ._core import Case, Check, CheckFailed, Verdict
from .embedding import check_masked_loss, check_one_hot_embedding, check_training_step
from .interp import (
    check_duplicate_token_score,
    check_induction_score,
    check_logit_lens,
    check_mean_ablated_logits,
    check_previous_token_score,
)
from .kgram import check_kgram_logits, check_kgram_windows
from .linear_attention import (
    check_causal_linear_attention,
    check_gated_delta_recurrent,
    check_linear_attention_recurrent,
)
from .norms import check_block_grad_norms, check_residual_sublayer, check_warmup_multiplier
from .overfitting import check_bigram_losses, check_early_stopping_epoch, check_ngram_share
from .positions import check_rope_rotate, check_sinusoidal_encoding
from .sae import check_normalize_decoder, check_resample_dead, check_sae_encode, check_sae_loss
from .sampling import check_sampling_distribution, check_top_k_filter, check_top_p_filter
from .transformer import (
    check_attention_head,
    check_causal_self_attention,
    check_kv_cache_step,
    check_rms_norm,
    check_transformer_block,
)

CHECKS = {c.name: c for c in (
    check_one_hot_embedding, check_masked_loss, check_training_step,
    check_kgram_windows, check_kgram_logits,
    check_top_p_filter, check_top_k_filter, check_sampling_distribution,
    check_rms_norm, check_attention_head, check_causal_self_attention, check_transformer_block, check_kv_cache_step,
    check_ngram_share, check_early_stopping_epoch, check_bigram_losses,
    check_sinusoidal_encoding, check_rope_rotate,
    check_residual_sublayer, check_warmup_multiplier, check_block_grad_norms,
    check_previous_token_score, check_induction_score, check_duplicate_token_score, check_mean_ablated_logits,
    check_logit_lens,
    check_causal_linear_attention, check_linear_attention_recurrent, check_gated_delta_recurrent,
    check_sae_encode, check_normalize_decoder, check_sae_loss, check_resample_dead,
)}

__all__ = ["CHECKS", "Case", "Check", "CheckFailed", "Verdict", *(f"check_{name}" for name in CHECKS)]
