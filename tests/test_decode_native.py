"""decode_native.c, the compiled one-token step: the readable step's logits and cache at every
position, in every mode and split over any number of threads; built once, and where it cannot be
built (no compiler, no OpenMP, switched off) generation takes the eager fast step, saying why."""


import pytest
import torch

from picollm_helpers import doctor
from picollm_helpers.models import TransformerModel, decode_native
from picollm_helpers.models.decode import decode_fn
from picollm_helpers.models.decode_native import NativeStep
from picollm_helpers.models.transformer import RMSNorm
from picollm_helpers.sampling import generate

SHAPES = {
    "learned": dict(),
    "none": dict(pos_emb="none"),
    "sinusoidal": dict(pos_emb="sinusoidal", embed_scale=True),
    "rope": dict(pos_emb="rope"),
    "post-norm": dict(use_post_norm=True),
    "rope,post-norm": dict(pos_emb="rope", use_post_norm=True),
    "tied": dict(tie_weights=True),
    # odd sizes: 3 heads of 10, an MLP of 90, V = 97: no split over threads comes out even
    "odd": dict(embed_size=30, n_heads=3, mlp_ratio=3, pos_emb="rope"),
    "one head": dict(n_heads=1, pos_emb="rope"),  # q, k, v of one head: 3 E floats of scratch
    "two heads": dict(n_heads=2, use_post_norm=True),
}


def make(seed=0, **kw):
    """A small model whose norms have gains of their own (at initialisation all are 1, and a step
    that used one norm's weights in another's place would go unnoticed)."""
    args = dict(vocab_size=97, embed_size=32, n_heads=4, n_blocks=2, block_size=16, pos_emb="learned")
    args.update(kw)
    torch.manual_seed(seed)
    model = TransformerModel(**args).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, RMSNorm):
                m.weight.uniform_(0.5, 2.0)
    return model


def built():
    lib = decode_native.library()
    assert lib is not None, f"the kit's test machines build decode_native.c: {decode_native.status()}"
    return lib


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("name", list(SHAPES))
def test_logits_and_cache_equal_the_readable_steps_at_every_position(name, threads):
    """Both steps fed the same tokens, each on its own cache, up to the last position of the window."""
    model = make(**SHAPES[name])
    prompt = torch.tensor([[3, 14, 15, 9, 26]])
    with torch.inference_mode():
        ref = model.init_state(1)
        b, ref = model.step(prompt, ref)
        state = model.init_state(1)
        model.step(prompt, state)
        native = NativeStep(built(), model, state, threads)
        while ref.pos < model.block_size:
            nxt = int(b.argmax())
            a = native.step(nxt, state.pos)
            state.pos += 1
            b, ref = model.step(torch.tensor([[nxt]]), ref)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            for layer in range(model.n_blocks):  # the new key and value, where the readable step put them
                torch.testing.assert_close(state.k[layer][:, :, :ref.pos], ref.k[layer][:, :, :ref.pos])
                torch.testing.assert_close(state.v[layer][:, :, :ref.pos], ref.v[layer][:, :, :ref.pos])


def test_streaming_the_output_layer_changes_no_logit(monkeypatch):
    """An output layer beyond STREAM_HEAD_BYTES is prefetched past the caches: the same numbers."""
    model = make(vocab_size=1001)
    out = []
    for limit in (2 ** 40, 0):
        monkeypatch.setattr(decode_native, "STREAM_HEAD_BYTES", limit)
        state = model.init_state(1)
        native = NativeStep(built(), model, state, 2)
        assert native.model.stream_head == (limit == 0)
        out.append(torch.cat([native.step(t, p) for p, t in enumerate([5, 900, 17, 1000])]))
    assert torch.equal(out[0], out[1])


def test_generation_at_batch_1_runs_it_on_the_models_own_weights():
    model = make()
    built()
    _, state = decode_fn(model, 1)
    assert state.native is not None
    assert state.native._keep["qkv"][1].data_ptr() == model.blocks[1].attn.qkv.weight.data_ptr()  # no copy
    assert decode_fn(model, 2)[1].native is None  # batch 2: the eager fast step
    assert decode_fn(model, 1, compile=True)[1].native is None  # torch.compile's static step instead


def test_a_token_or_position_out_of_range_is_refused():
    model = make()
    native = NativeStep(built(), model, model.init_state(1), 1)
    with pytest.raises(ValueError, match="token 97"):
        native.step(97, 0)
    with pytest.raises(ValueError, match="position 16"):
        native.step(3, 16)


def test_compile_flags_follow_torchs_cpu_capability():
    flags = decode_native.compile_flags
    for capability in ("AVX2", "AVX512", "AVX512_BF16"):
        assert {"-mavx2", "-mfma"} <= set(flags(capability, "x86_64"))
    assert not any(f.startswith("-m") for f in flags("DEFAULT", "x86_64") + flags("NO AVX", "x86_64")
                   + flags("NEON", "arm64") + flags("AVX2", "arm64"))
    assert not any("native" in f for f in flags("AVX512", "x86_64"))  # a cached library must suit any CPU
    assert "-fopenmp" in flags("AVX2", "x86_64") and "-fopenmp" not in flags("AVX2", "x86_64", openmp=False)


def test_built_once_per_source_and_flags(tmp_path):
    path, why = decode_native.build(tmp_path)
    assert why is None and path.is_file()
    stamp = path.stat().st_mtime_ns
    assert decode_native.build(tmp_path) == (path, None) and path.stat().st_mtime_ns == stamp
    other, _ = decode_native.build(tmp_path, decode_native.compile_flags(openmp=False))
    assert other != path and sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, other.name])


def test_without_openmp_it_runs_on_one_thread_only(tmp_path, monkeypatch):
    path, _ = decode_native.build(tmp_path, decode_native.compile_flags(openmp=False))
    lib = decode_native.load(path)
    assert lib.pico_openmp() == 0
    monkeypatch.setattr(decode_native, "_LIB", {"lib": lib, "why": None, "path": path})
    model = make(pos_emb="rope")
    assert NativeStep.create(model, model.init_state(1), 2) is None  # two threads wanted: the eager step
    state = model.init_state(1)
    native = NativeStep.create(model, state, 1)
    ref = model.init_state(1)
    for p, t in enumerate([4, 8, 15]):
        torch.testing.assert_close(native.step(t, p), model.step(torch.tensor([[t]]), ref)[0], rtol=1e-5, atol=1e-5)
    assert "without OpenMP" in decode_native.status()


def test_a_failing_compiler_is_reported(tmp_path):
    path, why = decode_native.build(tmp_path, ["-O3", "-shared", "-fPIC", "--no-such-flag-here"])
    assert path is None and "--no-such-flag-here" in why and "failed" in why
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind


@pytest.mark.parametrize("cc", [None, "/nonexistent/cc"], ids=["none found", "does not run"])
def test_without_a_compiler_generation_takes_the_eager_step(cc, monkeypatch):
    monkeypatch.setattr(decode_native, "_LIB", {})
    if cc is None:
        monkeypatch.delenv("CC", raising=False)
        monkeypatch.setattr(decode_native.shutil, "which", lambda name: None)
    else:
        monkeypatch.setenv("CC", cc)
    assert decode_native.library() is None
    line = decode_native.status()
    assert line.startswith("unavailable") and ("no C compiler" in line if cc is None else cc in line)
    model = make(pos_emb="rope")
    assert decode_fn(model, 1)[1].native is None
    prompt = [3, 14, 15, 9, 26]
    assert generate(model, None, prompt, 20, greedy=True).new_ids == \
        generate(model, None, prompt, 20, greedy=True, fast=False).new_ids
    check = doctor.check_decode()
    assert check.status is None and "C compiler" in check.fix


def test_switched_off_by_disabled_or_the_environment(monkeypatch):
    model = make()
    built()
    assert decode_native.enabled() and doctor.check_decode().status is True
    with pytest.raises(RuntimeError):
        with decode_native.disabled():
            assert decode_fn(model, 1)[1].native is None
            raise RuntimeError("inside")
    assert decode_native.enabled()  # restored, even after an error
    for value in ("0", "off", "false"):
        monkeypatch.setenv(decode_native.ENV, value)
        assert not decode_native.enabled() and decode_fn(model, 1)[1].native is None
        assert decode_native.status().startswith("off")
    monkeypatch.setenv(decode_native.ENV, "1")
    assert decode_fn(model, 1)[1].native is not None
