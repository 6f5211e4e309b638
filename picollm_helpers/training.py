"""Training engine: the loss, evaluation, the training loop, checkpoints and run logs.

    history = train(model, cfg, train_ds, test_ds, tokenizer, name="transformer")
    plot_history(history)

Each run writes to `<cfg.output_dir>/<name>/`:

  loss_logs.json        {"format": "picollm.loss_logs/1", "name", "kind", "config": {...RunConfig},
                         "train": {"step": [1, 2, ...], "loss": [...]},          one entry per optimizer step
                         "test":  {"epoch": [1, ...], "step": [...], "loss": [...]}, one per epoch, full test set
                         "final_train_loss", "final_test_loss",
                         "wall_time_s", "train_time_s", "tokens_seen", "tokens_per_second", "extra": {...}}
  generation_logs.json  {"format": "picollm.generation_logs/1", "name", "prompt", "max_new_tokens",
                         "epochs": [{"epoch": 1, "samples": {"greedy": "...", "top_p=0.2": "...", ...}}, ...]}
  checkpoint.pt         latest end-of-epoch state (see save_checkpoint), loadable with weights_only=True

Losses are mean cross-entropy in nats per non-padding target token. `tokens_per_second` counts
non-padding tokens over the time spent in optimizer steps (evaluation and sampling excluded).
History.load(run_dir) reads the two JSON files back.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import distributed
from .files import atomic_write
from .config import IGNORE_INDEX, resolve_precision

CHECKPOINT_FORMAT = "picollm.checkpoint/1"
LOSS_LOGS_FORMAT = "picollm.loss_logs/1"
GENERATION_LOGS_FORMAT = "picollm.generation_logs/1"
_KIND_BY_CLASS = {"LSTMSeqModel": "lstm", "KGramMLPSeqModel": "kgram_mlp_seq",
                  "TransformerModel": "transformer"}


class TrainingDivergedError(RuntimeError):
    """The loss (or gradient norm) became NaN or infinite."""


# ----------------------------------------------------------------------------------------------
# History


@dataclass
class History:
    """What one training run produced. Plain data: it round-trips through JSON and checkpoints."""
    name: str = ""
    kind: str | None = None
    config: dict = field(default_factory=dict)
    train_loss: list = field(default_factory=list)   # [(global_step, loss)] one per optimizer step
    test_loss: list = field(default_factory=list)    # [(epoch, global_step, loss)] one per epoch
    generations: dict = field(default_factory=dict)  # {epoch: {"greedy": text, "top_p=0.2": text, ...}}
    wall_time: float = 0.0                           # seconds, whole run including eval and sampling
    train_time: float = 0.0                          # seconds spent in optimizer steps
    tokens_seen: int = 0                             # non-padding target tokens trained on
    extra: dict = field(default_factory=dict)        # lesson-specific records (step_callback results)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / self.train_time if self.train_time > 0 else 0.0

    @property
    def final_train_loss(self) -> float:
        """Mean training loss over the last 10 steps (one step alone is noisy)."""
        last = [loss for _, loss in self.train_loss[-10:]]
        return sum(last) / len(last) if last else float("nan")

    @property
    def final_test_loss(self) -> float:
        return self.test_loss[-1][2] if self.test_loss else float("nan")

    @property
    def steps(self) -> int:
        return self.train_loss[-1][0] if self.train_loss else 0

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "config": _plain(self.config),
                "train_loss": [[int(s), float(l)] for s, l in self.train_loss],
                "test_loss": [[int(e), int(s), float(l)] for e, s, l in self.test_loss],
                "generations": {str(e): dict(g) for e, g in self.generations.items()},
                "wall_time": float(self.wall_time), "train_time": float(self.train_time),
                "tokens_seen": int(self.tokens_seen), "extra": _plain(self.extra)}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(name=d.get("name", ""), kind=d.get("kind"), config=dict(d.get("config", {})),
                   train_loss=[(int(s), float(l)) for s, l in d.get("train_loss", [])],
                   test_loss=[(int(e), int(s), float(l)) for e, s, l in d.get("test_loss", [])],
                   generations={int(e): dict(g) for e, g in d.get("generations", {}).items()},
                   wall_time=float(d.get("wall_time", 0.0)), train_time=float(d.get("train_time", 0.0)),
                   tokens_seen=int(d.get("tokens_seen", 0)), extra=dict(d.get("extra", {})))

    def loss_logs(self) -> dict:
        """The loss_logs.json document (see the module docstring)."""
        return {"format": LOSS_LOGS_FORMAT, "name": self.name, "kind": self.kind,
                "config": _plain(self.config),
                "train": {"step": [int(s) for s, _ in self.train_loss],
                          "loss": [float(l) for _, l in self.train_loss]},
                "test": {"epoch": [int(e) for e, _, _ in self.test_loss],
                         "step": [int(s) for _, s, _ in self.test_loss],
                         "loss": [float(l) for _, _, l in self.test_loss]},
                "final_train_loss": _json_float(self.final_train_loss),
                "final_test_loss": _json_float(self.final_test_loss),
                "wall_time_s": self.wall_time, "train_time_s": self.train_time,
                "tokens_seen": self.tokens_seen, "tokens_per_second": self.tokens_per_second,
                "extra": _plain(self.extra)}

    def generation_logs(self) -> dict:
        """The generation_logs.json document (see the module docstring)."""
        return {"format": GENERATION_LOGS_FORMAT, "name": self.name,
                "prompt": self.config.get("prompt"), "max_new_tokens": self.config.get("max_new_tokens"),
                "epochs": [{"epoch": e, "samples": dict(self.generations[e])}
                           for e in sorted(self.generations)]}

    def save(self, run_dir) -> None:
        """Write loss_logs.json and generation_logs.json into run_dir (atomically)."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        for fname, doc in (("loss_logs.json", self.loss_logs()), ("generation_logs.json", self.generation_logs())):
            with atomic_write(run_dir / fname, "w") as f:
                json.dump(doc, f, indent=1, ensure_ascii=False)

    @classmethod
    def load(cls, run_dir) -> "History":
        """Read a run folder's loss_logs.json (and generation_logs.json if present)."""
        run_dir = Path(run_dir)
        path = run_dir / "loss_logs.json"
        if not path.exists():
            raise FileNotFoundError(f"no loss_logs.json in {run_dir}: pass the folder train() wrote "
                                    f"(<output_dir>/<name>)")
        logs = json.loads(path.read_text(encoding="utf-8"))
        h = cls(name=logs.get("name", ""), kind=logs.get("kind"), config=logs.get("config", {}),
                train_loss=list(zip(logs["train"]["step"], logs["train"]["loss"])),
                test_loss=list(zip(logs["test"]["epoch"], logs["test"]["step"], logs["test"]["loss"])),
                wall_time=logs.get("wall_time_s", 0.0), train_time=logs.get("train_time_s", 0.0),
                tokens_seen=logs.get("tokens_seen", 0), extra=logs.get("extra", {}))
        gen_path = run_dir / "generation_logs.json"
        if gen_path.exists():
            gens = json.loads(gen_path.read_text(encoding="utf-8"))
            h.generations = {int(g["epoch"]): dict(g["samples"]) for g in gens.get("epochs", [])}
        return h


def _json_float(x: float):
    return x if math.isfinite(x) else None


def _plain(obj):
    """Tensors and tuples -> numbers and lists, so a record survives JSON and weights_only loads."""
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ----------------------------------------------------------------------------------------------
# Loss


class _FusedLinearCE(torch.autograd.Function):
    """sum_i CE(h_i @ W.T + b, t_i), `chunk` rows at a time, never holding the (N, V) logits.

    The loss is a scalar, so the gradient of each chunk's logits, dCE/dlogits = softmax - onehot,
    is known as soon as that chunk's logits are. With grad enabled, forward therefore computes it
    chunk by chunk and folds it at once into grad_h (N, D), grad_W (V, D) and grad_b (V,), reusing
    one (chunk, V) buffer for every chunk; backward only scales the stored gradients by the
    incoming one. That is the plain path's three matmuls (logits, grad_h, grad_W) without its
    several (N, V) tensors (the "fused linear cross-entropy" of the Liger kernels). Without grad
    (evaluation) forward computes the loss alone.

    Softmax and loss are fp32. mm_dtype=torch.bfloat16 (what _loss_sum passes under bf16
    autocast) runs the three matmuls in bf16, as lm_head would under autocast; gradients are
    still accumulated in fp32. Backward can run once per forward (no retain_graph).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk, with_grad, mm_dtype):
        # h: (N, D) hidden rows that have a real target; targets: (N,) ids in [0, V)
        N, D = h.shape
        V = weight.shape[0]
        f32, dev = torch.float32, h.device
        mm_dtype = mm_dtype or f32
        with torch.autocast(device_type=dev.type, enabled=False):
            hq, wq = h.to(mm_dtype), weight.to(mm_dtype)
            bq = bias.to(mm_dtype) if bias is not None else None
            c = max(1, min(int(chunk), N))
            logits_buf = torch.empty(c, V, dtype=mm_dtype, device=dev)        # reused by every chunk
            f32_buf = logits_buf if mm_dtype == f32 else torch.empty(c, V, dtype=f32, device=dev)
            prob_buf = torch.empty(c, V, dtype=f32, device=dev)               # softmax, then p - onehot
            rows = torch.arange(c, device=dev)
            loss = torch.zeros((), dtype=f32, device=dev)
            if with_grad:
                new = torch.empty if N else torch.zeros                       # the first chunk writes them
                grad_h = torch.empty(N, D, dtype=f32, device=dev)
                grad_w = new(V, D, dtype=f32, device=dev)
                grad_b = new(V, dtype=f32, device=dev) if bias is not None else None
                low_buf = None if mm_dtype == f32 else torch.empty(c, V, dtype=mm_dtype, device=dev)
            for i in range(0, N, c):
                hc, tc = hq[i:i + c], targets[i:i + c]                    # (n, D), (n,)
                n = hc.shape[0]
                z = logits_buf[:n]
                if bq is not None:
                    torch.addmm(bq, hc, wq.t(), out=z)                   # (n, V) logits
                else:
                    torch.mm(hc, wq.t(), out=z)                          # (n, V) logits
                zf = z if mm_dtype == f32 else f32_buf[:n].copy_(z)
                p = torch.ops.aten._softmax.out(zf, -1, False, out=prob_buf[:n])  # (n, V)
                # CE = -log p_target. Where p_target underflows toward 0 its log loses precision:
                # those rows (a loss above 69 nats: rare) take logsumexp(z) - z_target instead.
                p_t = p.gather(1, tc[:, None]).squeeze(1)                # (n,)
                nll = -p_t.log()
                tiny = p_t < 1e-30
                if bool(tiny.any()):
                    bad = tiny.nonzero().squeeze(1)
                    nll[bad] = torch.logsumexp(zf[bad], dim=-1) - zf[bad, tc[bad]]
                loss += nll.sum()
                if not with_grad:
                    continue
                p[rows[:n], tc] -= 1.0                                   # dCE/dlogits = p - onehot
                if mm_dtype == f32:
                    torch.mm(p, wq, out=grad_h[i:i + n])                 # (n, D)
                    if i == 0:
                        torch.mm(p.t(), hc, out=grad_w)                  # (V, D) = (V, n) @ (n, D)
                    else:
                        grad_w.addmm_(p.t(), hc)
                else:
                    d = low_buf[:n].copy_(p)
                    grad_h[i:i + n] = torch.mm(d, wq)
                    gw = torch.mm(d.t(), hc)                             # (V, D) in mm_dtype
                    grad_w.copy_(gw) if i == 0 else grad_w.add_(gw)
                if grad_b is not None:
                    torch.sum(p, dim=0, out=grad_b) if i == 0 else grad_b.add_(p.sum(dim=0))
        ctx.with_grad = with_grad
        if with_grad:
            ctx.grads = (grad_h, grad_w, grad_b)
            ctx.dtypes = (h.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        if not ctx.with_grad:
            raise RuntimeError("the fused loss was computed without gradients (under torch.no_grad()); "
                               "compute it with grad enabled to call backward()")
        if ctx.grads is None:
            raise RuntimeError("backward through the fused loss ran already: it keeps its gradients for "
                               "one backward pass (retain_graph=True is not supported); use loss_chunk_size=0")
        grads, ctx.grads = ctx.grads, None
        out = [None if (g is None or not need) else (g.mul_(grad_out) if g.dtype == dt else (g * grad_out).to(dt))
               for g, dt, need in zip(grads, ctx.dtypes, ctx.needs_input_grad[:3])]
        return (*out, None, None, None, None)


@torch.compiler.disable
def _fused_linear_ce(h, weight, bias, targets, chunk, with_grad, mm_dtype):
    # Under torch.compile the model around it is compiled; this loop of library matmuls runs as is.
    return _FusedLinearCE.apply(h, weight, bias, targets, chunk, with_grad, mm_dtype)


def _loss_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk_size: int = 0) -> torch.Tensor:
    """Summed next-token CE over the targets that are not IGNORE_INDEX (padding)."""
    if chunk_size and chunk_size > 0:
        if not (hasattr(model, "hidden") and isinstance(getattr(model, "lm_head", None), nn.Linear)):
            raise ValueError(f"loss_chunk_size={chunk_size} needs a model with .hidden() and an "
                             f".lm_head nn.Linear; {type(model).__name__} has not: set loss_chunk_size=0")
        hidden = model.hidden(x).flatten(0, 1)                           # (B*T, D)
        targets = y.flatten()                                            # (B*T,)
        keep = targets != IGNORE_INDEX
        # Padding rows never reach the output layer: their loss is masked anyway.
        hidden, targets = hidden[keep], targets[keep]                    # (N, D), (N,)
        head = model.lm_head
        with_grad = torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad
                                                 or (head.bias is not None and head.bias.requires_grad))
        dev = hidden.device.type
        mm_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        return _fused_linear_ce(hidden, head.weight, head.bias, targets, int(chunk_size), with_grad, mm_dtype)
    logits = model(x)                                                    # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk_size: int = 0) -> torch.Tensor:
    """Mean next-token cross-entropy over non-padding targets (y == -100 is masked).

    chunk_size=0: F.cross_entropy on the full (B, T, V) logits. chunk_size>0: model.hidden(x) then
    the output layer and CE `chunk_size` rows at a time (fused with their gradient, see
    _FusedLinearCE), never holding (B, T, V) logits; same value and gradients, less memory and
    time. Under bf16 autocast both paths run the output layer's matmuls in bf16.
    """
    n = (y != IGNORE_INDEX).sum()
    return _loss_sum(model, x, y, chunk_size) / n.clamp(min=1)


class _LossModule(nn.Module):
    """model + loss in one forward(), so DDP and torch.compile see the whole training computation."""

    def __init__(self, model: nn.Module, chunk_size: int):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, x, y):
        return _loss_sum(self.model, x, y, self.chunk_size)


# ----------------------------------------------------------------------------------------------
# Data order


def _collate(examples, pad_id: int):
    from .batching import collate_batch
    return collate_batch(examples, pad_id=pad_id)


def _pad_id(ds, tokenizer=None) -> int:
    """The id that pads x: the dataset's (its tokenizer's <|endoftext|>), else the tokenizer's."""
    from .tokenizer import EOT_ID
    pad = getattr(ds, "pad_id", None)
    return int(pad if pad is not None else getattr(tokenizer, "eot_token", EOT_ID))


def epoch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """Example indices of each global batch of an epoch: a function of (seed, epoch) only, so a
    resumed run sees the same batches. The last partial batch is dropped when there is a full one."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    n_batches = max(1, n // batch_size)
    return [perm[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]


def _steps_per_epoch(n: int, cfg) -> int:
    full = max(1, n // cfg.batch_size)
    return full if cfg.max_steps_per_epoch is None else min(full, cfg.max_steps_per_epoch)


def _lr_at(step: int, total: int, cfg) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then constant or cosine to lr/10."""
    lr = cfg.learning_rate
    warm = getattr(cfg, "warmup_steps", 0) or 0
    if step < warm:
        return lr * (step + 1) / warm
    if getattr(cfg, "lr_schedule", "constant") == "cosine":
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return lr


def _reads_losses_late(device: torch.device, step_callback) -> bool:
    """Whether train() reads each step's loss and gradient norm one step late. On a GPU, reading
    them at once (.item()) makes the CPU wait for the GPU three times a step, and the GPU then waits
    for the CPU to prepare the next batch; read late, a NaN stops training one step later. A
    step_callback gets the loss of its own step, so with one the loss is read at once."""
    return device.type == "cuda" and step_callback is None


def _autocast(device: torch.device, cfg):
    precision = resolve_precision(getattr(cfg, "precision", "fp32"), device)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _compile_or_eager(fn, name: str):
    """torch.compile(fn), falling back to fn itself (with a printed reason) if compiling fails,
    e.g. where no C compiler or Triton is installed."""
    compiled = torch.compile(fn)
    use = [compiled]

    def step(*args):
        try:
            return use[0](*args)
        except Exception as e:
            if use[0] is fn:
                raise
            print(f"[{name}] torch.compile failed here ({type(e).__name__}: {str(e).strip().splitlines()[0][:160]}); "
                  f"training without it (compile=False)")
            use[0] = fn
            return fn(*args)
    return step


# ----------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(model: nn.Module, test_ds, cfg) -> float:
    """Token-weighted mean CE over every non-padding target of test_ds, in its fixed order.

    Deterministic: the same weights give the same number. Under torchrun the batches are split
    across ranks and the sums added, so every rank returns the same value.
    """
    if test_ds is None or len(test_ds) == 0:
        raise ValueError("the test set is empty: set test_fraction > 0 (e.g. 0.1) to hold out test data")
    dist = distributed.info()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunk = getattr(cfg, "loss_chunk_size", 0) or 0
    pad_id = _pad_id(test_ds)
    loss_total, count = 0.0, 0                                          # python floats: float64 sums
    starts = range(0, len(test_ds), cfg.batch_size)
    for b, start in enumerate(starts):
        if b % dist.world_size != dist.rank:
            continue
        x, y = _collate([test_ds[i] for i in range(start, min(start + cfg.batch_size, len(test_ds)))], pad_id)
        x, y = x.to(device), y.to(device)
        with _autocast(device, cfg):
            loss_sum = _loss_sum(model, x, y, chunk)
        loss_total += loss_sum.item()
        count += int((y != IGNORE_INDEX).sum())
    if dist.enabled:
        total = distributed.all_reduce_sum(torch.tensor([loss_total, count], dtype=torch.float64, device=device))
        loss_total, count = total.tolist()
    model.train(was_training)
    return loss_total / max(count, 1)


# ----------------------------------------------------------------------------------------------
# Checkpoints


def model_kind(model: nn.Module) -> str | None:
    """'lstm' | 'kgram_mlp_seq' | 'transformer' for the kit's models (what build_model takes)."""
    return getattr(model, "kind", None) or _KIND_BY_CLASS.get(type(model).__name__)


def _vocab_size(model: nn.Module) -> int | None:
    v = getattr(model, "vocab_size", None)
    if v is None and isinstance(getattr(model, "lm_head", None), nn.Linear):
        v = model.lm_head.out_features
    return None if v is None else int(v)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]
    except ImportError:
        pass
    return state


def _set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def _config_dict(cfg) -> dict:
    if cfg is None:
        return {}
    return _plain(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))


def _tokenizer_record(tokenizer):
    """A CompactTokenizer's id map (dense id -> GPT-2 id), so its models decode after a reload."""
    to_base = getattr(tokenizer, "to_base", None)
    return {"kind": "compact", "gpt2_ids": to_base[:-1].clone()} if to_base is not None else None


def save_checkpoint(path, model: nn.Module, optimizer=None, cfg=None, kind: str | None = None,
                    history: History | None = None, *, epoch: int = 0, global_step: int = 0,
                    tokenizer=None) -> Path:
    """Write model (and optimizer, config, history, RNG) state to `path` atomically.

    The file holds only tensors and plain Python data, so torch.load(path, weights_only=True)
    reads it: {"format", "model_state", "optimizer_state", "config" (RunConfig.to_dict()), "kind",
    "vocab_size", "epoch", "global_step", "rng", "history" (History.to_dict()),
    "tokenizer" (None for GPT-2, or a CompactTokenizer's {"kind": "compact", "gpt2_ids"}), "torch_version"}.
    """
    path = Path(path)
    ckpt = {"format": CHECKPOINT_FORMAT,
            "model_state": model.state_dict(),
            "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
            "config": _config_dict(cfg),
            "kind": kind or model_kind(model),
            "vocab_size": _vocab_size(model),
            "epoch": int(epoch), "global_step": int(global_step),
            "rng": _rng_state(),
            "history": history.to_dict() if history is not None else None,
            "tokenizer": _tokenizer_record(tokenizer),
            "torch_version": str(torch.__version__)}
    with atomic_write(path, "wb") as f:
        torch.save(ckpt, f)
    return path


def _read_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}; pass the checkpoint.pt that train() "
                                f"wrote under <output_dir>/<name>/")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a pico-llm checkpoint (expected format {CHECKPOINT_FORMAT!r}); "
                         f"write it with save_checkpoint()")
    return ckpt


def load_checkpoint(path, map_location="cpu"):
    """Rebuild the model a checkpoint holds. Returns (model, info).

    info: {"config": RunConfig, "kind", "epoch", "global_step", "history": History | None,
    "tokenizer": the CompactTokenizer the model was trained with, or None (plain GPT-2: use
    get_tokenizer()), "optimizer_state", "rng", "path"}. Loading never unpickles arbitrary objects
    (weights_only=True).
    """
    from .config import RunConfig
    from .models import build_model

    ckpt = _read_checkpoint(path, map_location)
    if not ckpt.get("kind") or not ckpt.get("config"):
        raise ValueError(f"{path} lacks the model kind or config needed to rebuild the model; "
                         f"save it with save_checkpoint(path, model, cfg=cfg, kind=...)")
    cfg = RunConfig.from_dict(ckpt["config"])
    kwargs = {"vocab_size": ckpt["vocab_size"]} if ckpt.get("vocab_size") else {}
    model = build_model(ckpt["kind"], cfg, **kwargs)
    model.load_state_dict(ckpt["model_state"])
    model.to(map_location if map_location is not None else "cpu")
    history = History.from_dict(ckpt["history"]) if ckpt.get("history") else None
    tokenizer = None
    if (ckpt.get("tokenizer") or {}).get("kind") == "compact":
        from .tokenizer import CompactTokenizer, get_tokenizer
        tokenizer = CompactTokenizer(get_tokenizer(), ckpt["tokenizer"]["gpt2_ids"].tolist())
    info = {"config": cfg, "kind": ckpt["kind"], "epoch": ckpt["epoch"], "global_step": ckpt["global_step"],
            "history": history, "tokenizer": tokenizer, "optimizer_state": ckpt.get("optimizer_state"),
            "rng": ckpt.get("rng"), "path": str(path)}
    return model, info


# ----------------------------------------------------------------------------------------------
# Gradient records for lessons


def grad_norms_by_layer(model: nn.Module, per_parameter: bool = False) -> dict[str, float]:
    """L2 norm of the current gradients, grouped by layer ("blocks.3", "embedding", "lm_head").

    Call it from a step_callback (gradients of the step just taken, before clipping).
    per_parameter=True gives one entry per parameter name instead.
    """
    sq: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        parts = name.split(".")
        key = name if per_parameter else (".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0])
        sq[key] = sq.get(key, 0.0) + p.grad.detach().float().pow(2).sum().item()
    return {k: math.sqrt(v) for k, v in sq.items()}


# ----------------------------------------------------------------------------------------------
# Live plot (notebooks only)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


class _LivePlot:
    """Redraws the loss plot in one notebook output every `every` steps; a no-op elsewhere."""

    def __init__(self, every: int):
        self.every = every
        self.handle = None
        self.enabled = every > 0 and _in_notebook()

    def update(self, history: History, step: int, force: bool = False):
        if not self.enabled or (not force and step % self.every):
            return
        from IPython.display import Image, display
        from .plots import _history_figure, _png_bytes
        img = Image(data=_png_bytes(_history_figure(history, title=f"{history.name}: training (live)")))
        if self.handle is None:
            self.handle = display(img, display_id=True)
        else:
            self.handle.update(img)


# ----------------------------------------------------------------------------------------------
# Training loop


def _generate_samples(model, tokenizer, cfg, epoch: int) -> dict[str, str]:
    """Greedy plus one sample per cfg.top_p_values from cfg.prompt: the report's tables."""
    from .sampling import generate

    samples = {"greedy": generate(model, tokenizer, cfg.prompt, cfg.max_new_tokens, greedy=True, seed=cfg.seed)}
    for p in cfg.top_p_values:
        samples[f"top_p={float(p)}"] = generate(model, tokenizer, cfg.prompt, cfg.max_new_tokens,
                                                greedy=False, top_p=float(p), seed=cfg.seed + epoch)
    return {k: getattr(g, "text", g) for k, g in samples.items()}  # prompt + continuation, as the report


def _check_vocab(model, train_ds, tokenizer) -> None:
    """Model, data and tokenizer must agree on the vocabulary (compact_vocab changes it)."""
    model_v, data_v = _vocab_size(model), getattr(train_ds, "vocab_size", None)
    tok_v = getattr(tokenizer, "n_vocab", None)
    if model_v is not None and data_v is not None and model_v != data_v:
        raise ValueError(f"the model has vocab_size={model_v} but the data uses {data_v} token ids "
                         f"(compact_vocab changes it): build the model with "
                         f"build_model(kind, cfg, vocab_size=train_ds.vocab_size)")
    if model_v is not None and tok_v is not None and model_v != tok_v:
        raise ValueError(f"the tokenizer has {tok_v} ids but the model has vocab_size={model_v}: pass the "
                         f"tokenizer the data was made with, train_ds.tokenizer")


def _resolve_device(cfg) -> torch.device:
    from .config import resolve_device
    return resolve_device(cfg.device_id)


def make_optimizer(model: nn.Module, cfg, device: torch.device) -> torch.optim.Optimizer:
    """The AdamW that train() uses. On CPU and CUDA it is torch's fused kernel: one pass over each
    parameter instead of about ten elementwise ops, which makes the optimizer step about 5x faster on
    a CPU (python -m picollm_helpers.bench measures the whole training step); same update rule."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate,
                             weight_decay=getattr(cfg, "weight_decay", 0.0),
                             fused=torch.device(device).type in ("cpu", "cuda") or None)


def train(model: nn.Module, cfg, train_ds, test_ds, tokenizer=None, *, name: str | None = None,
          live_plot: bool | int = False, resume_from=None, checkpoint_every_epoch: bool = True,
          step_callback=None, save: bool = True) -> History:
    """Train `model` on train_ds for cfg.epochs epochs; returns a History.

    Each epoch takes min(cfg.max_steps_per_epoch, len(train_ds) // batch_size) AdamW steps over
    batches drawn in an order fixed by (cfg.seed, epoch), then measures the loss on the whole
    test set and, given a tokenizer, samples from cfg.prompt greedily and at each cfg.top_p_values.
    Results go to <cfg.output_dir>/<name>/ (logs each epoch, checkpoint.pt each epoch or at the
    end) unless save=False.

    live_plot: True (or N) redraws a loss plot every 25 (or N) steps in a notebook.
    tokenizer: for the samples; None uses train_ds.tokenizer when make_datasets attached one.
    resume_from: a checkpoint.pt of this run; training continues after its epoch with the same
      batches and RNG states, so the losses equal those of an uninterrupted run.
    step_callback(step, model, loss): called after each backward pass, before clipping and the
      optimizer step (so .grad holds this step's raw gradients). A dict it returns is appended,
      with "step", to history.extra["callback"].
    Raises TrainingDivergedError when the loss or gradient norm becomes NaN or infinite.
    """
    if tokenizer is None:
        tokenizer = getattr(train_ds, "tokenizer", None)    # make_datasets attaches the one it used
    _check_vocab(model, train_ds, tokenizer)
    dist, dist_device = distributed.setup(cfg.device_id)
    main = dist.is_main
    device = dist_device or _resolve_device(cfg)
    kind = model_kind(model)
    name = name or kind or type(model).__name__
    run_dir = Path(cfg.output_dir) / name
    model.to(device)

    optimizer = make_optimizer(model, cfg, device)
    history = History(name=name, kind=kind, config=_config_dict(cfg))
    start_epoch, global_step = 1, 0
    if resume_from is not None:
        ckpt = _read_checkpoint(resume_from, map_location="cpu")  # load_state_dict moves to device
        model.load_state_dict(ckpt["model_state"])
        if ckpt.get("optimizer_state"):
            optimizer.load_state_dict(ckpt["optimizer_state"])
        if ckpt.get("history"):
            history = History.from_dict(ckpt["history"])
            history.config = _config_dict(cfg)
        start_epoch, global_step = ckpt["epoch"] + 1, ckpt["global_step"]
        _set_rng_state(ckpt["rng"])
        if main:
            print(f"[{name}] resumed from {resume_from} after epoch {ckpt['epoch']} (step {global_step})")
    else:
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

    loss_module = _LossModule(model, getattr(cfg, "loss_chunk_size", 0) or 0)
    step_fn = loss_module
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        step_fn = DDP(loss_module, device_ids=[device.index] if device.type == "cuda" else None)
    if getattr(cfg, "compile", False):
        step_fn = _compile_or_eager(step_fn, name)
    if main and getattr(cfg, "precision", "fp32") == "auto":
        print(f"[{name}] precision auto: {resolve_precision('auto', device)} on {device}")

    n_train = len(train_ds)
    if n_train < dist.world_size:
        raise ValueError(f"the training set has {n_train} examples, fewer than the {dist.world_size} "
                         f"processes: use more data or fewer processes")
    steps_per_epoch = _steps_per_epoch(n_train, cfg)
    total_steps = cfg.epochs * steps_per_epoch
    has_test = test_ds is not None and len(test_ds) > 0
    pad_id = _pad_id(train_ds, tokenizer)
    live = _LivePlot((25 if live_plot is True else int(live_plot)) if (live_plot and main) else 0)
    run_start = time.time() - history.wall_time

    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        batches = epoch_order(n_train, cfg.batch_size, cfg.seed, epoch)[:steps_per_epoch]
        bar = tqdm(batches, desc=f"{name} epoch {epoch}/{cfg.epochs}", disable=not main, dynamic_ncols=True)
        epoch_losses = []
        late = _reads_losses_late(device, step_callback)
        pending = None  # with `late`: (step, loss, gradient norm) of a step still on the GPU

        def finite(step, what, value):
            if not math.isfinite(value):
                raise TrainingDivergedError(_diverged_message(name, epoch, step, what, value, cfg))
            return value

        def record(step, loss_value):
            history.train_loss.append((step, loss_value))
            epoch_losses.append(loss_value)
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            live.update(history, step)

        def settle(step, loss_t, norm_t):
            """Read a step's loss and gradient norm, stop on NaN/inf, record the loss."""
            loss_value = finite(step, "loss", loss_t.item())
            if norm_t is not None:
                finite(step, "gradient norm", norm_t.item())
            record(step, loss_value)

        for idx in bar:
            t0 = time.time()
            shard = idx.tensor_split(dist.world_size)[dist.rank]     # this rank's part of the global batch
            x, y = _collate([train_ds[int(i)] for i in shard], pad_id)  # (b, T), (b, T)
            n_tok = int((y != IGNORE_INDEX).sum())                     # counted on the CPU: no GPU wait
            if dist.enabled:                                            # global non-padding targets
                n_tok = int(distributed.all_reduce_sum(torch.tensor(n_tok, device=device)).item())
            x, y = x.to(device), y.to(device)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(global_step, total_steps, cfg)
            global_step += 1

            with _autocast(device, cfg):
                loss_sum = step_fn(x, y)
            # DDP averages gradients over ranks: scaling by world/n_tok makes them the gradient of
            # the global token-mean loss, exactly what one process with the whole batch computes.
            loss = loss_sum * (dist.world_size / max(n_tok, 1))
            loss_t = distributed.all_reduce_sum(loss_sum.detach().float().clone()) / max(n_tok, 1)
            if not late:  # stop before a NaN loss is backpropagated
                loss_value = finite(global_step, "loss", loss_t.item())

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if step_callback is not None:
                extra = step_callback(global_step, model, loss_value)
                if isinstance(extra, dict):
                    history.extra.setdefault("callback", []).append({"step": global_step, **_plain(extra)})
            norm = None
            if cfg.grad_clip and cfg.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                if not late:
                    finite(global_step, "gradient norm", norm.item())
            optimizer.step()
            history.tokens_seen += n_tok
            if not late:
                record(global_step, loss_value)
            else:
                # This step is queued on the GPU; reading the previous one's numbers now waits only
                # for work that is done or nearly done, so the GPU never idles while Python works.
                if pending is not None:
                    settle(*pending)
                pending = (global_step, loss_t, norm)
            history.train_time += time.time() - t0
        if pending is not None:
            t0 = time.time()
            settle(*pending)
            history.train_time += time.time() - t0
        bar.close()

        msg = f"[{name}] epoch {epoch}/{cfg.epochs}: train loss {sum(epoch_losses) / len(epoch_losses):.4f}"
        if has_test:
            test = evaluate(model, test_ds, cfg)
            history.test_loss.append((epoch, global_step, test))
            msg += f", test loss {test:.4f}"
        if tokenizer is not None and main:
            history.generations[epoch] = _generate_samples(model, tokenizer, cfg, epoch)
        history.wall_time = time.time() - run_start
        if main:
            print(f"{msg} ({history.tokens_per_second:,.0f} tok/s)")
            if epoch in history.generations:
                print(f"[{name}] greedy: {history.generations[epoch]['greedy']!r}")
            live.update(history, global_step, force=True)
            if save:
                history.save(run_dir)
                if checkpoint_every_epoch or epoch == cfg.epochs:
                    save_checkpoint(run_dir / "checkpoint.pt", model, optimizer, cfg, kind, history,
                                    epoch=epoch, global_step=global_step, tokenizer=tokenizer)
        distributed.barrier()

    history.wall_time = time.time() - run_start
    if main and save:
        history.save(run_dir)
    return history


def _diverged_message(name, epoch, step, what, value, cfg) -> str:
    return (f"[{name}] training diverged at step {step} (epoch {epoch}): the {what} is {value}. "
            f"Lower learning_rate (now {cfg.learning_rate:g}), enable gradient clipping "
            f"(grad_clip=1.0; now {cfg.grad_clip}), or train in fp32 (precision='fp32'; now {cfg.precision!r}).")
