import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from picollm_helpers import checkpoint, history
from picollm_helpers import training as tr
from picollm_helpers.batching import TokenDataset
from picollm_helpers.config import IGNORE_INDEX, RunConfig
from picollm_helpers.loss import FusedLinearCE, lm_loss
from picollm_helpers.models import build_model
from picollm_helpers.seqs import generate_3seqs
from picollm_helpers.tokenizer import CompactTokenizer, get_tokenizer

BLOCK = 16
LINES = generate_3seqs(300, seed=0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, above all on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    """GPT-2 BPE over only the ids these lines use: a small vocabulary keeps the tests fast."""
    base = get_tokenizer()
    return CompactTokenizer(base, [i for line in LINES for i in base.encode_ordinary(line)])


def token_dataset(seqs, pad_id):
    lengths = torch.tensor([len(s) for s in seqs])
    tokens = torch.tensor([t for s in seqs for t in s], dtype=torch.int32)
    return TokenDataset(tokens, torch.cumsum(lengths, 0) - lengths, lengths, "3seqs", pad_id)


@pytest.fixture(scope="module")
def data(tok):
    """3seqs lines as token sequences of at most block_size + 1 tokens: (train, test)."""
    seqs = [tok.encode_ordinary(line)[:BLOCK + 1] for line in LINES]
    return token_dataset(seqs[:260], tok.eot_token), token_dataset(seqs[260:], tok.eot_token)


def tiny_cfg(tmp_path, **kw):
    base = dict(tinystories_weight=0.0, input_files=("3seqs.txt",), block_size=BLOCK, embed_size=32,
                n_heads=2, n_blocks=1, batch_size=8, epochs=1, max_steps_per_epoch=4,
                learning_rate=3e-3, prompt="0 1 2 3", max_new_tokens=4, top_p_values=(0.5, 1.0),
                device_id="cpu", output_dir=str(tmp_path / "out"), profile="smoke")
    base.update(kw)
    return RunConfig(**base)


VOCAB = []


def make(kind, cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(kind, cfg, vocab_size=VOCAB[0])


@pytest.fixture(autouse=True, scope="module")
def vocab(tok):
    VOCAB[:] = [tok.n_vocab]


def test_transformer_learns_3seqs_and_eval_is_deterministic(tmp_path, data, tok):
    train_ds, test_ds = data
    cfg = tiny_cfg(tmp_path, max_steps_per_epoch=30)
    model = make("transformer", cfg)
    before = tr.evaluate(model, test_ds, cfg)
    h = tr.train(model, cfg, train_ds, test_ds, tok, save=False)
    first = sum(l for _, l in h.train_loss[:3]) / 3
    assert len(h.train_loss) == 30 and [s for s, _ in h.train_loss] == list(range(1, 31))
    assert h.final_train_loss < first - 1.5, (first, h.final_train_loss)
    assert h.final_test_loss < before - 1.5
    a, b = tr.evaluate(model, test_ds, cfg), tr.evaluate(model, test_ds, cfg)
    assert a == b == h.final_test_loss
    assert h.tokens_seen > 0 and h.tokens_per_second > 0
    assert set(h.generations[1]) == {"greedy", "top_p=0.5", "top_p=1.0"}
    assert all(t.startswith("0 1 2 3") for t in h.generations[1].values())


def test_evaluate_masks_padding_over_full_test_set(tmp_path, data):
    _, test_ds = data
    cfg = tiny_cfg(tmp_path)
    model = make("lstm", cfg).eval()
    with torch.no_grad():  # reference: one sequence at a time, no padding at all
        total = sum(torch.nn.functional.cross_entropy(model(s[None, :-1])[0], s[1:], reduction="sum").item()
                    for s in test_ds)
    count = sum(len(s) - 1 for s in test_ds)
    assert tr.evaluate(model, test_ds, cfg) == pytest.approx(total / count, rel=1e-5)
    with pytest.raises(ValueError, match="test_fraction"):
        tr.evaluate(model, [], cfg)


def test_evaluate_gives_the_loss_of_each_test_batch(tmp_path, data):
    _, test_ds = data                                  # 40 examples
    cfg = tiny_cfg(tmp_path, batch_size=16)            # test batches of 16, 16 and 8
    model = make("lstm", cfg).eval()
    batches = []
    mean = tr.evaluate(model, test_ds, cfg, batch_losses=batches)
    assert len(batches) == 3 and mean == tr.evaluate(model, test_ds, cfg)   # asking for them changes nothing
    with torch.no_grad():
        for b, start in enumerate(range(0, len(test_ds), 16)):
            seqs = [test_ds[i] for i in range(start, min(start + 16, len(test_ds)))]
            total = sum(F.cross_entropy(model(s[None, :-1])[0], s[1:], reduction="sum").item() for s in seqs)
            assert batches[b] == pytest.approx(total / sum(len(s) - 1 for s in seqs), rel=1e-5)


@pytest.mark.parametrize("kind", ["transformer", "lstm", "kgram_mlp_seq", "tied"])
def test_chunked_loss_matches_plain_loss_and_gradients(tmp_path, kind):
    cfg = tiny_cfg(tmp_path)
    if kind == "tied":                                           # lm_head shares the embedding's weight
        from picollm_helpers.models import TransformerModel
        torch.manual_seed(1)
        model = TransformerModel(VOCAB[0], 32, 2, 1, BLOCK, tie_weights=True)
    else:
        model = make(kind, cfg, seed=1)
    torch.manual_seed(2)
    x = torch.randint(0, VOCAB[0], (3, 11))
    y = torch.randint(0, VOCAB[0], (3, 11))
    y[1, 7:] = IGNORE_INDEX                                   # padding is masked in both paths
    grads = []
    losses = []
    for chunk in (0, 5):                                         # 5 does not divide the 30 real rows
        model.zero_grad()
        loss = lm_loss(model, x, y, chunk_size=chunk)
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def _head_inputs(N=37, D=16, V=53, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g, requires_grad=True)
    w = (torch.randn(V, D, generator=g) * 0.3).requires_grad_()
    b = (torch.randn(V, generator=g) * 0.1).requires_grad_() if bias else None
    t = torch.randint(0, V, (N,), generator=g)
    return h, w, b, t


@pytest.mark.parametrize("chunk", [1, 8, 37, 1000])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_linear_ce_equals_full_logits(chunk, bias):
    """Value and gradients of every input equal F.cross_entropy on the whole (N, V) logits, for
    chunks that divide N, do not, are 1 row, or exceed N; the incoming gradient scales them."""
    h, w, b, t = _head_inputs(bias=bias)
    inputs = [h, w] + ([b] if bias else [])
    ref = F.cross_entropy(F.linear(h, w, b), t, reduction="sum")
    ref_grads = torch.autograd.grad(ref * 0.37, inputs)
    loss = FusedLinearCE.apply(h, w, b, t, chunk, True, None)
    grads = torch.autograd.grad(loss * 0.37, inputs)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_fused_loss_of_an_all_padding_batch_is_zero(tmp_path):
    h, w, b, t = _head_inputs(N=0)
    loss = FusedLinearCE.apply(h, w, b, t, 8, True, None)
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert loss.item() == 0.0 and not gw.any() and not gb.any()


def test_fused_loss_does_no_gradient_work_without_grad(tmp_path, monkeypatch):
    """evaluate() runs under no_grad: the fused loss then computes the loss alone (same value)."""
    cfg = tiny_cfg(tmp_path)
    model = make("transformer", cfg, seed=1)
    x = torch.randint(0, VOCAB[0], (2, 9))
    y = torch.randint(0, VOCAB[0], (2, 9))
    seen = []
    apply = FusedLinearCE.apply
    monkeypatch.setattr(FusedLinearCE, "apply", lambda *a: seen.append(a[5]) or apply(*a))
    with torch.no_grad():
        fused, plain = lm_loss(model, x, y, chunk_size=4), lm_loss(model, x, y)
    loss = lm_loss(model, x, y, chunk_size=4)
    assert seen == [False, True]
    assert fused.item() == pytest.approx(plain.item(), rel=1e-6) == loss.item()
    h, w, b, t = _head_inputs()
    with pytest.raises(RuntimeError, match="without gradients"):
        FusedLinearCE.apply(h, w, b, t, 8, False, None).backward()


def test_fused_loss_under_bf16_autocast_is_close_to_fp32(tmp_path):
    """Under bf16 autocast the output layer's matmuls run in bf16 (softmax and loss in fp32): the
    loss and gradients stay close to the fp32 ones."""
    cfg = tiny_cfg(tmp_path)
    model = make("transformer", cfg, seed=1)
    x = torch.randint(0, VOCAB[0], (3, 11))
    y = torch.randint(0, VOCAB[0], (3, 11))
    grads, losses = [], []
    for bf16 in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = lm_loss(model, x, y, chunk_size=5)
        loss.backward()
        losses.append(loss.item())
        grads.append(model.lm_head.weight.grad.clone())
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)
    cos = F.cosine_similarity(grads[0].flatten(), grads[1].flatten(), dim=0)
    assert cos > 0.99 and (grads[1].norm() / grads[0].norm() - 1).abs() < 0.05


def test_training_with_chunked_loss_matches_plain(tmp_path, data):
    train_ds, test_ds = data
    runs = []
    for chunk in (0, 7):
        cfg = tiny_cfg(tmp_path, loss_chunk_size=chunk)
        runs.append(tr.train(make("transformer", cfg), cfg, train_ds, test_ds, save=False))
    for (s0, l0), (s1, l1) in zip(runs[0].train_loss, runs[1].train_loss):
        assert s0 == s1 and l0 == pytest.approx(l1, rel=1e-4)
    assert runs[0].final_test_loss == pytest.approx(runs[1].final_test_loss, rel=1e-4)


@pytest.mark.parametrize("kind", ["transformer", "lstm", "kgram_mlp_seq"])
def test_length_buckets_train_the_same_model(tmp_path, data, kind, monkeypatch):
    """Padding each batch to a multiple of length_bucket (a few fixed shapes, for CUDA graphs)
    changes the shapes, not the targets: the same losses and weights up to float rounding."""
    full, _ = data  # 3seqs lines cut to 3..BLOCK+1 tokens, so batches have different lengths
    seqs = [full[i][:3 + (7 * i) % (BLOCK - 1)].tolist() for i in range(len(full))]
    train_ds, test_ds = token_dataset(seqs[:200], full.pad_id), token_dataset(seqs[200:], full.pad_id)
    cfg = tiny_cfg(tmp_path, epochs=2, max_steps_per_epoch=6, pos_emb="learned")
    bucketed = cfg.replace(length_bucket=5)
    shapes = {b: {tuple(tr.collate_batch([train_ds[int(i)] for i in idx], pad_id=train_ds.pad_id,
                                         length_bucket=c.length_bucket, max_len=c.block_size)[0].shape)
                  for e in (1, 2) for idx in tr.epoch_order(len(train_ds), c.batch_size, c.seed, e)[:6]}
              for b, c in (("plain", cfg), ("bucketed", bucketed))}
    assert shapes["plain"] != shapes["bucketed"]  # the buckets do pad some batches further
    assert all(T % 5 == 0 or T == BLOCK for _, T in shapes["bucketed"])
    seen = {"plain": set(), "bucketed": set()}   # the shapes of the batches train() trained on
    collate, current = tr.collate_batch, []

    def spy(*args, length_bucket=0, **kw):
        x, y = collate(*args, length_bucket=length_bucket, **kw)
        if "max_len" in kw:   # train()'s batches (evaluate pads each test batch to its longest)
            seen[current[-1]].add(tuple(x.shape))
        return x, y
    monkeypatch.setattr(tr, "collate_batch", spy)
    runs, models = [], []
    for run, c in (("plain", cfg), ("bucketed", bucketed)):
        current.append(run)
        models.append(make(kind, c))
        runs.append(tr.train(models[-1], c, train_ds, test_ds, save=False))
    assert seen == shapes
    for (s0, l0), (s1, l1) in zip(runs[0].train_loss, runs[1].train_loss, strict=True):
        assert s0 == s1 and l0 == pytest.approx(l1, rel=1e-5)
    assert runs[0].final_test_loss == pytest.approx(runs[1].final_test_loss, rel=1e-5)
    assert runs[0].tokens_seen == runs[1].tokens_seen  # padding is never counted as trained on
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_cuda_graphs_are_used_only_when_batches_have_fixed_shapes(tmp_path):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert tr.compile_settings(tiny_cfg(tmp_path, length_bucket=8), cuda) == {"mode": "reduce-overhead",
                                                                               "dynamic": False}
    assert tr.compile_settings(tiny_cfg(tmp_path), cuda) == {}            # every length: a new graph
    assert tr.compile_settings(tiny_cfg(tmp_path, length_bucket=8), cpu) == {}  # no CUDA graphs on a CPU


def test_compile_falls_back_to_eager_when_compiling_fails(tmp_path, data, monkeypatch, capsys):
    train_ds, test_ds = data

    def broken_compile(fn, **kw):
        def compiled(*args):
            raise RuntimeError("no C compiler found")
        return compiled
    monkeypatch.setattr(torch, "compile", broken_compile)
    runs = []
    for compile in (False, True):
        cfg = tiny_cfg(tmp_path, compile=compile, precision="auto")
        runs.append(tr.train(make("transformer", cfg), cfg, train_ds, test_ds, save=False))
    out = capsys.readouterr().out
    assert out.count("torch.compile failed here (RuntimeError: no C compiler found)") == 1
    assert "precision auto: fp32 on cpu" in out
    assert runs[0].train_loss == runs[1].train_loss  # the eager fallback trains exactly as compile=False


def test_logs_have_documented_structure(tmp_path, data, tok):
    train_ds, test_ds = data
    cfg = tiny_cfg(tmp_path, epochs=2, max_steps_per_epoch=3)
    h = tr.train(make("kgram_mlp_seq", cfg), cfg, train_ds, test_ds, tok, name="kgram")
    run = tmp_path / "out" / "kgram"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "generation_logs.json", "loss_logs.json"]
    logs = json.loads((run / "loss_logs.json").read_text())
    assert logs["format"] == "picollm.loss_logs/1" and logs["name"] == "kgram" and logs["kind"] == "kgram_mlp_seq"
    assert logs["train"]["step"] == [1, 2, 3, 4, 5, 6] and len(logs["train"]["loss"]) == 6
    assert logs["test"] == {"epoch": [1, 2], "step": [3, 6], "loss": [l for _, _, l in h.test_loss],
                            "batch_loss": [h.test_batch_losses[1], h.test_batch_losses[2]]}
    assert len(h.test_batch_losses[1]) == math.ceil(len(test_ds) / cfg.batch_size)
    assert logs["epochs"] == {"epoch": [1, 2], "end_step": [3, 6]} and h.epoch_ends == [(1, 3), (2, 6)]
    assert logs["config"] == cfg.to_dict()
    assert logs["final_test_loss"] == h.final_test_loss and logs["tokens_per_second"] > 0
    gens = json.loads((run / "generation_logs.json").read_text())
    assert gens["format"] == "picollm.generation_logs/1" and gens["prompt"] == "0 1 2 3"
    assert [g["epoch"] for g in gens["epochs"]] == [1, 2]
    assert list(gens["epochs"][1]["samples"]) == ["greedy", "top_p=0.5", "top_p=1.0"]
    back = history.History.load(run)
    assert back.train_loss == h.train_loss and back.test_loss == h.test_loss
    assert back.test_batch_losses == h.test_batch_losses and back.epoch_ends == h.epoch_ends
    # each epoch's time in optimizer steps and its non-padding tokens: they add up to the run's
    assert [e for e, _, _ in h.epoch_times] == [1, 2] and all(t > 0 for _, t, _ in h.epoch_times)
    assert sum(n for *_, n in h.epoch_times) == h.tokens_seen
    assert sum(t for _, t, _ in h.epoch_times) == pytest.approx(h.train_time)
    assert back.epoch_times == h.epoch_times and logs["epoch_times"]["epoch"] == [1, 2]
    # pico-llm's layout of the same run: per epoch, each step's loss and each test batch's loss
    pico = h.pico_llm_losses()
    assert pico["train"] == [[l for _, l in h.train_loss[:3]], [l for _, l in h.train_loss[3:]]]
    assert pico["test"] == [h.test_batch_losses[1], h.test_batch_losses[2]]
    assert h.pico_llm_generations()[1] == {"greedy": h.generations[2]["greedy"],
                                           "0.5": h.generations[2]["top_p=0.5"], "1.0": h.generations[2]["top_p=1.0"]}
    assert back.generations == h.generations
    assert history.History.from_dict(json.loads(json.dumps(h.to_dict()))) == h
    older = {k: v for k, v in h.to_dict().items() if k not in ("epoch_ends", "test_batch_losses")}
    assert history.History.from_dict(older).epoch_ends == h.epoch_ends   # logs from before epoch ends were kept


def test_checkpoint_round_trip(tmp_path, data):
    train_ds, test_ds = data
    cfg = tiny_cfg(tmp_path, max_steps_per_epoch=2, use_position_emb=True)
    model = make("transformer", cfg)
    h = tr.train(model, cfg, train_ds, test_ds)
    path = tmp_path / "out" / "transformer" / "checkpoint.pt"
    raw = torch.load(path, weights_only=True)                    # plain data only: no pickled objects
    assert raw["kind"] == "transformer" and raw["epoch"] == 1 and raw["global_step"] == 2
    assert set(raw["optimizer_state"]["state"])                  # AdamW moments are saved
    loaded, info = checkpoint.load_checkpoint(path)
    assert info["config"] == cfg and info["kind"] == "transformer"
    assert info["history"].train_loss == h.train_loss and info["history"].test_loss == h.test_loss
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "missing.pt")


class Crash(Exception):
    pass


def test_resume_equals_uninterrupted_run(tmp_path, data):
    train_ds, test_ds = data
    # dropout > 0 so the result depends on the restored RNG state, not only on the weights
    cfg = tiny_cfg(tmp_path, epochs=2, max_steps_per_epoch=3, dropout=0.1, lr_schedule="cosine", warmup_steps=2)
    full_model = make("transformer", cfg)
    full = tr.train(full_model, cfg.replace(output_dir=str(tmp_path / "a")), train_ds, test_ds)

    def crash_in_epoch_2(step, model, loss):
        if step == 4:
            raise Crash
    cfg_b = cfg.replace(output_dir=str(tmp_path / "b"))
    with pytest.raises(Crash):
        tr.train(make("transformer", cfg), cfg_b, train_ds, test_ds, step_callback=crash_in_epoch_2)
    resumed_model = make("transformer", cfg, seed=99)            # different init: the checkpoint decides
    resumed = tr.train(resumed_model, cfg_b, train_ds, test_ds,
                       resume_from=tmp_path / "b" / "transformer" / "checkpoint.pt")
    assert [s for s, _ in resumed.train_loss] == [s for s, _ in full.train_loss] == list(range(1, 7))
    for (_, a), (_, b) in zip(full.train_loss, resumed.train_loss):
        assert a == pytest.approx(b, rel=1e-5)
    assert [l for *_, l in resumed.test_loss] == pytest.approx([l for *_, l in full.test_loss], rel=1e-5)
    assert resumed.epoch_ends == full.epoch_ends == [(1, 3), (2, 6)]              # the epoch kept from before
    assert [len(e) for e in resumed.pico_llm_losses()["test"]] == [len(e) for e in full.pico_llm_losses()["test"]]
    for p, q in zip(full_model.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_nan_stops_training_with_a_clear_error(tmp_path, data):
    train_ds, test_ds = data
    cfg = tiny_cfg(tmp_path, max_steps_per_epoch=6)

    def poison(step, model, loss):
        if step == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
    with pytest.raises(tr.TrainingDivergedError, match=r"step 3 .*nan.*learning_rate.*grad_clip.*fp32") as e:
        tr.train(make("lstm", cfg), cfg, train_ds, test_ds, step_callback=poison, save=False)
    assert isinstance(e.value, RuntimeError)


def test_losses_read_one_step_late_give_the_same_run_and_still_stop_on_nan(tmp_path, data, monkeypatch):
    # On a GPU train() reads each step's loss after queuing the next step; force that path here.
    train_ds, test_ds = data
    cfg = tiny_cfg(tmp_path, max_steps_per_epoch=5, epochs=2)
    now = tr.train(make("transformer", cfg), cfg, train_ds, test_ds, save=False)
    monkeypatch.setattr(tr, "_reads_losses_late", lambda device, step_callback: True)
    late = tr.train(make("transformer", cfg), cfg, train_ds, test_ds, save=False)
    assert late.train_loss == now.train_loss and late.test_loss == now.test_loss
    assert late.tokens_seen == now.tokens_seen > 0

    model, calls = make("transformer", cfg), []

    def poison_at_step_3(module, args):
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                next(module.parameters()).fill_(float("nan"))
    model.register_forward_pre_hook(poison_at_step_3)
    with pytest.raises(tr.TrainingDivergedError, match=r"step 3 .*nan"):
        tr.train(model, cfg, train_ds, None, save=False)


def test_interrupted_checkpoint_write_keeps_previous_file(tmp_path, monkeypatch, data):
    cfg = tiny_cfg(tmp_path)
    model = make("lstm", cfg)
    path = tmp_path / "ckpt" / "checkpoint.pt"
    checkpoint.save_checkpoint(path, model, cfg=cfg, epoch=1)
    before = path.read_bytes()
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"partial checkpoint bytes")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", dying_save)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint(path, model, cfg=cfg, epoch=2)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]
    assert checkpoint.load_checkpoint(path)[1]["epoch"] == 1


def test_step_callback_records_grad_norms_by_layer(tmp_path, data):
    train_ds, test_ds = data
    cfg = tiny_cfg(tmp_path, max_steps_per_epoch=2, n_blocks=2)
    h = tr.train(make("transformer", cfg), cfg, train_ds, None,
                 step_callback=lambda step, model, loss: tr.grad_norms_by_layer(model), save=False)
    recs = h.extra["callback"]
    assert [r["step"] for r in recs] == [1, 2]
    assert {"blocks.0", "blocks.1", "lm_head"} <= set(recs[0])
    assert all(v > 0 and math.isfinite(v) for k, v in recs[0].items() if k != "step")
    assert h.test_loss == [] and math.isnan(h.final_test_loss)
    assert h.pico_llm_losses() == {"train": [[l for _, l in h.train_loss]], "test": []}   # no test set


def test_learning_rate_schedule(tmp_path):
    cfg = tiny_cfg(tmp_path, learning_rate=1e-3, warmup_steps=4, lr_schedule="cosine")
    lrs = [tr.lr_at(s, 20, cfg) for s in range(20)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[4] == pytest.approx(1e-3) and all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[-1] >= 1e-4
    assert tr.lr_at(10, 20, tiny_cfg(tmp_path)) == pytest.approx(3e-3)


def test_epoch_order_depends_only_on_seed_and_epoch():
    a = tr.epoch_order(50, 8, seed=1, epoch=2)
    assert len(a) == 6 and all(len(b) == 8 for b in a)
    assert all(torch.equal(x, y) for x, y in zip(a, tr.epoch_order(50, 8, seed=1, epoch=2)))
    assert not torch.equal(a[0], tr.epoch_order(50, 8, seed=1, epoch=3)[0])


def test_cache_reuses_the_model_trained_with_the_identical_run_and_misses_on_any_change(
        tmp_path, data, tok, monkeypatch, capsys):
    monkeypatch.setenv("PICOLLM_CACHE", str(tmp_path / "cache"))
    train_ds, test_ds = data
    cfg = tiny_cfg(tmp_path, max_steps_per_epoch=3)
    steps = []
    count = lambda step, model, loss: steps.append(step)
    first_model = make("transformer", cfg)
    first = tr.train(first_model, cfg, train_ds, test_ds, tok, step_callback=count, cache=True)
    assert steps == [1, 2, 3]

    again = make("transformer", cfg)                    # the same initial weights
    second = tr.train(again, cfg, train_ds, test_ds, tok, step_callback=count, cache=True)
    assert steps == [1, 2, 3]                           # nothing was trained
    assert "loaded from the model cache" in capsys.readouterr().out
    assert second.train_loss == first.train_loss and second.test_loss == first.test_loss
    for a, b in zip(first_model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)

    # A different seed, other initial weights or other data each train anew.
    tr.train(make("transformer", cfg), cfg.replace(seed=7), train_ds, test_ds, tok, step_callback=count, cache=True)
    tr.train(make("transformer", cfg, seed=1), cfg, train_ds, test_ds, tok, step_callback=count, cache=True)
    tr.train(make("transformer", cfg), cfg, train_ds.subset(range(200)), test_ds, tok, step_callback=count,
             cache=True)
    assert steps == [1, 2, 3] * 4


def test_cache_refuses_a_resumed_run(tmp_path, data, tok):
    cfg = tiny_cfg(tmp_path)
    with pytest.raises(ValueError, match="cache=True trains from scratch"):
        tr.train(make("lstm", cfg), cfg, *data, tok, resume_from=tmp_path / "x.pt", cache=True)


def test_steps_per_epoch_is_what_train_takes(tmp_path, data):
    train_ds, test_ds = data
    for cap in (2, None):
        cfg = tiny_cfg(tmp_path, max_steps_per_epoch=cap, epochs=2)
        h = tr.train(make("lstm", cfg), cfg, train_ds, None, save=False)
        assert h.steps == 2 * tr.steps_per_epoch(len(train_ds), cfg)
    assert tr.steps_per_epoch(len(train_ds), tiny_cfg(tmp_path, max_steps_per_epoch=None)) == len(train_ds) // 8


# ----------------------------------------------------------------------------------------------
# What train() prints: one bar in a notebook, a line per epoch in a log; evaluation in big passes


def count_bars(monkeypatch):
    """Every progress bar train()'s reporters open, recorded."""
    from picollm_helpers import reporters
    bars, real = [], reporters.progress

    def spy(*args, **kw):
        bars.append(real(*args, **kw))
        return bars[-1]
    monkeypatch.setattr(reporters, "progress", spy)
    return bars


SUMMARY = (r"\[{name}\] 3 epochs, 9 steps in [\d.]+ s: train loss \d+\.\d{{4}}, test loss \d+\.\d{{4}}{subset}, "
           r"[\d,]+ tok/s")


def test_a_notebook_run_shows_one_bar_for_all_epochs_and_one_summary_line(tmp_path, data, tok, monkeypatch, capsys):
    train_ds, test_ds = data
    cfg = tiny_cfg(tmp_path, epochs=3, max_steps_per_epoch=3)
    bars = count_bars(monkeypatch)
    h = tr.train(make("transformer", cfg), cfg, train_ds, test_ds, tok, name="nb", reporting="notebook")
    out, err = capsys.readouterr()
    assert len(bars) == 1 and bars[0].total == bars[0].n == 9        # one bar: epochs x steps
    assert bars[0].postfix.startswith("epoch=3/3, loss=") and "test=" in bars[0].postfix
    assert re.fullmatch(SUMMARY.format(name="nb", subset="") + "\n", out), out   # the only line on stdout
    assert "greedy" not in out + err and "epoch 1/3" not in out + err
    assert sorted(h.generations) == [1, 2, 3] and len(h.test_loss) == 3     # all of it is in the History


def test_a_log_prints_a_line_per_epoch_and_never_a_bar(tmp_path, data, tok, monkeypatch, capsys):
    from picollm_helpers.progress import reporting_mode

    assert reporting_mode() == "log"            # pytest captures stdout: not a terminal
    train_ds, test_ds = data
    cfg = tiny_cfg(tmp_path, epochs=3, max_steps_per_epoch=3)
    bars = count_bars(monkeypatch)
    tr.train(make("transformer", cfg), cfg, train_ds, test_ds, tok, name="log")
    out, err = capsys.readouterr()
    assert bars == [] and "\r" not in out + err
    lines = out.splitlines()
    epochs = [line for line in lines if re.match(r"\[log\] epoch \d/3: train loss [\d.]+, test loss [\d.]+ \(", line)]
    assert [line.split()[2] for line in epochs] == ["1/3:", "2/3:", "3/3:"]
    assert sum(line.startswith("[log] greedy: '0 1 2 3") for line in lines) == 3
    assert re.fullmatch(SUMMARY.format(name="log", subset=""), lines[-1]) and len(lines) == 7


def test_a_terminal_gets_the_bar_and_the_epoch_lines(tmp_path, data, monkeypatch, capsys):
    train_ds, test_ds = data
    cfg = tiny_cfg(tmp_path, epochs=2, max_steps_per_epoch=3)
    bars = count_bars(monkeypatch)
    tr.train(make("lstm", cfg), cfg, train_ds, test_ds, name="term", reporting="terminal", save=False)
    out = capsys.readouterr().out
    assert len(bars) == 1 and bars[0].n == 6
    assert "[term] epoch 1/2: train loss" in out and "[term] epoch 2/2: train loss" in out
    with pytest.raises(ValueError, match="reporting='quiet' is not a reporting mode"):
        tr.train(make("lstm", cfg), cfg, train_ds, test_ds, reporting="quiet")


def old_evaluate(model, test_ds, cfg, batch_losses):
    """evaluate() as it was: one cfg.batch_size batch per forward pass, under no_grad."""
    from picollm_helpers.loss import loss_sum
    model.eval()
    sums, counts = [], []
    with torch.no_grad():
        for start in range(0, len(test_ds), cfg.batch_size):
            x, y = tr.collate_batch([test_ds[i] for i in range(start, min(start + cfg.batch_size, len(test_ds)))],
                                    pad_id=test_ds.pad_id)
            sums.append(loss_sum(model, x, y, cfg.loss_chunk_size).item())
            counts.append(int((y != IGNORE_INDEX).sum()))
    batch_losses.extend(s / max(c, 1) for s, c in zip(sums, counts))
    return sum(sums) / max(sum(counts), 1)


@pytest.mark.parametrize("kind, chunk", [("transformer", 7), ("transformer", 0), ("lstm", 0), ("kgram_mlp_seq", 5)])
@pytest.mark.parametrize("memory", [None, "two batches"])
def test_evaluate_in_big_passes_equals_the_batch_by_batch_loss(tmp_path, data, kind, chunk, memory, monkeypatch):
    full, _ = data      # test examples of different lengths, so a pass pads more than a batch did
    seqs = [full[i][:3 + (5 * i) % (BLOCK - 1)].tolist() for i in range(43)]
    test_ds = token_dataset(seqs, full.pad_id)
    cfg = tiny_cfg(tmp_path, batch_size=8, loss_chunk_size=chunk, pos_emb="learned")
    model = make(kind, cfg, seed=3)
    if memory:          # 43 examples, batches of 8: passes of 2, 2 and 2 batches, the last one partial
        per_batch = tr.EVAL_MEMORY_BYTES // (tr.eval_batch_size(model, cfg) // cfg.batch_size)
        monkeypatch.setattr(tr, "EVAL_MEMORY_BYTES", 2 * per_batch + 1)
        assert tr.eval_batch_size(model, cfg) == 16
    else:
        assert tr.eval_batch_size(model, cfg) >= 48           # everything in one pass
    old, new = [], []
    reference = old_evaluate(model, test_ds, cfg, old)
    assert tr.evaluate(model, test_ds, cfg, new) == pytest.approx(reference, rel=1e-6)
    assert len(new) == len(old) == 6 and new == pytest.approx(old, rel=1e-5)
    assert tr.evaluate(model, test_ds, cfg) == tr.evaluate(model, test_ds, cfg)   # deterministic


def test_evaluate_runs_under_inference_mode_and_builds_no_graph(tmp_path, data, monkeypatch):
    _, test_ds = data
    cfg = tiny_cfg(tmp_path, loss_chunk_size=7)
    model = make("transformer", cfg).train()
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(("model", torch.is_inference_mode_enabled(),
                                                                  out.requires_grad)))
    fused = tr.fused_linear_ce

    def spy(*args):
        loss = fused(*args)
        seen.append(("loss", torch.is_inference_mode_enabled(), loss.requires_grad))
        return loss
    monkeypatch.setattr(tr, "fused_linear_ce", spy)
    tr.evaluate(model, test_ds, cfg)
    assert seen and all(inference and not grad for _, inference, grad in seen), seen
    assert {what for what, *_ in seen} == {"loss"}       # model.hidden, not forward: no (B, T, V) logits
    assert model.training                                # put back as it was
    h = tr.train(model, cfg, *data, save=False)          # and training after it still builds its graph
    assert len(h.train_loss) == cfg.max_steps_per_epoch


def test_eval_subset_tests_the_same_examples_each_epoch_and_the_whole_set_at_the_end(
        tmp_path, data, tok, monkeypatch, capsys):
    train_ds, test_ds = data                                  # 40 test examples
    cfg = tiny_cfg(tmp_path, epochs=3, max_steps_per_epoch=3, eval_subset=12)
    calls, real = [], tr.evaluate

    def spy(model, ds, c, batch_losses=None, examples=None):
        calls.append(examples)
        return real(model, ds, c, batch_losses, examples=examples)
    monkeypatch.setattr(tr, "evaluate", spy)
    model = make("transformer", cfg)
    h = tr.train(model, cfg, train_ds, test_ds, tok, name="sub")
    assert calls[0] == calls[1] == sorted(set(calls[0])) and len(calls[0]) == 12 and calls[2] is None
    assert calls[0] == tr.eval_subset_examples(40, cfg) != tr.eval_subset_examples(40, cfg.replace(seed=5))
    assert h.test_subset == {1: 12, 2: 12}
    assert [len(h.test_batch_losses[e]) for e in (1, 2, 3)] == [2, 2, 5]      # batches of 8
    assert h.final_test_loss == real(model, test_ds, cfg)                    # the last epoch: the whole set
    out = capsys.readouterr().out
    assert "[sub] epoch 1/3: train loss" in out and "(on 12 of 40 test examples)" in out
    assert out.count("(on 12 of 40 test examples)") == 2
    assert re.search(SUMMARY.format(name="sub", subset=r" \(each epoch on 12 of 40 test examples, the full set "
                                                         r"at the end\)"), out)
    back = history.History.load(tmp_path / "out" / "sub")
    assert back.test_subset == {1: 12, 2: 12}
    assert history.History.from_dict(json.loads(json.dumps(h.to_dict()))).test_subset == h.test_subset
    # a subset as large as the test set is the whole set
    assert tr.eval_subset_examples(40, cfg.replace(eval_subset=40)) is None


def test_eval_subset_is_validated_and_off_by_default():
    from picollm_helpers.errors import ConfigError
    assert RunConfig().eval_subset == 0 and "eval_subset" not in RunConfig().to_dict()   # cache keys unchanged
    assert RunConfig(eval_subset=256).to_dict()["eval_subset"] == 256
    with pytest.raises(ConfigError, match="eval_subset=-1 is invalid"):
        RunConfig(eval_subset=-1)


def test_a_saved_notebook_holds_only_the_summary_line(tmp_path):
    """train() in a real kernel: the live bar leaves nothing behind; the saved cell keeps one summary line."""
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import torch\n"
        "from picollm_helpers.batching import TokenDataset\n"
        "from picollm_helpers.config import RunConfig\n"
        "from picollm_helpers.models import build_model\n"
        "from picollm_helpers.training import train\n"
        "torch.set_num_threads(1)\n"
        "def ds(n, shift):\n"
        "    t = torch.tensor([(i + j + shift) % 20 for i in range(n) for j in range(9)], dtype=torch.int32)\n"
        "    return TokenDataset(t, torch.arange(0, 9 * n, 9), torch.full((n,), 9), 'counting', 20)\n"
        f"cfg = RunConfig(tinystories_weight=0.0, input_files=('x.txt',), block_size=8, embed_size=16, n_heads=2,\n"
        f"                n_blocks=1, batch_size=8, epochs=3, max_steps_per_epoch=2, device_id='cpu',\n"
        f"                profile='smoke', output_dir={str(tmp_path)!r})\n"
        "torch.manual_seed(0)\n"
        "h = train(build_model('lstm', cfg, vocab_size=21), cfg, ds(64, 0), ds(16, 3), name='nb')")]
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    outputs = nb.cells[0].outputs
    texts = [o.get("text") or o.get("data", {}).get("text/plain", "") for o in outputs]
    shown = [t for t in texts if t.strip()]
    assert len(shown) == 1, texts
    assert re.fullmatch(r"\[nb\] 3 epochs, 6 steps in [\d.]+ s: train loss [\d.]+, test loss [\d.]+, [\d,]+ tok/s\n",
                        shown[0]), texts
