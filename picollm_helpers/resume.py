"""What a checkpoint was trained on, and whether a run may resume from it.

A checkpoint records its config, its data (each split's source, size and a fingerprint of its
token ids) and its vocabulary. Resuming continues the exact batch order and learning-rate
schedule of the run that wrote it, so it is only honest on the same model, data, vocabulary,
seed and schedule: `differences` lists what does not match (fewer epochs than the checkpoint
has trained included), and train() refuses to resume unless asked to go ahead anyway (force),
which it records (forced_record) beside the run's new config.
"""

from __future__ import annotations

import hashlib

from .checkpoint import update_with_tensor
from .model_cache import _dataset_fingerprint

# Settings that change where outputs go, what is printed, or how fast the same numbers are
# computed, but not which weights training produces: a resumed run may change them.
FREE_TO_CHANGE = {"output_dir", "device_id", "profile", "prompt", "max_new_tokens", "top_p_values",
                  "precision", "compile", "loss_chunk_size", "length_bucket", "epochs",
                  "eval_subset"}


def split_record(ds) -> dict | None:
    """{"source", "examples", "tokens", "fingerprint"} of a dataset; None for no dataset."""
    if ds is None:
        return None
    h = hashlib.blake2b(digest_size=16)
    _dataset_fingerprint(h, ds)
    tokens = int(ds.num_tokens) if hasattr(ds, "num_tokens") else sum(len(x) for x in ds)
    return {"source": str(getattr(ds, "source", type(ds).__name__)), "examples": len(ds), "tokens": tokens,
            "fingerprint": h.hexdigest()}


def vocab_record(tokenizer) -> dict | None:
    """{"name", "n_vocab", "fingerprint"} of a tokenizer (a compact one's id map is fingerprinted)."""
    if tokenizer is None:
        return None
    h = hashlib.blake2b(digest_size=16)
    to_base = getattr(tokenizer, "to_base", None)
    if to_base is not None:
        update_with_tensor(h, to_base)
    return {"name": str(getattr(tokenizer, "name", type(tokenizer).__name__)),
            "n_vocab": int(getattr(tokenizer, "n_vocab", 0)), "fingerprint": h.hexdigest()}


def data_record(train_ds, test_ds, tokenizer) -> dict:
    return {"train": split_record(train_ds), "test": split_record(test_ds), "vocab": vocab_record(tokenizer)}


def _describe(rec) -> str:
    if rec is None:
        return "none"
    if "examples" in rec:
        return f"{rec['source']}, {rec['examples']:,} examples, {rec['tokens']:,} tokens"
    return f"{rec['name']}, {rec['n_vocab']:,} ids"


def differences(ckpt: dict, cfg, kind: str | None, data: dict) -> list[str]:
    """What differs between the run that wrote `ckpt` and this one, one phrase per difference."""
    out = []
    if kind and ckpt.get("kind") and ckpt["kind"] != kind:
        out.append(f"model: checkpoint {ckpt['kind']}, this run {kind}")
    saved, mine = ckpt.get("config") or {}, cfg.to_dict()
    for key in mine:
        if key in FREE_TO_CHANGE or key not in saved or saved[key] == mine[key]:
            continue
        out.append(f"{key}: checkpoint {saved[key]!r}, this run {mine[key]!r}")
    if saved.get("epochs") != mine["epochs"] and mine["lr_schedule"] == "cosine" and "epochs" in saved:
        # the cosine schedule spans all epochs: more epochs reshape the learning rate already used
        out.append(f"epochs (the cosine schedule's length): checkpoint {saved['epochs']}, this run {mine['epochs']}")
    done = ckpt.get("epoch")
    if isinstance(done, int) and done > mine["epochs"]:   # more epochs trained than this run asks for
        out.append(f"epochs: the checkpoint has {done} epochs trained, this run asks for {mine['epochs']} (fewer: "
                   f"resuming would train nothing; ask for {done} or more)")
    recorded = ckpt.get("data") or {}
    for part, what in (("train", "training data"), ("test", "test data"), ("vocab", "vocabulary")):
        if part in recorded and recorded[part] != data.get(part):
            out.append(f"{what}: checkpoint {_describe(recorded[part])}, this run {_describe(data.get(part))}"
                       + (" (same size, different tokens)" if _describe(recorded[part]) == _describe(data.get(part))
                          else ""))
    return out


def forced_record(ckpt: dict, cfg, diffs: list[str]) -> dict:
    """What a forced resume keeps in history.extra["forced_resumes"]: after which epoch it resumed,
    the differences, and each differing setting's value in the checkpoint and in this run (so a
    run resumed with another seed records both seeds; its config records only this run's)."""
    saved, mine = ckpt.get("config") or {}, cfg.to_dict()
    changed = {k: {"checkpoint": saved[k], "this run": mine[k]} for k in mine
               if k in saved and saved[k] != mine[k] and k not in FREE_TO_CHANGE}
    return {"after_epoch": int(ckpt.get("epoch", 0)), "after_step": int(ckpt.get("global_step", 0)),
            "settings": changed, "differences": list(diffs)}
