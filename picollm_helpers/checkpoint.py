"""Checkpoints: the model, optimizer, config, history and RNG state of a run in one file.

`save_checkpoint` writes plain tensors and Python data only, so `torch.load(path,
weights_only=True)` reads it and loading never unpickles arbitrary objects. `load_checkpoint`
rebuilds the model from the config and kind it records. The RNG state lets train() resume a run
so that its losses equal those of an uninterrupted one.

A checkpoint proves what it holds: it carries a digest of its contents (every tensor's bytes,
and the plain data beside them), checked on every read, so a flipped byte or an edited file is
refused as damaged instead of loading a wrong model. It also names the vocabulary its model
was trained with (tokenizer.vocab_name), which the rebuilt model carries, so generate() refuses
another tokenizer. Errors say what is wrong: a file shown to be damaged (not a zip archive,
failing its digest) is the only case advised to be deleted; a device that is not here, or a file
that cannot be read, is named as such.
"""

from __future__ import annotations

import hashlib
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .config import RunConfig
from .errors import CheckpointError, DigestError, MissingFileError, PicoLLMError
from .files import atomic_write
from .history import History, plain
from .models import build_model, model_kind, vocab_size_of
from .tokenizer import CompactTokenizer, get_tokenizer, vocab_name

CHECKPOINT_FORMAT = "picollm.checkpoint/1"


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


def update_with_tensor(h, t: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape and bytes into hash h (the model cache's keys use it too)."""
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():   # flattened first: a 0-dim tensor (an optimizer's step) has no byte view of its own
        h.update(t.reshape(-1).view(torch.uint8).numpy())


def _digest_update(h, obj) -> None:
    """Feed obj (tensors, dicts, lists and plain values, as a checkpoint holds) into hash h."""
    if isinstance(obj, torch.Tensor):
        h.update(b"T")
        update_with_tensor(h, obj)
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=str):
            h.update(repr(k).encode() + b":")
            _digest_update(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _digest_update(h, v)
            h.update(b",")
        h.update(b"]")
    else:
        h.update(repr(obj).encode())


def content_digest(ckpt: dict) -> str:
    """blake2b of everything in a checkpoint but its "digest" entry: the tensors' bytes, dtypes and
    shapes, and the plain data (config, history, records). Equal digest, equal contents."""
    h = hashlib.blake2b(digest_size=20)
    _digest_update(h, {k: v for k, v in ckpt.items() if k != "digest"})
    return h.hexdigest()


def _tokenizer_record(tokenizer):
    """A CompactTokenizer's id map (dense id -> GPT-2 id), so its models decode after a reload."""
    to_base = getattr(tokenizer, "to_base", None)
    return {"kind": "compact", "gpt2_ids": to_base[:-1].clone()} if to_base is not None else None


def save_checkpoint(path, model: nn.Module, optimizer=None, cfg=None, kind: str | None = None,
                    history: History | None = None, *, epoch: int = 0, global_step: int = 0,
                    tokenizer=None, data: dict | None = None, cache_key: str | None = None) -> Path:
    """Write model (and optimizer, config, history, RNG) state to `path` atomically.

    The file holds only tensors and plain Python data, so torch.load(path, weights_only=True)
    reads it: {"format", "model_state", "optimizer_state", "config" (RunConfig.to_dict()), "kind",
    "vocab_size", "epoch", "global_step", "rng", "history" (History.to_dict()),
    "tokenizer" (None for GPT-2, or a CompactTokenizer's {"kind": "compact", "gpt2_ids"}), "torch_version",
    "data" (what it was trained on, resume.data_record: {"train": {...}, "test": {...}, "vocab": {...}}),
    "vocab_name" (the vocabulary the model was trained with, tokenizer.vocab_name), "cache_key" (a
    model-cache entry's key, else None), "digest" (content_digest of all the rest, checked on load)}.
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
            "vocab_name": vocab_name(tokenizer) if tokenizer is not None else getattr(model, "vocab_name", None),
            "cache_key": cache_key,
            "torch_version": str(torch.__version__)}
    ckpt["digest"] = content_digest(ckpt)
    with atomic_write(path, "wb") as f:
        torch.save(ckpt, f)
    return path


def _check_device(map_location, path) -> None:
    """A map_location naming a device this machine lacks is the caller's to fix, not the file's."""
    if map_location is None or not isinstance(map_location, (str, torch.device)):
        return   # a dict or a function: torch checks it
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError):
        raise PicoLLMError(f"map_location={map_location!r} is not a device: use 'cpu', 'cuda', 'cuda:N' or "
                           f"'mps' (the checkpoint {path} was not read).") from None
    here = {"cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "mps": int(torch.backends.mps.is_available())}
    if device.type in here:
        n = here[device.type]
        if n == 0 or (device.index is not None and device.index >= n):
            has = f"has {n} {device.type.upper()} device(s)" if n else f"has no {device.type.upper()} device"
            raise PicoLLMError(f"map_location={map_location!r}: this machine {has}, so the checkpoint {path} "
                               f"cannot be loaded there (the file itself was not read, nothing is wrong with "
                               f"it). Load it with map_location='cpu'.")


def _not_damaged_read_error(path, e: OSError) -> CheckpointError:
    why = e.strerror or type(e).__name__
    return CheckpointError(f"cannot read the checkpoint {path}: {why}. The file is not shown to be damaged: "
                           f"check that it is readable by you (its permissions, the disk), then try again.")


def read_checkpoint(path, map_location="cpu") -> dict:
    """The checkpoint's dict, after checking that it is one of the kit's and that its digest holds."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}; pass the checkpoint.pt that train() "
                                f"wrote under <output_dir>/<name>/")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the write that made it never finished. "
                              f"Delete it and train again (without --resume / resume_from).")
    _check_device(map_location, path)
    damaged = (f"checkpoint {path} is incomplete or damaged ({path.stat().st_size:,} bytes; {{why}}). Delete it "
               f"and train again, or pass another checkpoint.")
    try:
        with open(path, "rb") as f:
            is_zip = zipfile.is_zipfile(f)
    except OSError as e:
        raise _not_damaged_read_error(path, e) from None
    if not is_zip:   # torch.save writes a zip archive; a cut or overwritten file is not one any more
        raise CheckpointError(damaged.format(why="not the zip archive torch.save writes")) from None
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e) and "Weights only load failed" not in str(e):
            raise CheckpointError(damaged.format(why="its records cannot be unpickled")) from None
        # torch's own message here advises turning safe loading off; a checkpoint of the kit never
        # needs that, and a file that does may run code when loaded.
        raise CheckpointError(f"{path} holds Python objects other than tensors and plain data, so it is not a "
                              f"checkpoint save_checkpoint() wrote; the kit does not load such files. Pass a "
                              f"checkpoint.pt written by train() or save_checkpoint().") from None
    except OSError as e:
        raise _not_damaged_read_error(path, e) from None
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if "device" in first.lower():   # a map_location torch cannot use here
            raise PicoLLMError(f"map_location={map_location!r}: {first} The checkpoint {path} itself is not "
                               f"shown to be damaged; load it with map_location='cpu'.") from None
        raise CheckpointError(damaged.format(why=f"RuntimeError: {first}")) from None
    except (EOFError, KeyError, IndexError, ValueError, TypeError, AttributeError, zipfile.BadZipFile) as e:
        raise CheckpointError(damaged.format(why=type(e).__name__)) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pico-llm checkpoint (expected format {CHECKPOINT_FORMAT!r}); "
                              f"write it with save_checkpoint()")
    if "digest" in ckpt and ckpt["digest"] != content_digest(ckpt):   # checkpoints before digests have none
        raise DigestError(f"checkpoint {path} is damaged: its contents fail their digest (a byte changed on "
                              f"disk, or the file was edited after it was written), so its weights cannot be "
                              f"trusted. Delete it and train again, or pass another checkpoint.")
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
    if not isinstance(ckpt.get("model_state"), dict):
        raise CheckpointError(f"{path} has no model_state (the model's weights), so there is no model to load; "
                              f"pass a checkpoint.pt written by train() or save_checkpoint().")
    cfg = RunConfig.from_dict(ckpt["config"])
    kwargs = {"vocab_size": ckpt["vocab_size"]} if ckpt.get("vocab_size") else {}
    try:
        model = build_model(ckpt["kind"], cfg, **kwargs)
    except (KeyError, ValueError):
        raise CheckpointError(f"{path} names the model kind {ckpt['kind']!r}, which the kit does not have; pass "
                              f"a checkpoint of one of the kit's models.") from None
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:200]
        raise CheckpointError(f"the weights in {path} do not fit the {ckpt['kind']} its config describes "
                              f"({first}; e.g. {_first_mismatch(model, ckpt['model_state'])}): the config and "
                              f"weights were not saved together by save_checkpoint(). Pass a checkpoint "
                              f"train() wrote.") from None
    model.to(map_location if map_location is not None else "cpu")
    if ckpt.get("vocab_name"):   # generate() refuses a tokenizer of another vocabulary
        model.vocab_name = ckpt["vocab_name"]
    history = History.from_dict(ckpt["history"]) if ckpt.get("history") else None
    tokenizer = None
    if (ckpt.get("tokenizer") or {}).get("kind") == "compact":
        tokenizer = CompactTokenizer(get_tokenizer(), ckpt["tokenizer"]["gpt2_ids"].tolist())
    info = {"config": cfg, "kind": ckpt["kind"], "epoch": ckpt["epoch"], "global_step": ckpt["global_step"],
            "history": history, "tokenizer": tokenizer, "optimizer_state": ckpt.get("optimizer_state"),
            "rng": ckpt.get("rng"), "path": str(path)}
    return model, info


def _first_mismatch(model: nn.Module, state: dict) -> str:
    """The first weight whose name or shape differs between a model and a state_dict, in words."""
    mine = model.state_dict()
    for name, t in mine.items():
        if name not in state:
            return f"{name} is missing"
        if tuple(getattr(state[name], "shape", ())) != tuple(t.shape):
            return f"{name}: shape {tuple(state[name].shape)} in the file, {tuple(t.shape)} in the model"
    extra = next((n for n in state if n not in mine), None)
    return f"{extra} is not a weight of this model" if extra else "no single weight named"
