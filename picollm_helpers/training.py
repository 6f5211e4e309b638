"""The training loop: `train`, `evaluate`, the data order and the learning-rate schedule.

    history = train(model, cfg, train_ds, test_ds, tokenizer, name="transformer")
    plot_history(history)

One epoch is min(cfg.max_steps_per_epoch, len(train_ds) // batch_size) AdamW steps over batches
in an order fixed by (cfg.seed, epoch), then the loss on the whole test set and, given a
tokenizer, the report's samples from cfg.prompt. Each run writes its logs (history.py) and
checkpoint (checkpoint.py) to `<cfg.output_dir>/<name>/`; `cache=True` reuses a model trained
earlier with the identical config, data, initial weights and seed (model_cache.py).
The loss itself lives in loss.py.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch
import torch.nn as nn

from . import distributed, model_cache, resume
from .batching import collate_batch
from .checkpoint import config_dict, read_checkpoint, save_checkpoint, set_rng_state, vocab_size_of
from .config import IGNORE_INDEX, resolve_device, resolve_precision
from .errors import CheckpointError, PicoLLMError, TrainingDivergedError
from .history import History, plain
from .loss import LossModule, loss_sum
from .models import model_kind
from .plots import history_figure, png_bytes
from .progress import in_notebook, progress
from .sampling import generate
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


@torch.no_grad()
@phase("evaluate")
def evaluate(model: nn.Module, test_ds, cfg, batch_losses: list | None = None) -> float:
    """Token-weighted mean CE over every non-padding target of test_ds, in its fixed order.

    Deterministic: the same weights give the same number. Under torchrun the batches are split
    across ranks and the sums added, so every rank returns the same value. batch_losses: a list
    to which the mean loss of each test batch (cfg.batch_size examples, in order) is appended.
    """
    if test_ds is None or len(test_ds) == 0:
        raise ValueError("the test set is empty: set test_fraction > 0 (e.g. 0.1) to hold out test data")
    dist = distributed.info()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunk = cfg.loss_chunk_size
    pad_id = _pad_id(test_ds)
    starts = range(0, len(test_ds), cfg.batch_size)
    sums, counts = [0.0] * len(starts), [0] * len(starts)              # per batch; python floats: float64
    for b, start in enumerate(starts):
        if b % dist.world_size != dist.rank:
            continue
        stop = min(start + cfg.batch_size, len(test_ds))
        x, y = collate_batch([test_ds[i] for i in range(start, stop)], pad_id=pad_id)
        x, y = x.to(device), y.to(device)
        with autocast(device, cfg):
            sums[b] = loss_sum(model, x, y, chunk).item()
        counts[b] = int((y != IGNORE_INDEX).sum())
    if dist.enabled:   # each rank filled its own batches: adding the lists completes them
        total = distributed.all_reduce_sum(torch.tensor([sums, counts], dtype=torch.float64, device=device))
        sums, counts = total.tolist()
    model.train(was_training)
    if batch_losses is not None:
        batch_losses.extend(s / max(c, 1) for s, c in zip(sums, counts))
    return sum(sums) / max(sum(counts), 1)


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


class _LivePlot:
    """Redraws the loss plot in one notebook output every `every` steps; a no-op elsewhere."""

    def __init__(self, every: int):
        self.every = every
        self.handle = None
        self.enabled = every > 0 and in_notebook()

    def update(self, history: History, step: int, force: bool = False):
        if not self.enabled or (not force and step % self.every):
            return
        from IPython.display import Image, display
        img = Image(data=png_bytes(history_figure(history, title=f"{history.name}: training (live)")))
        if self.handle is None:
            self.handle = display(img, display_id=True)
        else:
            self.handle.update(img)


# ----------------------------------------------------------------------------------------------
# Training loop


def _generate_samples(model, tokenizer, cfg, epoch: int) -> dict[str, str]:
    """Greedy plus one sample per cfg.top_p_values from cfg.prompt: the report's tables."""
    samples = {"greedy": generate(model, tokenizer, cfg.prompt, cfg.max_new_tokens, greedy=True, seed=cfg.seed)}
    for p in cfg.top_p_values:
        samples[f"top_p={float(p)}"] = generate(model, tokenizer, cfg.prompt, cfg.max_new_tokens,
                                                greedy=False, top_p=float(p), seed=cfg.seed + epoch)
    return {k: g.text for k, g in samples.items()}  # prompt + continuation, as the report


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
          step_callback=None, save: bool = True, cache: bool = False, force_resume: bool = False) -> History:
    """Train `model` on train_ds for cfg.epochs epochs; returns a History.

    Each epoch takes min(cfg.max_steps_per_epoch, len(train_ds) // batch_size) AdamW steps over
    batches drawn in an order fixed by (cfg.seed, epoch), then measures the loss on the whole
    test set and, given a tokenizer, samples from cfg.prompt greedily and at each cfg.top_p_values.
    Results go to <cfg.output_dir>/<name>/ (logs each epoch, checkpoint.pt each epoch or at the
    end) unless save=False.

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
      trained before (saying so and when), instead of training; otherwise train and keep the
      result for next time. A cached run does not call step_callback again: what it returned then
      is in history.extra["callback"].
    Raises TrainingDivergedError when the loss or gradient norm becomes NaN or infinite.
    """
    if tokenizer is None:
        tokenizer = getattr(train_ds, "tokenizer", None)    # make_datasets attaches the one it used
    _check_vocab(model, train_ds, tokenizer)
    if tokenizer is not None:
        model.vocab_name = vocab_name(tokenizer)   # generate() refuses another vocabulary's tokenizer
    if tokenizer is not None:   # the samples after each epoch need it: fail now, not after an epoch
        check_prompt(tokenizer, cfg.prompt, who=f"[{name or model_kind(model) or type(model).__name__}] ")
    dist, dist_device = distributed.setup(cfg.device_id)
    main = dist.is_main
    device = dist_device or resolve_device(cfg.device_id)
    kind = model_kind(model)
    name = name or kind or type(model).__name__
    run_dir = Path(cfg.output_dir) / name
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
                cached.save(run_dir)
            return cached
    model.to(device)

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
        if diffs and main:
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
        if main:
            print(f"[{name}] resumed from {resume_from} after epoch {ckpt['epoch']} (step {global_step})")
            if save:   # logs written after this checkpoint (a crash between the two) describe lost work
                history.save(run_dir)
    else:
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

    loss_module = LossModule(model, cfg.loss_chunk_size)
    step_fn = loss_module
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        step_fn = DDP(loss_module, device_ids=[device.index] if device.type == "cuda" else None)
    cuda_graphs = False
    if cfg.compile:
        settings = compile_settings(cfg, device)
        cuda_graphs = settings.get("mode") == "reduce-overhead"
        n_shapes = -(-cfg.block_size // cfg.length_bucket) if cfg.length_bucket else cfg.block_size
        step_fn = _compile_or_eager(step_fn, name, n_shapes, **settings)
        if main and settings:
            print(f"[{name}] torch.compile {settings}: length_bucket={cfg.length_bucket} gives at most "
                  f"{n_shapes} batch shapes")
    if main and cfg.precision == "auto":
        print(f"[{name}] precision auto: {resolve_precision('auto', device)} on {device}")

    n_train = len(train_ds)
    if n_train < dist.world_size:
        raise ValueError(f"the training set has {n_train} examples, fewer than the {dist.world_size} "
                         f"processes: use more data or fewer processes")
    n_steps = steps_per_epoch(n_train, cfg)
    total_steps = cfg.epochs * n_steps
    has_test = test_ds is not None and len(test_ds) > 0
    pad_id = _pad_id(train_ds, tokenizer)
    live = _LivePlot((25 if live_plot is True else int(live_plot)) if (live_plot and main) else 0)
    run_start = time.time() - history.wall_time

    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        batches = epoch_order(n_train, cfg.batch_size, cfg.seed, epoch)[:n_steps]
        bar = progress(batches, desc=f"{name} epoch {epoch}/{cfg.epochs}", disable=not main)
        epoch_losses = []
        late = _reads_losses_late(device, step_callback)
        pending = None  # with `late`: (step, loss, gradient norm, wait) of a step still on the GPU
        epoch_time, epoch_tokens = 0.0, 0

        # The helpers below belong to this epoch: its number, loss list and bar are bound here.
        def finite(step, what, value, epoch=epoch):
            if not math.isfinite(value):
                raise TrainingDivergedError(_diverged_message(name, epoch, step, what, value, cfg))
            return value

        def record(step, loss_value, epoch_losses=epoch_losses, bar=bar):
            history.train_loss.append((step, loss_value))
            epoch_losses.append(loss_value)
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            live.update(history, step)

        def settle(step, loss_t, norm_t, wait, finite=finite, record=record):
            """Read a step's loss and gradient norm, stop on NaN/inf, record the loss."""
            wait()
            loss_value = finite(step, "loss", loss_t.item())
            if norm_t is not None:
                finite(step, "gradient norm", norm_t.item())
            record(step, loss_value)

        for idx in bar:
            t0 = time.time()
            shard = idx.tensor_split(dist.world_size)[dist.rank]     # this rank's part of the global batch
            x, y = collate_batch([train_ds[int(i)] for i in shard], pad_id=pad_id,
                                 length_bucket=cfg.length_bucket, max_len=cfg.block_size)  # (b, T), (b, T)
            n_tok = int((y != IGNORE_INDEX).sum())                     # counted on the CPU: no GPU wait
            if dist.enabled:                                            # global non-padding targets
                n_tok = int(distributed.all_reduce_sum(torch.tensor(n_tok, device=device)).item())
            if device.type == "cuda":  # from pinned memory the copy is queued, the CPU goes on
                x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
            else:
                x, y = x.to(device), y.to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(global_step, total_steps, cfg)
            global_step += 1

            # Before the forward: under CUDA graphs the next replay reuses the memory that holds
            # the previous step's gradients, so none may outlive their step.
            optimizer.zero_grad(set_to_none=True)
            if cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()  # a new training step: replay from the start
            with autocast(device, cfg):
                step_loss_sum = step_fn(x, y)
            # DDP averages gradients over ranks: scaling by world/n_tok makes them the gradient of
            # the global token-mean loss, exactly what one process with the whole batch computes.
            loss = step_loss_sum * (dist.world_size / max(n_tok, 1))
            loss_t = distributed.all_reduce_sum(step_loss_sum.detach().float().clone()) / max(n_tok, 1)
            if not late:  # stop before a NaN loss is backpropagated
                loss_value = finite(global_step, "loss", loss_t.item())

            loss.backward()
            if step_callback is not None:
                extra = step_callback(global_step, model, loss_value)
                if isinstance(extra, dict):
                    history.extra.setdefault("callback", []).append({"step": global_step, **plain(extra)})
            norm = None
            if cfg.grad_clip and cfg.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                if not late:
                    finite(global_step, "gradient norm", norm.item())
            optimizer.step()
            history.tokens_seen += n_tok
            epoch_tokens += n_tok
            if not late:
                record(global_step, loss_value)
            else:
                # This step is queued on the GPU. Queue copies of its loss and gradient norm behind
                # it, then read the previous step's copies: that waits for the previous step only,
                # so the GPU runs this one while Python prepares the next batch.
                host, wait = _host_copies(device, loss_t, norm)
                if pending is not None:
                    settle(*pending)
                pending = (global_step, *host, wait)
            epoch_time += time.time() - t0
        if pending is not None:
            t0 = time.time()
            settle(*pending)
            epoch_time += time.time() - t0
        history.train_time += epoch_time
        bar.close()
        history.epoch_times.append((epoch, epoch_time, epoch_tokens))

        msg = f"[{name}] epoch {epoch}/{cfg.epochs}: train loss {sum(epoch_losses) / len(epoch_losses):.4f}"
        history.epoch_ends.append((epoch, global_step))
        if has_test:
            batch_losses = []
            test = evaluate(model, test_ds, cfg, batch_losses)
            history.test_loss.append((epoch, global_step, test))
            history.test_batch_losses[epoch] = batch_losses
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
                # Checkpoint first: a crash between the two writes leaves logs behind the checkpoint
                # (the next resume rewrites them), never logs of epochs the checkpoint lacks.
                if checkpoint_every_epoch or epoch == cfg.epochs:
                    save_checkpoint(run_dir / "checkpoint.pt", model, optimizer, cfg, kind, history,
                                    epoch=epoch, global_step=global_step, tokenizer=tokenizer, data=data)
                history.save(run_dir)
        distributed.barrier()

    history.wall_time = time.time() - run_start
    if main and save:
        history.save(run_dir)
    if key is not None:
        model_cache.store(model, key, name, cfg, history, tokenizer, epoch=cfg.epochs, global_step=global_step)
    return history


def _diverged_message(name, epoch, step, what, value, cfg) -> str:
    return (f"[{name}] training diverged at step {step} (epoch {epoch}): the {what} is {value}. "
            f"Lower learning_rate (now {cfg.learning_rate:g}), enable gradient clipping "
            f"(grad_clip=1.0; now {cfg.grad_clip}), or train in fp32 (precision='fp32'; now {cfg.precision!r}).")
