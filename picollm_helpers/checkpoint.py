"""Checkpoints: the model, optimizer, config, history and RNG state of a run in one file.

`save_checkpoint` writes plain tensors and Python data only, so `torch.load(path,
weights_only=True)` reads it and loading never unpickles arbitrary objects. `load_checkpoint`
rebuilds the model from the config and kind it records. The RNG state lets train() resume a run
so that its losses equal those of an uninterrupted one.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .config import RunConfig
from .errors import CheckpointError, MissingFileError
from .files import atomic_write
from .history import History, plain
from .models import build_model, model_kind
from .tokenizer import CompactTokenizer, get_tokenizer

CHECKPOINT_FORMAT = "picollm.checkpoint/1"


def vocab_size_of(model: nn.Module) -> int | None:
    v = getattr(model, "vocab_size", None)
    if v is None and isinstance(getattr(model, "lm_head", None), nn.Linear):
        v = model.lm_head.out_features
    return None if v is None else int(v)


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = [name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def config_dict(cfg) -> dict:
    if cfg is None:
        return {}
    return plain(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))


def _tokenizer_record(tokenizer):
    """A CompactTokenizer's id map (dense id -> GPT-2 id), so its models decode after a reload."""
    to_base = getattr(tokenizer, "to_base", None)
    return {"kind": "compact", "gpt2_ids": to_base[:-1].clone()} if to_base is not None else None


def save_checkpoint(path, model: nn.Module, optimizer=None, cfg=None, kind: str | None = None,
                    history: History | None = None, *, epoch: int = 0, global_step: int = 0,
                    tokenizer=None, data: dict | None = None) -> Path:
    """Write model (and optimizer, config, history, RNG) state to `path` atomically.

    The file holds only tensors and plain Python data, so torch.load(path, weights_only=True)
    reads it: {"format", "model_state", "optimizer_state", "config" (RunConfig.to_dict()), "kind",
    "vocab_size", "epoch", "global_step", "rng", "history" (History.to_dict()),
    "tokenizer" (None for GPT-2, or a CompactTokenizer's {"kind": "compact", "gpt2_ids"}), "torch_version",
    "data" (what it was trained on, resume.data_record: {"train": {...}, "test": {...}, "vocab": {...}})}.
    """
    path = Path(path)
    ckpt = {"format": CHECKPOINT_FORMAT,
            "model_state": model.state_dict(),
            "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
            "config": config_dict(cfg),
            "kind": kind or model_kind(model),
            "vocab_size": vocab_size_of(model),
            "epoch": int(epoch), "global_step": int(global_step),
            "rng": rng_state(),
            "history": history.to_dict() if history is not None else None,
            "tokenizer": _tokenizer_record(tokenizer),
            "data": plain(data) if data is not None else None,
            "torch_version": str(torch.__version__)}
    with atomic_write(path, "wb") as f:
        torch.save(ckpt, f)
    return path


def read_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}; pass the checkpoint.pt that train() "
                                f"wrote under <output_dir>/<name>/")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the write that made it never finished. "
                              f"Delete it and train again (without --resume / resume_from).")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message here advises turning safe loading off; a checkpoint of the kit never
        # needs that, and a file that does may run code when loaded.
        raise CheckpointError(f"{path} holds Python objects other than tensors and plain data, so it is not a "
                              f"checkpoint save_checkpoint() wrote; the kit does not load such files. Pass a "
                              f"checkpoint.pt written by train() or save_checkpoint().") from None
    except (RuntimeError, EOFError, KeyError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is incomplete or damaged ({path.stat().st_size:,} bytes; "
                              f"{type(e).__name__}). Delete it and train again, or pass another "
                              f"checkpoint.") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pico-llm checkpoint (expected format {CHECKPOINT_FORMAT!r}); "
                              f"write it with save_checkpoint()")
    return ckpt


def load_checkpoint(path, map_location="cpu"):
    """Rebuild the model a checkpoint holds. Returns (model, info).

    info: {"config": RunConfig, "kind", "epoch", "global_step", "history": History | None,
    "tokenizer": the CompactTokenizer the model was trained with, or None (plain GPT-2: use
    get_tokenizer()), "optimizer_state", "rng", "path"}. Loading never unpickles arbitrary objects
    (weights_only=True).
    """
    ckpt = read_checkpoint(path, map_location)
    if not ckpt.get("kind") or not ckpt.get("config"):
        raise CheckpointError(f"{path} lacks the model kind or config needed to rebuild the model; "
                         f"save it with save_checkpoint(path, model, cfg=cfg, kind=...)")
    cfg = RunConfig.from_dict(ckpt["config"])
    kwargs = {"vocab_size": ckpt["vocab_size"]} if ckpt.get("vocab_size") else {}
    model = build_model(ckpt["kind"], cfg, **kwargs)
    model.load_state_dict(ckpt["model_state"])
    model.to(map_location if map_location is not None else "cpu")
    history = History.from_dict(ckpt["history"]) if ckpt.get("history") else None
    tokenizer = None
    if (ckpt.get("tokenizer") or {}).get("kind") == "compact":
        tokenizer = CompactTokenizer(get_tokenizer(), ckpt["tokenizer"]["gpt2_ids"].tolist())
    info = {"config": cfg, "kind": ckpt["kind"], "epoch": ckpt["epoch"], "global_step": ckpt["global_step"],
            "history": history, "tokenizer": tokenizer, "optimizer_state": ckpt.get("optimizer_state"),
            "rng": ckpt.get("rng"), "path": str(path)}
    return model, info
