"""C kernels for the CPU decode step, compiled on first use with the machine's C compiler.

The kernels (``csrc/decode_kernels.c`` says how each works and why it is faster there):

* ``routed_experts``: the routed part of a DeepSeekMoE layer (DeepSeek-V3 report, eq. 12). At a
  decode step it is bound by reading the hit experts' weights; the kernel streams them with
  prefetch in one OpenMP region instead of a sort, two ``grouped_mm`` calls and a scatter issued
  from Python. ``MoE.routed`` uses it for float32 CPU calls without gradient and with few tokens
  per expert (decode steps, small prefills).
* ``mla_attention``: absorbed MLA (DeepSeek-V2 sec. 2.1.3) for one new token per row over the
  latent cache, from the query to the heads' outputs, in one call per layer instead of about a
  dozen torch kernels. ``FastDecoder`` uses it.
* ``rms_norm``: the decode step's RMSNorms in one call each (torch's composite ``rms_norm`` is
  five kernels: 14 vs 5 µs for ``[16, 512]``). ``FastDecoder`` uses it.

The source is compiled once per source text, compiler flags and CPU into
``cache_dir()/kernels/<hash>/`` (``$NANOSEEK_CACHE`` or ``~/.cache/nanoseek``) with ``$CC`` (else
``cc``) and ``-O3 -march=native -fopenmp``; the library is written atomically, so concurrent first
uses are safe. The kernel's OpenMP threads are torch's own where torch uses GNU OpenMP (the
library's ``libgomp.so.1`` is the one torch already loaded), and it runs on
``torch.get_num_threads()`` of them. With no compiler, a failed build or ``NANOSEEK_CPU_KERNELS=0``
(or ``false``, ``no``, ``off``),
``library()`` is None (one warning says why), the ``*_ok`` checks say no, and callers keep their
torch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from nanoseek.paths import cache_dir

_SOURCE = Path(__file__).with_name("csrc") / "decode_kernels.c"
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
ROWS_PER_EXPERT = 64  # see routed_experts_ok
_OFF = {"0", "false", "no", "off"}  # NANOSEEK_CPU_KERNELS values that turn the kernels off
_ERRORS = {-1: "a shape it does not take", -2: "an expert index outside [0, n_routed_experts)", -3: "out of memory"}


def _cpu_identity() -> str:
    """What ``-march=native`` depends on: the CPU model and feature flags (Linux), else the platform."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features"))}))
    except OSError:
        return platform.platform() + platform.processor()


def _build(cc: list[str], out: Path) -> None:
    """Compile ``_SOURCE`` into ``out`` with the command ``cc`` (program and its own arguments, as
    ``$CC`` may hold them) through a temporary file (atomic rename), readable by all like any
    other library. Raises ``RuntimeError`` with the compiler's message on failure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        done = subprocess.run([*cc, *_FLAGS, str(_SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cc)} failed: {done.stderr.strip()[-2000:]}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o755 & ~umask)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def library_path(cc: list[str]) -> Path:
    """Where the library built by the compiler command ``cc`` lives:
    ``cache_dir()/kernels/<hash of source, compiler, flags and CPU>/decode_kernels.so``."""
    key = hashlib.sha256("\0".join([_SOURCE.read_text(), *cc, *_FLAGS, _cpu_identity()]).encode()).hexdigest()[:16]
    return cache_dir() / "kernels" / key / "decode_kernels.so"


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel library, built on first call; None (with one warning) when it cannot be
    built or loaded, or when ``NANOSEEK_CPU_KERNELS`` is 0, false, no or off. A cached library that
    fails to load is rebuilt once."""
    if os.environ.get("NANOSEEK_CPU_KERNELS", "1").strip().lower() in _OFF:
        return None
    cc = shlex.split(os.environ.get("CC", "")) or [c for c in (shutil.which("cc") or shutil.which("gcc"),) if c]
    if not cc:
        warnings.warn("nanoseek: no C compiler (cc or $CC) found; the CPU decode kernels are off", stacklevel=2)
        return None
    path = library_path(cc)
    try:
        if not path.exists():
            _build(cc, path)
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:  # a damaged cached library (e.g. a truncated copy): build it again, once
            _build(cc, path)
            lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        warnings.warn(f"nanoseek: the CPU decode kernels are off ({e})", stacklevel=2)
        return None
    fn = lib.nanoseek_routed_experts
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 5 + [ctypes.c_void_p] * 3 + [ctypes.c_int]
    fn = lib.nanoseek_mla_attention
    fn.restype = ctypes.c_int
    fn.argtypes = ([ctypes.c_void_p] * 5 + [ctypes.c_int64, ctypes.c_void_p] + [ctypes.c_int64] * 7
                   + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int])
    fn = lib.nanoseek_rms_norm
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p]
    return lib


def routed_experts_ok(x: torch.Tensor, topk_idx: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
                      act) -> bool:
    """Whether ``routed_experts`` applies: CPU float32 tensors, no gradient wanted, SiLU experts,
    ``hidden_size`` and the expert width multiples of 16, at most ``ROWS_PER_EXPERT`` (token,
    expert) pairs per expert on average, and the library built.

    The row limit: against ``grouped_mm`` on the benchmark's layer (hidden 512, width 128, top-6,
    2 cores), the kernel took 0.7-0.9x its time from 12 to 96 rows per expert and 1.1-1.9x from 384
    (MKL's GEMMs win once each expert has many rows); a decode step has about 1.5."""
    E, D, two_i = w_gate_up.shape
    return (x.device.type == "cpu" and x.dtype == w_gate_up.dtype == w_down.dtype == torch.float32
            and act is torch.nn.functional.silu and D % 16 == 0 and two_i % 32 == 0
            and topk_idx.numel() <= ROWS_PER_EXPERT * E
            and not (torch.is_grad_enabled() and (x.requires_grad or w_gate_up.requires_grad or w_down.requires_grad))
            and library() is not None)


def routed_experts(x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor, w_gate_up: torch.Tensor,
                   w_down: torch.Tensor) -> torch.Tensor:
    """Σ_k topk_w[n,k] · FFN_{topk_idx[n,k]}(x[n]) with SwiGLU experts, as ``MoE.routed`` computes it.

    ``x [N, D]`` float32, ``topk_idx [N, K]`` int64, ``topk_w [N, K]``, ``w_gate_up [E, D, 2I]``
    (gate then up columns), ``w_down [E, I, D]`` -> ``[N, D]``. Call only where ``routed_experts_ok``
    holds. Raises ``ValueError`` for shapes that do not match or an expert index outside ``[0, E)``,
    ``RuntimeError`` if the kernel rejects the shapes or runs out of memory.
    """
    N, K = topk_idx.shape
    E, D, two_i = w_gate_up.shape
    if x.shape != (N, D) or topk_w.shape != (N, K) or w_down.shape != (E, two_i // 2, D):
        raise ValueError(f"routed_experts: shapes do not match: x {tuple(x.shape)}, topk_idx {tuple(topk_idx.shape)}, "
                         f"topk_w {tuple(topk_w.shape)}, w_gate_up {tuple(w_gate_up.shape)}, "
                         f"w_down {tuple(w_down.shape)} (want x [N, D], topk_w [N, K], w_down [E, I, D])")
    x = x.contiguous()
    idx = topk_idx.to(torch.int64).contiguous()
    w = topk_w.to(torch.float32).contiguous()
    gu, down = w_gate_up.detach().contiguous(), w_down.detach().contiguous()
    out = torch.empty(N, D, dtype=torch.float32)
    rc = library().nanoseek_routed_experts(x.data_ptr(), idx.data_ptr(), w.data_ptr(), N, K, E, D, two_i // 2,
                                           gu.data_ptr(), down.data_ptr(), out.data_ptr(), torch.get_num_threads())
    if rc == -2:
        raise ValueError(f"routed_experts: an expert index is outside [0, {E})")
    if rc != 0:
        raise RuntimeError(f"routed_experts: the kernel failed ({_ERRORS.get(rc, rc)})")
    return out


def mla_attention_ok(n_heads: int, kv_lora_rank: int, rope_dim: int, v_head_dim: int, dtype: torch.dtype,
                     device: torch.device) -> bool:
    """Whether ``mla_attention`` applies to a layer: CPU float32, 16, 32, 64 or 128 heads (they are
    the vector lanes of the score loop), ``kv_lora_rank``, ``qk_rope_head_dim`` and ``v_head_dim``
    multiples of 16, and the library built. Each step must also pass ``mla_attention_takes``."""
    return (torch.device(device).type == "cpu" and dtype == torch.float32 and n_heads in (16, 32, 64, 128)
            and kv_lora_rank % 16 == 0 and rope_dim % 16 == 0 and v_head_dim % 16 == 0 and library() is not None)


def mla_attention_takes(q: torch.Tensor, kv: torch.Tensor, c: int) -> bool:
    """Whether one step's query ``q [B, H, dn + dr]`` and cache buffer ``kv [B, capacity, c + dr]``
    can go to ``mla_attention``: both float32 on the CPU (not, e.g., bfloat16 under autocast) and
    each batch row of ``kv`` a contiguous ``[capacity, c + dr]`` block (any stride between rows)."""
    return (q.dtype == kv.dtype == torch.float32 and q.device.type == kv.device.type == "cpu"
            and kv.dim() == 3 and kv.stride(2) == 1 and kv.stride(1) == kv.shape[2] and kv.shape[2] > c)


def mla_attention(q: torch.Tensor, rot: torch.Tensor, w_uk: torch.Tensor, w_uv_t: torch.Tensor, kv: torch.Tensor,
                  length: int, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """Absorbed MLA for one new token per row (DeepSeek-V2 sec. 2.1.3, V3 sec. 2.1.1), as
    ``FastDecoder._attention`` computes it in torch:

        scores_hs = scale · ([q^C_h W^UK_h ; RoPE(q^R_h)] · kv[s]) + bias_s,  p = softmax_s
        o_h       = (Σ_s p_hs c^KV_s) W^UV_h

    ``q [B, H, dn + dr]`` (q^C ; q^R before RoPE), ``rot [B, dr, dr]`` (``rope_matrix``),
    ``w_uk [H, dn, c]``, ``w_uv_t [H, c, dv]``, ``kv [B, capacity, c + dr]`` the layer's cache
    buffer whose first ``length`` positions are read (the new token's included; its batch rows may
    be any stride apart, as after ``MLACache.trim_left``), ``bias [B, 1, length]`` additive (0 or
    -inf) -> ``[B, H * dv]``. Call where ``mla_attention_ok`` holds for the layer and
    ``mla_attention_takes`` for the step. Raises ``ValueError`` for other dtypes or shapes,
    ``RuntimeError`` if the kernel rejects the shapes or runs out of memory.
    """
    B, H, dq = q.shape
    c, dv = w_uk.shape[2], w_uv_t.shape[2]
    dr = rot.shape[-1]
    if not mla_attention_takes(q, kv, c):
        raise ValueError(f"mla_attention: q {tuple(q.shape)} {q.dtype} and kv {tuple(kv.shape)} {kv.dtype} "
                         "must be float32 CPU tensors, kv's rows of c + d_rope numbers contiguous")
    if (rot.shape != (B, dr, dr) or w_uk.shape != (H, dq - dr, c) or w_uv_t.shape[:2] != (H, c)
            or kv.shape[0] != B or kv.shape[2] != c + dr or length > kv.shape[1] or bias.numel() != B * length
            or {rot.dtype, w_uk.dtype, w_uv_t.dtype, bias.dtype} != {torch.float32}):
        raise ValueError(f"mla_attention: shapes or dtypes do not match: q {tuple(q.shape)}, rot {tuple(rot.shape)}, "
                         f"w_uk {tuple(w_uk.shape)}, w_uv_t {tuple(w_uv_t.shape)}, kv {tuple(kv.shape)}, "
                         f"length {length}, bias {tuple(bias.shape)}")
    q, rot, bias = q.contiguous(), rot.contiguous(), bias.reshape(B, length).contiguous()
    w_uk, w_uv_t = w_uk.contiguous(), w_uv_t.contiguous()
    out = torch.empty(B, H * dv, dtype=torch.float32)
    rc = library().nanoseek_mla_attention(
        q.data_ptr(), rot.data_ptr(), w_uk.data_ptr(), w_uv_t.data_ptr(), kv.data_ptr(), kv.stride(0),
        bias.data_ptr(), B, H, dq - dr, dr, c, dv, length, scale, out.data_ptr(),
        torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"mla_attention: the kernel failed ({_ERRORS.get(rc, rc)})")
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of ``x [M, D]`` float32 (rows may be strided, columns contiguous) with ``weight [D]``
    float32 -> ``[M, D]``: ``x / sqrt(mean(x²) + eps) * weight``. Raises ``ValueError`` for other
    dtypes or shapes."""
    if (x.dim() != 2 or x.dtype != torch.float32 or weight.dtype != torch.float32 or weight.shape != x.shape[1:]
            or not weight.is_contiguous()):
        raise ValueError(f"rms_norm: x {tuple(x.shape)} {x.dtype} and weight {tuple(weight.shape)} {weight.dtype} "
                         "must be float32, x [M, D] and weight [D] contiguous")
    if x.stride(-1) != 1:
        x = x.contiguous()
    M, D = x.shape
    out = torch.empty(M, D, dtype=torch.float32)
    rc = library().nanoseek_rms_norm(x.data_ptr(), x.stride(0), M, D, weight.data_ptr(), eps, out.data_ptr())
    if rc != 0:
        raise RuntimeError(f"rms_norm: the kernel failed ({_ERRORS.get(rc, rc)})")
    return out
