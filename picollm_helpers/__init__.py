"""picollm_helpers: the small shared library behind the pico-llm course notebooks.

Each concern lives in one module named for it, and imports go one way (a test checks it):

  config       RunConfig (every knob, validated), profiles, the device
  files        atomic_write: every file the kit writes
  tokenizer    GPT-2 BPE (offline-capable), the compact vocabulary
  stories, seqs          the synthetic story corpus and the 3seqs data, generated
  data, pydocs           corpora and their loaders; the offline Python-docs stand-in for WikiText
  batching     tokenized datasets, splitting, mixing, batches
  models/      lstm, kgram, transformer (with hook points), and the MODELS registry
  loss         the LM loss: the fused chunked output layer beside the plain reference
  history, checkpoint, model_cache   run logs; checkpoints; train(cache=True)
  training     train(), evaluate(), the data order and schedule
  sampling     top_p_filter, generate (KV cache)
  plots, progress, widgets   figures; progress bars; the notebook explorers
  interp       run_with_cache / run_with_hooks, head scores, ablation
  monosemantic, sae      nearest tokens and k-means of embeddings; the sparse autoencoder and its measures
  results      each lesson's claims and verdicts (make report)
  timing, bench/         timing helpers; the benchmark (python -m picollm_helpers.bench)
  cli, distributed       python -m picollm_helpers; torchrun
  net          whether a host answers HTTPS, in bounded time (the hub and tiktoken checks)
  doctor       make doctor: is this install ready for the lessons, each item with its fix

The names below are the ones the lessons use; they are imported on first use, so
`import picollm_helpers` stays quick.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RunConfig": "config",
    "resolve_device": "config",
    "get_tokenizer": "tokenizer",
    "load_tinystories": "data",
    "load_3seqs": "data",
    "load_wiki": "data",
    "load_text_files": "data",
    "make_datasets": "batching",
    "LSTMSeqModel": "models",
    "KGramMLPSeqModel": "models",
    "TransformerModel": "models",
    "build_model": "models",
    "top_p_filter": "sampling",
    "generate": "sampling",
    "train": "training",
    "evaluate": "training",
    "steps_per_epoch": "training",
    "History": "history",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "TrainingDivergedError": "training",
    "grad_norms_by_layer": "training",
    "plot_history": "plots",
    "plot_runs": "plots",
    "plot_attention": "plots",
    "save_figure": "plots",
    "moving_average": "plots",
    "TopPExplorer": "widgets",
    "AttentionExplorer": "widgets",
    "FeatureExplorer": "widgets",
    "monosemantic_analysis_for_token": "monosemantic",
    "SparseAutoencoder": "sae",
    "train_sae": "sae",
    "head_scores": "interp",
    "run_with_cache": "interp",
    "run_with_hooks": "interp",
    "record_result": "results",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'picollm_helpers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
