"""The trained-model cache: `train(..., cache=True)` reuses a model trained earlier on the same run.

A lesson re-run from the top, or an explorer reopened, should not retrain a model it trained an
hour ago. The cache key is a fingerprint of everything that decides the trained weights: the
config (all of it but where logs go), the model's class, architecture and initial weights, the
training and test token ids, and the tokenizer. Equal key, equal inputs: the checkpoint stored
under that key is what training would produce again (up to the nondeterminism of the device's
kernels), so loading it is honest. Any change, a different seed included, misses the cache.

Entries are ordinary checkpoints (checkpoint.py) under `<cache dir>/models/`; `make clean-cache`
removes them. An entry proves what it holds: it records its key and carries the checkpoint's
digest of its weights, both checked on load. An entry copied or renamed over another key's (say
another seed's), or whose bytes changed, is not loaded: the model is trained anew with a one-line
note, and the entry replaced.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import read_checkpoint, save_checkpoint, update_with_tensor
from .config import cache_dir
from .errors import DigestError
from .history import History
from .progress import note

KEY_VERSION = 1  # bump when what goes into the key changes, so old entries are never matched


def _dataset_fingerprint(h, ds) -> None:
    if ds is None:
        h.update(b"none")
        return
    if all(hasattr(ds, a) for a in ("tokens", "starts", "lengths")):  # a TokenDataset: views of one tensor
        for t in (ds.tokens, ds.starts, ds.lengths):
            update_with_tensor(h, t)
        h.update(str(ds.pad_id).encode())
        return
    for example in ds:  # any list-like of token tensors
        update_with_tensor(h, torch.as_tensor(example))


def cache_key(model: nn.Module, cfg, train_ds, test_ds, tokenizer, name: str) -> str:
    """A hex digest of everything that decides what train() produces from this call."""
    h = hashlib.blake2b(digest_size=16)
    settings = {k: v for k, v in cfg.to_dict().items() if k != "output_dir"}
    h.update(json.dumps({"version": KEY_VERSION, "name": name, "config": settings,
                         "class": f"{type(model).__module__}.{type(model).__qualname__}",
                         "architecture": repr(model),
                         "tokenizer": repr(getattr(tokenizer, "name", None)),
                         "n_vocab": getattr(tokenizer, "n_vocab", None)}, sort_keys=True).encode())
    for pname, p in model.state_dict().items():  # initial weights (and buffers)
        h.update(pname.encode())
        update_with_tensor(h, p)
    to_base = getattr(tokenizer, "to_base", None)
    if to_base is not None:
        update_with_tensor(h, to_base)
    _dataset_fingerprint(h, train_ds)
    _dataset_fingerprint(h, test_ds)
    return h.hexdigest()


def entry_path(key: str, name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return cache_dir() / "models" / f"{safe}-{key}.pt"


def load(model: nn.Module, key: str, name: str) -> History | None:
    """Load the cached weights for `key` into `model` and return their History, or None on a miss.

    An entry that does not record this key, fails its digest, or cannot be read is a miss, with a note."""
    path = entry_path(key, name)
    if not path.is_file():
        return None

    def miss(why: str) -> None:
        note(f"[{name}] the model cache entry {path} {why}; training anew (the entry will be replaced)")

    try:
        ckpt = read_checkpoint(path)
    except DigestError:
        return miss("fails its digest (its bytes changed after it was written)")
    except (OSError, RuntimeError, ValueError, KeyError) as e:  # damaged, or not a checkpoint
        return miss(f"could not be read ({type(e).__name__})")
    if ckpt.get("cache_key") != key:
        recorded = ckpt.get("cache_key")
        return miss("does not record its key (written before entries did)" if recorded is None else
                    f"holds the model of another key ({recorded[:12]}..., not {key[:12]}...: copied or renamed "
                    f"over this one)")
    if "digest" not in ckpt:
        return miss("carries no digest of its weights")
    try:
        model.load_state_dict(ckpt["model_state"])
        history = History.from_dict(ckpt["history"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        return miss(f"could not be loaded ({type(e).__name__})")
    if ckpt.get("vocab_name"):
        model.vocab_name = ckpt["vocab_name"]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
    print(f"[{name}] loaded from the model cache: trained {when} with this exact config, data, initial "
          f"weights and seed ({history.steps} steps, {history.wall_time:.0f} s then); "
          f"train(..., cache=False) retrains")
    return history


def store(model: nn.Module, key: str, name: str, cfg, history: History, tokenizer, epoch: int,
          global_step: int) -> Path:
    """Keep the trained model under `key` (no optimizer state: a cached run is never resumed)."""
    return save_checkpoint(entry_path(key, name), model, None, cfg, None, history, epoch=epoch,
                           global_step=global_step, tokenizer=tokenizer, cache_key=key)
