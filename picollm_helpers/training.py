"""The training loop: `train`, `evaluate`, the data order and the learning-rate schedule.

    history = train(model, cfg, train_ds, test_ds, tokenizer, name="transformer")
    plot_history(history)

One epoch is min(cfg.max_steps_per_epoch, len(train_ds) // batch_size) AdamW steps over batches
in an order fixed by (cfg.seed, epoch), then the loss on the test set. train() itself is that
loop; its side jobs (the progress bar, the per-epoch lines, the report's samples from cfg.prompt,
the live plot, the logs (history.py) and checkpoint (checkpoint.py) in `<cfg.output_dir>/<name>/`,
the model cache) are reporters (reporters.py) it calls at the start, after each step, after each
epoch and at the end. `cache=True` reuses a model trained earlier with the identical config, data,
initial weights and seed (model_cache.py). The loss itself lives in loss.py.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed, model_cache, resume
from .batching import collate_batch
from .checkpoint import config_dict, read_checkpoint, save_checkpoint, set_rng_state
from .config import IGNORE_INDEX, resolve_device, resolve_precision
from .errors import CheckpointError, PicoLLMError, TrainingDivergedError
from .history import History, plain
from .loss import LossModule, fused_linear_ce, loss_sum
from .models import model_kind, vocab_size_of
from .progress import reporting_mode
from .reporters import RunState, emit, reporters_for
from .timing import phase
from .tokenizer import EOT_ID, check_prompt, vocab_name

# ----------------------------------------------------------------------------------------------
# Data order and schedule


def _pad_id(ds, tokenizer=None) -> int:
    """The id that pads x: the dataset's (its tokenizer's <|endoftext|>), else the tokenizer's."""
    pad = getattr(ds, "pad_id", None)
    return int(pad if pad is not None else getattr(tokenizer, "eot_token", EOT_ID))


def epoch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """Example indices of each global batch of an epoch: a function of (seed, epoch) only, so a
    resumed run sees the same batches. The last partial batch is dropped when there is a full one."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    n_batches = max(1, n // batch_size)
    return [perm[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]


def steps_per_epoch(n: int, cfg) -> int:
    """Optimizer steps train() takes per epoch on n examples: full batches, capped by max_steps_per_epoch."""
    full = max(1, n // cfg.batch_size)
    return full if cfg.max_steps_per_epoch is None else min(full, cfg.max_steps_per_epoch)


def lr_at(step: int, total: int, cfg) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then constant or cosine to lr/10."""
    lr = cfg.learning_rate
    warm = cfg.warmup_steps
    if step < warm:
        return lr * (step + 1) / warm
    if cfg.lr_schedule == "cosine":
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return lr


def _reads_losses_late(device: torch.device, step_callback) -> bool:
    """Whether train() reads each step's loss and gradient norm one step late. On a GPU, reading
    them at once (.item()) makes the CPU wait for the GPU three times a step, and the GPU then waits
    for the CPU to prepare the next batch; read late, a NaN stops training one step later. A
    step_callback gets the loss of its own step, so with one the loss is read at once."""
    return device.type == "cuda" and step_callback is None


def _host_copies(device: torch.device, *tensors):
    """(host copies of tensors, wait). On a GPU the copies are queued behind the work that computes
    the tensors, and wait() blocks until that work and the copies are done, not for anything queued
    later (tensor.item() would wait for the whole stream). Elsewhere: the tensors, and a wait that
    returns at once."""
    if device.type != "cuda":
        return tensors, lambda: None
    host = tuple(None if t is None else t.detach().to("cpu", non_blocking=True) for t in tensors)
    done = torch.cuda.Event()
    done.record()
    return host, done.synchronize


def autocast(device: torch.device, cfg):
    precision = resolve_precision(cfg.precision, device)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def compile_settings(cfg, device: torch.device) -> dict:
    """torch.compile's keywords for train()'s step. On a CUDA GPU with length buckets the batches
    come in at most ceil(block_size / length_bucket) shapes, so each can be compiled for its exact
    shape (dynamic=False) and captured as a CUDA graph (mode "reduce-overhead"): the whole forward
    and backward replayed as one launch. Without buckets every batch length would capture a new
    graph, so the default mode is used."""
    if device.type == "cuda" and cfg.length_bucket > 0:
        return {"mode": "reduce-overhead", "dynamic": False}
    return {}


def _compile_or_eager(fn, name: str, n_shapes: int = 1, **settings):
    """torch.compile(fn, **settings), falling back to fn itself (with a printed reason) if compiling
    fails, e.g. where no C compiler or Triton is installed. n_shapes: how many batch shapes the
    run will see, each compiled once (torch recompiles at most recompile_limit times per function)."""
    if settings.get("dynamic") is False:
        import torch._dynamo.config as dynamo_config
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, n_shapes + 1)
    compiled = torch.compile(fn, **settings)
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

# What one evaluate() batch may take in memory: its (B, T, V) logits (without the fused loss), one
# block's activations and the attention scores, estimated at block_size positions per example.
EVAL_MEMORY_BYTES = 256 * 2**20


def eval_batch_size(model: nn.Module, cfg) -> int:
    """Test examples evaluate() runs through the model at once: the most whole cfg.batch_size
    batches that fit EVAL_MEMORY_BYTES, at least one. Larger matmuls and fewer Python round trips
    make evaluation cheaper; training's batch size was chosen for the optimizer, not for this."""
    logits = 0 if cfg.loss_chunk_size > 0 else 2 * (vocab_size_of(model) or 50257)  # logits + log-softmax
    per_position = 4 * (logits + 16 * cfg.embed_size + cfg.n_heads * cfg.block_size)  # fp32 bytes
    batches = EVAL_MEMORY_BYTES // (per_position * cfg.block_size * cfg.batch_size)
    return cfg.batch_size * max(1, batches)


def _loss_sums(model: nn.Module, x: torch.Tensor, y: torch.Tensor, per: int, chunk: int) -> list[torch.Tensor]:
    """The summed loss of each `per` consecutive rows of (x, y), from one forward pass over all rows.

    Right padding changes nothing: every model here is causal, so a real position never sees the
    padding after it, and padded targets are masked. With chunk > 0 the output layer and its loss
    are loss.py's fused, chunked ones (never the (B, T, V) logits); else F.cross_entropy on them."""
    rows = range(0, x.shape[0], per)
    if chunk <= 0:
        logits = model(x)                                                  # (B, T, V)
        return [F.cross_entropy(logits[i:i + per].flatten(0, 1), y[i:i + per].flatten(),
                                ignore_index=IGNORE_INDEX, reduction="sum") for i in rows]
    head = getattr(model, "lm_head", None)
    if not (hasattr(model, "hidden") and isinstance(head, nn.Linear)):
        return [loss_sum(model, x[i:i + per], y[i:i + per], chunk) for i in rows]   # says what to set
    hidden = model.hidden(x)                                               # (B, T, D)
    dev = hidden.device.type
    mm_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
    sums = []
    for i in rows:
        h, t = hidden[i:i + per].flatten(0, 1), y[i:i + per].flatten()     # (b*T, D), (b*T,)
        keep = t != IGNORE_INDEX                                           # padding never reaches the head
        sums.append(fused_linear_ce(h[keep], head.weight, head.bias, t[keep], chunk, False, mm_dtype))
    return sums


@phase("evaluate")
def evaluate(model: nn.Module, test_ds, cfg, batch_losses: list | None = None, examples=None) -> float:
    """Token-weighted mean CE over every non-padding target of test_ds, in its fixed order.

    Deterministic: the same weights give the same number. Runs under torch.inference_mode, several
    test batches per forward pass (eval_batch_size), with the fused loss when cfg.loss_chunk_size > 0.
    Under torchrun the passes are split across ranks and the sums added, so every rank returns the
    same value. batch_losses: a list to which the mean loss of each test batch (cfg.batch_size
    examples, in order) is appended. examples: indices of the test examples to use, in order
    (train() passes cfg.eval_subset's); None: all of them.
    """
    if test_ds is None or len(test_ds) == 0:
        raise ValueError("the test set is empty: set test_fraction > 0 (e.g. 0.1) to hold out test data")
    order = list(range(len(test_ds))) if examples is None else [int(i) for i in examples]
    dist = distributed.info()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pad_id = _pad_id(test_ds)
    per = cfg.batch_size
    n_batches = -(-len(order) // per)
    k = eval_batch_size(model, cfg) // per                             # test batches per forward pass
    sums = torch.zeros(n_batches, dtype=torch.float64, device=device)  # per test batch: float64, as before
    counts = torch.zeros(n_batches, dtype=torch.float64)
    with torch.inference_mode(), autocast(device, cfg):
        for p, first in enumerate(range(0, n_batches, k)):
            if p % dist.world_size != dist.rank:
                continue
            part = order[first * per:(first + k) * per]
            x, y = collate_batch([test_ds[i] for i in part], pad_id=pad_id)   # (b, T), (b, T)
            last = first + -(-len(part) // per)
            targets = (y != IGNORE_INDEX).sum(1)                              # (b,) counted on the CPU
            counts[first:last] = torch.stack([c.sum() for c in targets.split(per)]).double()
            x, y = x.to(device), y.to(device)
            for b, s in enumerate(_loss_sums(model, x, y, per, cfg.loss_chunk_size)):
                sums[first + b] = s
    if dist.enabled:   # each rank filled its own batches: adding the tensors completes them
        sums, counts = distributed.all_reduce_sum(torch.stack([sums, counts.to(device)])).tolist()
    else:
        sums, counts = sums.tolist(), counts.tolist()
    model.train(was_training)
    if batch_losses is not None:
        batch_losses.extend(s / max(c, 1) for s, c in zip(sums, counts))
    return sum(sums) / max(sum(counts), 1)


def eval_subset_examples(n_test: int, cfg) -> list[int] | None:
    """The test examples train() evaluates before the last epoch: cfg.eval_subset of them, drawn
    once from cfg.seed and kept in the test set's order, so every epoch is tested on the same
    examples. None (the whole set) when eval_subset is 0 or not smaller than the test set."""
    if not cfg.eval_subset or cfg.eval_subset >= n_test:
        return None
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7_919)   # apart from the epochs' batch orders
    return sorted(torch.randperm(n_test, generator=g)[:cfg.eval_subset].tolist())


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
# Training loop


def _check_vocab(model, train_ds, tokenizer) -> None:
    """Model, data and tokenizer must agree on the vocabulary (compact_vocab changes it)."""
    model_v, data_v = vocab_size_of(model), getattr(train_ds, "vocab_size", None)
    tok_v = getattr(tokenizer, "n_vocab", None)
    if model_v is not None and data_v is not None and model_v != data_v:
        raise PicoLLMError(f"the model has vocab_size={model_v} but the data uses {data_v} token ids "
                         f"(compact_vocab changes it): build the model with "
                         f"build_model(kind, cfg, vocab_size=train_ds.vocab_size)")
    if model_v is not None and tok_v is not None and model_v != tok_v:
        raise PicoLLMError(f"the tokenizer has {tok_v} ids but the model has vocab_size={model_v}: pass the "
                         f"tokenizer the data was made with, train_ds.tokenizer")


def make_optimizer(model: nn.Module, cfg, device: torch.device) -> torch.optim.Optimizer:
    """The AdamW that train() uses. On CPU and CUDA it is torch's fused kernel: one pass over each
    parameter instead of about ten elementwise ops, which makes the optimizer step about 5x faster on
    a CPU (python -m picollm_helpers.bench measures the whole training step); same update rule."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate,
                             weight_decay=cfg.weight_decay,
                             fused=torch.device(device).type in ("cpu", "cuda") or None)


@phase("train")
def train(model: nn.Module, cfg, train_ds, test_ds, tokenizer=None, *, name: str | None = None,
          live_plot: bool | int = False, resume_from=None, checkpoint_every_epoch: bool = True,
          step_callback=None, save: bool = True, cache: bool = False, force_resume: bool = False,
          reporting: str = "auto", reporters=()) -> History:
    """Train `model` on train_ds for cfg.epochs epochs; returns a History.

    Each epoch takes min(cfg.max_steps_per_epoch, len(train_ds) // batch_size) AdamW steps over
    batches drawn in an order fixed by (cfg.seed, epoch), then measures the loss on the test set
    (with cfg.eval_subset: on that many fixed examples, the whole set after the last epoch) and,
    given a tokenizer, samples from cfg.prompt greedily and at each cfg.top_p_values.
    Results go to <cfg.output_dir>/<name>/ (logs each epoch, checkpoint.pt each epoch or at the
    end) unless save=False.

    reporting: how much it prints (progress.reporting_mode): "notebook" one live bar for the whole
      run and a one-line summary; "terminal" the bar with a line per epoch above it; "log" a line
      per epoch and the summary, no bar (for a log file or CI); "auto" (default) picks notebook in
      a Jupyter kernel, terminal when stdout is a terminal, else log. Every epoch's losses and
      samples are in the returned History whatever the mode.
    live_plot: True (or N) redraws a loss plot every 25 (or N) steps in a notebook.
    tokenizer: for the samples; None uses train_ds.tokenizer when make_datasets attached one.
    resume_from: a checkpoint.pt of this run; training continues after its epoch with the same
      batches and RNG states, so the losses equal those of an uninterrupted run. A checkpoint of
      another model, config, data, vocabulary, seed or schedule is refused (CheckpointError,
      naming each difference) unless force_resume=True, which resumes and prints the differences.
    step_callback(step, model, loss): called after each backward pass, before clipping and the
      optimizer step (so .grad holds this step's raw gradients). A dict it returns is appended,
      with "step", to history.extra["callback"].
    cache: reuse the model a call with the identical config, data, initial weights, seed and name
      trained before (saying so and when, in one line), instead of training; otherwise train and
      keep the result for next time. A cached run does not call step_callback again: what it
      returned then is in history.extra["callback"].
    reporters: more reporters (reporters.py), called after train()'s own at each event.
    Raises TrainingDivergedError when the loss or gradient norm becomes NaN or infinite.
    """
    mode = reporting_mode(reporting)
    if tokenizer is None:
        tokenizer = getattr(train_ds, "tokenizer", None)    # make_datasets attaches the one it used
    name = name or model_kind(model) or type(model).__name__
    _check_vocab(model, train_ds, tokenizer)
    if tokenizer is not None:   # the samples after each epoch need it: fail now, not after an epoch
        check_prompt(tokenizer, cfg.prompt, who=f"[{name}] ")
        model.vocab_name = vocab_name(tokenizer)   # generate() refuses another vocabulary's tokenizer
    dist, dist_device = distributed.setup(cfg.device_id)
    device = dist_device or resolve_device(cfg.device_id)
    key = None
    if cache:
        if resume_from is not None or dist.enabled:
            raise ValueError("cache=True trains from scratch in one process: drop resume_from, or "
                             "run without torchrun, or pass cache=False")
        key = model_cache.cache_key(model, cfg, train_ds, test_ds, tokenizer, name)
        cached = model_cache.load(model, key, name)
        if cached is not None:
            model.to(device)
            if save:
                cached.save(Path(cfg.output_dir) / name)
            return cached
    run = _start(model, cfg, train_ds, test_ds, tokenizer, name, device, dist, resume_from, force_resume, save)
    reps = reporters_for(run, mode, live_plot=live_plot, checkpoint_every_epoch=checkpoint_every_epoch,
                         cache_key=key, extra=reporters, write_checkpoint=save_checkpoint) if dist.is_main else []
    steps = _Steps(run, train_ds, device, dist, step_callback,
                   on_step=lambda step, loss: emit(reps, "on_step", run, step, loss))

    emit(reps, "on_start", run)
    for epoch in range(run.start_epoch, cfg.epochs + 1):
        run.epoch = epoch
        model.train()
        for idx in epoch_order(len(train_ds), cfg.batch_size, cfg.seed, epoch)[:run.steps_per_epoch]:
            steps.take(idx)                 # one AdamW step on this global batch
        steps.end_epoch()                   # the epoch's mean loss, time and tokens into the history
        if run.test_size:
            _test(run, test_ds)
        emit(reps, "on_epoch_end", run)     # samples, printing, plot, checkpoint and logs
        distributed.barrier()
    run.history.wall_time = run.elapsed()
    emit(reps, "on_end", run)               # bar closed, logs, model cache, the summary line
    return run.history


def _start(model, cfg, train_ds, test_ds, tokenizer, name, device, dist, resume_from, force_resume,
           save) -> RunState:
    """The run's state before its first step: the model on its device, its optimizer and History,
    fresh or restored from resume_from (checked against this run), and the RNGs seeded."""
    model.to(device)
    kind = model_kind(model)
    run_dir = Path(cfg.output_dir) / name
    optimizer = make_optimizer(model, cfg, device)
    history = History(name=name, kind=kind, config=config_dict(cfg))
    start_epoch, global_step = 1, 0
    data = resume.data_record(train_ds, test_ds, tokenizer) if save or resume_from is not None else None
    if resume_from is not None:
        ckpt = read_checkpoint(resume_from, map_location="cpu")  # load_state_dict moves to device
        diffs = resume.differences(ckpt, cfg, kind, data)
        if diffs and not force_resume:
            raise CheckpointError(f"[{name}] {resume_from} was trained on a different run: " + "; ".join(diffs)
                                  + ". Resume with the same settings, train afresh (no --resume), or pass "
                                    "--force (force_resume=True) to resume anyway.")
        if diffs and dist.is_main:
            print(f"[{name}] resuming anyway (force): " + "; ".join(diffs))
        try:
            model.load_state_dict(ckpt["model_state"])
        except RuntimeError as e:
            raise CheckpointError(f"[{name}] the weights in {resume_from} do not fit this model "
                                  f"({str(e).splitlines()[0][:200]}): resume with the model settings it was "
                                  f"trained with, or train afresh.") from None
        if ckpt.get("optimizer_state"):
            optimizer.load_state_dict(ckpt["optimizer_state"])
        if ckpt.get("history"):
            history = History.from_dict(ckpt["history"])
            history.config = config_dict(cfg)
        if diffs:   # the config now says this run's values: keep the checkpoint's beside them
            history.extra.setdefault("forced_resumes", []).append(resume.forced_record(ckpt, cfg, diffs))
        start_epoch, global_step = ckpt["epoch"] + 1, ckpt["global_step"]
        set_rng_state(ckpt["rng"])
        if dist.is_main:
            print(f"[{name}] resumed from {resume_from} after epoch {ckpt['epoch']} (step {global_step})")
            if save:   # logs written after this checkpoint (a crash between the two) describe lost work
                history.save(run_dir)
    else:
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
    if len(train_ds) < dist.world_size:
        raise ValueError(f"the training set has {len(train_ds)} examples, fewer than the {dist.world_size} "
                         f"processes: use more data or fewer processes")
    test_size = len(test_ds) if test_ds is not None else 0
    return RunState(name=name, kind=kind, cfg=cfg, model=model, optimizer=optimizer, history=history,
                    tokenizer=tokenizer, run_dir=run_dir, save=save and dist.is_main, data=data,
                    steps_per_epoch=steps_per_epoch(len(train_ds), cfg), test_size=test_size,
                    subset=eval_subset_examples(test_size, cfg), start_epoch=start_epoch,
                    global_step=global_step, started=time.time() - history.wall_time)


def _test(run: RunState, test_ds) -> None:
    """The epoch's test loss into the history: on eval_subset's examples, the whole set at the last epoch."""
    examples = None if run.last_epoch else run.subset
    batch_losses = []
    loss = evaluate(run.model, test_ds, run.cfg, batch_losses, examples=examples)
    run.history.test_loss.append((run.epoch, run.global_step, loss))
    run.history.test_batch_losses[run.epoch] = batch_losses
    if examples is not None:
        run.history.test_subset[run.epoch] = len(examples)


class _Steps:
    """train()'s optimizer steps: each global batch through the loss (DDP and torch.compile
    around it when asked), backward, step_callback, clipping, AdamW; each step's loss recorded,
    NaN or inf stopped, the epoch's time and tokens counted."""

    def __init__(self, run: RunState, train_ds, device, dist, step_callback, on_step):
        self.run, self.cfg, self.train_ds, self.device, self.dist = run, run.cfg, train_ds, device, dist
        self.step_callback = step_callback
        self.on_step = on_step          # (step, loss) once a step's loss is read: the reporters' on_step
        self.pad_id = _pad_id(train_ds, run.tokenizer)
        # On a GPU each step's loss is read one step late (see _reads_losses_late).
        self.late = _reads_losses_late(device, step_callback)
        self.pending = None   # with `late`: (step, loss, gradient norm, wait) of a step still on the GPU
        self.losses, self.time, self.tokens = [], 0.0, 0
        cfg, name, main = self.cfg, run.name, dist.is_main
        step_fn = LossModule(run.model, cfg.loss_chunk_size)
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP
            step_fn = DDP(step_fn, device_ids=[device.index] if device.type == "cuda" else None)
        self.cuda_graphs = False
        if cfg.compile:
            settings = compile_settings(cfg, device)
            self.cuda_graphs = settings.get("mode") == "reduce-overhead"
            n_shapes = -(-cfg.block_size // cfg.length_bucket) if cfg.length_bucket else cfg.block_size
            step_fn = _compile_or_eager(step_fn, name, n_shapes, **settings)
            if main and settings:
                print(f"[{name}] torch.compile {settings}: length_bucket={cfg.length_bucket} gives at most "
                      f"{n_shapes} batch shapes")
        if main and cfg.precision == "auto":
            print(f"[{name}] precision auto: {resolve_precision('auto', device)} on {device}")
        self.step_fn = step_fn

    def finite(self, step, what, value):
        if not math.isfinite(value):
            raise TrainingDivergedError(_diverged_message(self.run.name, self.run.epoch, step, what, value, self.cfg))
        return value

    def record(self, step, loss_value):
        self.run.history.train_loss.append((step, loss_value))
        self.losses.append(loss_value)
        self.on_step(step, loss_value)

    def settle(self, step, loss_t, norm_t, wait):
        """Read a step's loss and gradient norm, stop on NaN/inf; (step, loss) to record."""
        wait()
        loss_value = self.finite(step, "loss", loss_t.item())
        if norm_t is not None:
            self.finite(step, "gradient norm", norm_t.item())
        return step, loss_value

    def take(self, idx: torch.Tensor) -> None:
        """One optimizer step on the global batch `idx` (example indices)."""
        run, cfg, dist, device = self.run, self.cfg, self.dist, self.device
        t0 = time.time()
        shard = idx.tensor_split(dist.world_size)[dist.rank]     # this rank's part of the global batch
        x, y = collate_batch([self.train_ds[int(i)] for i in shard], pad_id=self.pad_id,
                             length_bucket=cfg.length_bucket, max_len=cfg.block_size)  # (b, T), (b, T)
        n_tok = int((y != IGNORE_INDEX).sum())                     # counted on the CPU: no GPU wait
        if dist.enabled:                                            # global non-padding targets
            n_tok = int(distributed.all_reduce_sum(torch.tensor(n_tok, device=device)).item())
        if device.type == "cuda":  # from pinned memory the copy is queued, the CPU goes on
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        else:
            x, y = x.to(device), y.to(device)
        for group in run.optimizer.param_groups:
            group["lr"] = lr_at(run.global_step, run.total_steps, cfg)
        run.global_step += 1
        step = run.global_step

        # Before the forward: under CUDA graphs the next replay reuses the memory that holds
        # the previous step's gradients, so none may outlive their step.
        run.optimizer.zero_grad(set_to_none=True)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new training step: replay from the start
        with autocast(device, cfg):
            step_loss_sum = self.step_fn(x, y)
        # DDP averages gradients over ranks: scaling by world/n_tok makes them the gradient of
        # the global token-mean loss, exactly what one process with the whole batch computes.
        loss = step_loss_sum * (dist.world_size / max(n_tok, 1))
        loss_t = distributed.all_reduce_sum(step_loss_sum.detach().float().clone()) / max(n_tok, 1)
        loss_value = None
        if not self.late:  # stop before a NaN loss is backpropagated
            loss_value = self.finite(step, "loss", loss_t.item())

        loss.backward()
        if self.step_callback is not None:
            extra = self.step_callback(step, run.model, loss_value)
            if isinstance(extra, dict):
                run.history.extra.setdefault("callback", []).append({"step": step, **plain(extra)})
        norm = None
        if cfg.grad_clip and cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
            if not self.late:
                self.finite(step, "gradient norm", norm.item())
        run.optimizer.step()
        run.history.tokens_seen += n_tok
        self.tokens += n_tok
        done = (step, loss_value)
        if self.late:
            # This step is queued on the GPU. Queue copies of its loss and gradient norm behind
            # it, then read the previous step's copies: that waits for the previous step only,
            # so the GPU runs this one while Python prepares the next batch.
            host, wait = _host_copies(device, loss_t, norm)
            done = self.settle(*self.pending) if self.pending is not None else None
            self.pending = (step, *host, wait)
        self.time += time.time() - t0
        if done is not None:
            self.record(*done)

    def end_epoch(self) -> None:
        """Read a step still on the GPU; the epoch's mean loss, time and tokens into the run's history."""
        run, history = self.run, self.run.history
        if self.pending is not None:
            t0 = time.time()
            done = self.settle(*self.pending)
            self.time += time.time() - t0
            self.pending = None
            self.record(*done)
        history.train_time += self.time
        history.epoch_times.append((run.epoch, self.time, self.tokens))
        history.epoch_ends.append((run.epoch, run.global_step))
        run.epoch_train_loss = sum(self.losses) / max(len(self.losses), 1)
        self.losses, self.time, self.tokens = [], 0.0, 0


def _diverged_message(name, epoch, step, what, value, cfg) -> str:
    return (f"[{name}] training diverged at step {step} (epoch {epoch}): the {what} is {value}. "
            f"Lower learning_rate (now {cfg.learning_rate:g}), enable gradient clipping "
            f"(grad_clip=1.0; now {cfg.grad_clip}), or train in fp32 (precision='fp32'; now {cfg.precision!r}).")
