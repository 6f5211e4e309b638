"""The fast decode step at batch 1 as one compiled call: decode_native.c, built on first use.

Why. At batch 1 a token's arithmetic is small: what it must cost is reading the weights once (for
the benchmark's 61 MiB model, ~1.4 ms on two AVX2 cores). decode.py's eager fast step computes it
with ~50 torch operations per token, and each pays a fixed cost (Python, the dispatcher, a fork and
join of the thread pool, caches flushed by the output layer); on two AVX2 cores that left it at
1.3-1.9x the weight-read time. decode_native.c does the whole step in one call: one parallel region,
four barriers per block, every product a run of contiguous weight rows, the output layer streamed
past the caches. Measured on two AVX2 cores for that model, in the same runs: 0.84-0.91x the
weight-read time (`python -m picollm_helpers.bench quick`; below 1x because the blocks' weights stay
cached from one token to the next); for the laptop profile's model, 0.10 ms per token against 0.33.

How. `library()` compiles decode_native.c with the system's C compiler (cc, or $CC) into the kit's
cache folder, once per source, flags and compiler: about 0.3 s. The vector instructions
follow torch's CPU capability (AVX2 or AVX512 -> -mavx2 -mfma; none beyond the baseline where it is
lower, or set lower with ATEN_CPU_CAPABILITY); OpenMP (-fopenmp) runs it on several threads, and it shares
torch's own OpenMP runtime (the same libgomp.so.1). ctypes calls it, with the GIL released.

Where it applies: what `NativeStep.supports` accepts (batch 1, float32 weights on the CPU; any
positions, pre- or post-norm). Everything else, and any machine where the library cannot be built
(no compiler, or no OpenMP while the step wants several threads), takes decode.py's eager fast
step, silently: `status()` says which and why, and `make doctor` shows it. PICOLLM_NATIVE_DECODE=0,
or `with disabled():`, turns it off (the benchmark times both).

The weights are read in place, from the model's own tensors: nothing is copied per generation. The
KV cache is the readable step's own (KVCache's k and v), so either step can continue the other.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from ..config import cache_dir
from .transformer import rope_cos_sin, sinusoidal_embedding

SOURCE = Path(__file__).with_name("decode_native.c")
ENV = "PICOLLM_NATIVE_DECODE"
_P = ctypes.c_void_p
STREAM_HEAD_BYTES = 16 * 2 ** 20  # an output layer beyond this is streamed past the caches (decode_native.c)


class _Model(ctypes.Structure):
    """decode_native.c's pico_model, field for field."""
    _fields_ = ([(n, ctypes.c_int) for n in ("E", "H", "hd", "F", "V", "L", "max_len", "post_norm",
                                                     "stream_head")]
                + [("eps", ctypes.c_float), ("embed_mult", ctypes.c_float)]
                + [(n, _P) for n in ("wte", "pos_table", "rope_cos", "rope_sin", "norm1", "qkv", "proj", "norm2",
                                     "fc", "mproj", "k_cache", "v_cache", "norm_f", "head", "x", "y", "hid",
                                     "logits", "priv")])


_LIB = {}          # built library (or the reason there is none), once per process
_SWITCH = [True]   # disabled() turns it off for a while


def enabled() -> bool:
    """False under `with disabled():` or with PICOLLM_NATIVE_DECODE=0 (or false/no/off)."""
    return _SWITCH[0] and os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@contextlib.contextmanager
def disabled():
    """Generation inside takes the eager fast step (to compare the two)."""
    before = _SWITCH[0]
    _SWITCH[0] = False
    try:
        yield
    finally:
        _SWITCH[0] = before


def compile_flags(capability=None, machine=None, openmp=True) -> list:
    """The compiler's flags: optimisation; on x86 where torch's CPU capability is AVX2 or more, AVX2
    and FMA (AVX-512 measured no faster: the step is limited by reading memory, and naming the
    instructions, not -march=native, keeps a library built on one CPU safe on another); OpenMP."""
    capability = (capability or torch.backends.cpu.get_cpu_capability()).upper()
    machine = (machine or platform.machine()).lower()
    flags = ["-O3", "-fPIC", "-shared"]
    if machine in ("x86_64", "amd64") and capability.startswith(("AVX2", "AVX512")):
        flags += ["-mavx2", "-mfma"]
    return flags + (["-fopenmp"] if openmp else ["-fopenmp-simd"])  # (simd: the vectorised sums alone)


def _compiler():
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def build(folder=None, flags=None):
    """Compile decode_native.c (once per source, flags and compiler; cached in <cache>/native) ->
    (path of the shared library, None) or (None, why not). Without `flags`: compile_flags(), and
    where the compiler has no OpenMP (Apple's clang), the same without it."""
    cc = _compiler()
    if not cc:
        return None, "no C compiler found (cc, gcc, clang or $CC)"
    if flags is None:
        path, why = build(folder, compile_flags())
        if path is None:
            path, _ = build(folder, compile_flags(openmp=False))
        return path, (why if path is None else None)
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"the C compiler {cc} does not run ({type(e).__name__}: {e})"
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join([cc, version] + flags).encode()).hexdigest()[:16]
    folder = Path(folder or cache_dir() / "native")
    path = folder / f"decode_native-{digest}.so"
    if path.exists():
        return path, None
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".so")
    os.close(fd)
    try:
        run = subprocess.run([cc, *flags, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True,
                             timeout=120)
        if run.returncode:
            last = (run.stderr.strip().splitlines() or ["(no message)"])[-1]
            return None, f"{Path(cc).name} {' '.join(flags)} failed: {last[:200]}"
        os.replace(tmp, path)  # whole or not at all, if two processes build at once
        return path, None
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"compiling with {cc} failed ({type(e).__name__}: {e})"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(path):
    """The compiled library at `path`, its functions typed for ctypes (OSError if it does not load)."""
    lib = ctypes.CDLL(str(path))
    lib.pico_step.argtypes = [ctypes.POINTER(_Model), ctypes.c_long, ctypes.c_int, ctypes.c_int]
    lib.pico_step.restype = ctypes.c_int
    lib.pico_openmp.restype = ctypes.c_int
    lib.pico_priv_floats.argtypes = [ctypes.POINTER(_Model)]
    lib.pico_priv_floats.restype = ctypes.c_size_t
    return lib


def library():
    """The loaded library, or None (status() says why). Built and loaded once per process."""
    if "lib" not in _LIB:
        lib, (path, why) = None, build()
        if path is not None:
            try:
                lib = load(path)
            except (OSError, AttributeError) as e:
                why = f"loading {path.name} failed ({e})"
        _LIB.update(lib=lib, why=why, path=path)
    return _LIB["lib"]


def status() -> str:
    """One line: whether generation at batch 1 runs the compiled step here, and if not, why."""
    if not enabled():
        return f"off ({ENV}=0 or disabled()): generation takes the eager fast step"
    lib = library()
    if lib is None:
        return f"unavailable: {_LIB['why']}; generation takes the eager fast step"
    return (f"compiled: generation at batch 1 runs models/decode_native.c ({_LIB['path'].name}, "
            + ("OpenMP)" if lib.pico_openmp() else "without OpenMP: on one thread only)"))


class NativeStep:
    """One generation's compiled step: the model's weights (in place), tables, the cache, scratch.

    step(token, pos) -> logits (1, V) of a new tensor; the cache is written at pos."""

    @staticmethod
    def supports(model, batch_size, dtype) -> bool:
        """True where the compiled step computes what model.step does: batch 1, float32 weights on the CPU."""
        w = model.wte.weight
        return (batch_size == 1 and dtype == torch.float32 and w.device.type == "cpu"
                and all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters()))

    @classmethod
    def create(cls, model, state, threads):
        """A NativeStep for a softmax TransformerModel and its KVCache at batch 1, or None where the
        compiled step is off, unavailable, or cannot run on `threads` threads."""
        if not enabled():
            return None
        lib = library()
        if lib is None or (threads > 1 and not lib.pico_openmp()):
            return None
        return cls(lib, model, state, threads)

    def __init__(self, lib, model, state, threads):
        self.lib, self.threads = lib, threads
        E, L = model.embed_size, model.n_blocks
        blocks = model.blocks
        F = blocks[0].mlp.fc.weight.size(0)

        def t(x):  # a contiguous float32 snapshot (the parameters already are: no copy then)
            return x.detach().to(torch.float32).contiguous()
        keep = {"norm1": [t(b.norm1.weight) for b in blocks], "qkv": [t(b.attn.qkv.weight) for b in blocks],
                "proj": [t(b.attn.proj.weight) for b in blocks], "norm2": [t(b.norm2.weight) for b in blocks],
                "fc": [t(b.mlp.fc.weight) for b in blocks], "mproj": [t(b.mlp.proj.weight) for b in blocks],
                "k_cache": state.k, "v_cache": state.v}
        m = _Model(E=E, H=model.n_heads, hd=model.head_dim, F=F, V=model.vocab_size, L=L,
                   max_len=state.max_len, post_norm=int(model.use_post_norm),
                   stream_head=int(model.lm_head.weight.nbytes > STREAM_HEAD_BYTES),
                   eps=torch.finfo(torch.float32).eps, embed_mult=model.embed_mult)
        self._arrays = []
        for name, tensors in keep.items():
            for x in tensors:
                if not (x.is_contiguous() and x.dtype == torch.float32):
                    raise ValueError(f"{name}: the compiled step needs contiguous float32 tensors")
            arr = (_P * L)(*[x.data_ptr() for x in tensors])
            self._arrays.append(arr)
            setattr(m, name, ctypes.cast(arr, _P))
        pos = torch.arange(state.max_len)
        tables = {"wte": t(model.wte.weight), "head": t(model.lm_head.weight)}
        if model.pos_emb == "learned":
            tables["pos_table"] = t(model.wpe.weight)
        elif model.pos_emb == "sinusoidal":
            tables["pos_table"] = sinusoidal_embedding(pos, E).to(torch.float32).contiguous()
        elif model.pos_emb == "rope":
            tables["rope_cos"], tables["rope_sin"] = (c.contiguous() for c in rope_cos_sin(pos, model.head_dim,
                                                                                              torch.float32))
        if not model.use_post_norm:
            tables["norm_f"] = t(model.norm_f.weight)
        scratch = {"x": E, "y": E, "hid": F, "priv": threads * lib.pico_priv_floats(ctypes.byref(m))}
        tables.update({k: torch.zeros(n) for k, n in scratch.items()})
        for name, x in tables.items():
            setattr(m, name, x.data_ptr())
        self.vocab = model.vocab_size
        self.model, self._keep, self._tables = m, keep, tables  # the struct points into these

    def step(self, token: int, pos: int):
        """Token `token` at position pos -> its logits, (1, V); writes the cache at pos."""
        logits = torch.empty(1, self.vocab)
        self.model.logits = logits.data_ptr()
        if self.lib.pico_step(ctypes.byref(self.model), token, pos, self.threads):
            raise ValueError(f"token {token} or position {pos} out of range (V={self.vocab}, "
                             f"max_len={self.model.max_len})")
        return logits
