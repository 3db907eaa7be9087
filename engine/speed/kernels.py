"""Kernels for stored matrices: each one computed with the kernel its stored format allows.

    int8, per channel, symmetric        torch._weight_int8pack_mm (CPU and CUDA)
    2 to 4 bits in groups of 32..256    int4 "tinygemm": torch._weight_int4pack_mm_for_cpu on the
                                        CPU, torch._weight_int4pack_mm on CUDA (a 2- or 3-bit grid
                                        is a subset of the 4-bit one: the same kernel holds it)
    llama.cpp's q4_0, q4_1           the same int4 kernel in groups of 32 (a q4_1 block's minimum is
                                        tinygemm's zero); its other types run dense here
    16 bits, 2:4 sparse                 torch.sparse.to_sparse_semi_structured on a CUDA GPU that
                                        has it (compute capability 8.0 or more); none on the CPU
    16 bits, unstructured sparse        a CSR matmul, where it measured faster than dense
    anything else                       dense, in the activations' dtype ("dense fallback": 5, 6,
                                        7 bits, k-means codebooks, per-tensor grids, ...)
    a kernel slower than dense here     dense ("dense (faster here)"), where the runtime is given a
                                        workload and the kernel measured slower (engine.speed.tuning)

Which one a stored matrix gets, and why: engine.speed.choosing. Every kernel is checked when it
is built (`check`): its output on a probe input must match the dense product of the stored
values. `join` puts several matrices' products into one kernel. The tensors take the device of
the stored values.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

PROBE_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}  # relative, on the probe


class Matmul(nn.Module):
    """y = x W^T for one stored matrix W (out, in), on one kernel; `kernel` names it, `note`
    says why it was chosen (or why a faster one was not)."""

    kernel = "dense"

    def __init__(self, note: str = ""):
        super().__init__()
        self.note = note

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        return self.mm(x.reshape(-1, x.shape[-1]).contiguous()).reshape(*lead, -1)  # tinygemm wants it contiguous

    def mm(self, x: torch.Tensor) -> torch.Tensor:  # (tokens, in) -> (tokens, out)
        raise NotImplementedError

    @property
    def out_features(self) -> int:
        raise NotImplementedError

    @property
    def in_features(self) -> int:
        raise NotImplementedError


class Dense(Matmul):
    def __init__(self, w: torch.Tensor, dtype: torch.dtype, note: str = "", fallback: bool = False,
                 timed: bool = False):
        super().__init__(note)
        self.register_buffer("w", w.to(dtype).contiguous())
        self.kernel = "dense fallback" if fallback else "dense (faster here)" if timed else "dense"

    def mm(self, x):
        return F.linear(x, self.w)

    forward = mm  # F.linear takes any leading shape: no reshape around it

    @property
    def out_features(self):
        return self.w.shape[0]

    @property
    def in_features(self):
        return self.w.shape[1]


class Int8(Matmul):
    """Signed 8-bit codes per row with one scale per output channel."""

    kernel = "int8"

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype):
        super().__init__("int8 weight-only, one scale per output channel")
        self.register_buffer("q", codes.to(torch.int8).contiguous())
        self.register_buffer("scale", scale.to(dtype).contiguous())

    def mm(self, x):
        return torch._weight_int8pack_mm(x, self.q, self.scale)

    @property
    def out_features(self):
        return self.q.shape[0]

    @property
    def in_features(self):
        return self.q.shape[1]


class Int4(Matmul):
    """Codes of 4 bits or fewer in groups along the input, as tinygemm packs them: a value is
    (code - 8) x scale + zero, so a grid with offset o has zero = (8 - o) x scale."""

    kernel = "int4"

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, group: int,
                 dtype: torch.dtype, bits: int):
        super().__init__(f"{bits}-bit codes in groups of {group}" + (", on the 4-bit kernel" if bits < 4 else ""))
        out, inp = codes.shape
        self.group, self.cpu = group, codes.device.type == "cpu"
        q = codes.to(torch.int32).contiguous()
        if self.cpu:
            packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
        else:  # CUDA: two codes per byte, the even column in the high nibble, then tinygemm's tiles
            q8 = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
            packed = torch._convert_weight_to_int4pack(q8, 8)
        scale = scale.reshape(out, inp // group).float()
        zero = (8 - offset.reshape(out, inp // group).float()) * scale
        self.register_buffer("packed", packed)
        self.register_buffer("scales_zeros", torch.stack([scale.t(), zero.t()], -1).to(dtype).contiguous())

    def mm(self, x):
        if self.cpu:
            return torch._weight_int4pack_mm_for_cpu(x, self.packed, self.group, self.scales_zeros)
        return torch._weight_int4pack_mm(x, self.packed, self.group, self.scales_zeros)

    @property
    def out_features(self):
        return self.scales_zeros.shape[1]

    @property
    def in_features(self):
        return self.scales_zeros.shape[0] * self.group

    @classmethod
    def joined(cls, parts: list["Int4"]) -> "Int4":
        """The parts' rows in one kernel: tinygemm's packing keeps each output row (CPU) or each tile
        of 8 rows (CUDA) apart, so packed codes join along the rows, scales and zeros along theirs."""
        new = cls.__new__(cls)
        Matmul.__init__(new, parts[0].note)
        new.group, new.cpu = parts[0].group, parts[0].cpu
        new.register_buffer("packed", torch.cat([p.packed for p in parts]))
        new.register_buffer("scales_zeros", torch.cat([p.scales_zeros for p in parts], 1).contiguous())
        return new


class InBf16(Matmul):
    """A kernel built for bf16 activations inside a model that computes in fp32: the input rounded
    to bf16, the output back to fp32. On a processor without native bf16 the int4 kernel was
    measured faster this way than with fp32 activations (engine.speed.tuning chooses)."""

    def __init__(self, inner: Matmul):
        super().__init__(inner.note + ", bf16 activations")
        self.inner = inner
        self.kernel = f"{inner.kernel} (bf16 activations)"
        self.group = getattr(inner, "group", None)

    def mm(self, x):
        return self.inner.mm(x.to(torch.bfloat16)).to(x.dtype)

    @property
    def out_features(self):
        return self.inner.out_features

    @property
    def in_features(self):
        return self.inner.in_features


class Csr(Matmul):
    """Unstructured sparsity: only the kept values, in compressed sparse rows."""

    kernel = "csr"

    def __init__(self, w: torch.Tensor, dtype: torch.dtype, note: str):
        super().__init__(note)
        with warnings.catch_warnings():  # torch: "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            self.w = w.to(dtype).to_sparse_csr()

    def mm(self, x):
        return torch.sparse.mm(self.w, x.t()).t()


class SemiStructured(Matmul):
    """2:4 sparsity on NVIDIA's sparse tensor cores."""

    kernel = "2:4"

    def __init__(self, w: torch.Tensor, dtype: torch.dtype):
        super().__init__("2:4 sparse tensor cores")
        self.w = torch.sparse.to_sparse_semi_structured(w.to(dtype))

    def mm(self, x):
        return F.linear(x, self.w)


def join(mats: list[Matmul]) -> Matmul | None:
    """One module computing the matrices' products side by side (outputs concatenated), on their
    kernel, where they all have the same one: dense, int8, int4 of one group size (or one of those
    with bf16 activations). None otherwise, or where the joined kernel does not compute what the
    parts do on a probe (within the dtype's probe tolerance)."""
    kinds = {(type(m), getattr(m, "group", None), type(getattr(m, "inner", None))) for m in mats}
    if len(kinds) != 1 or len(mats) < 2:
        return None
    first = mats[0]
    if isinstance(first, InBf16):
        inner = join([m.inner for m in mats])
        new = None if inner is None else InBf16(inner)
        dtype = torch.float32
    elif isinstance(first, Int4):
        new, dtype = Int4.joined(mats), first.scales_zeros.dtype
    elif isinstance(first, Int8):
        new, dtype = Int8(torch.cat([m.q for m in mats]), torch.cat([m.scale for m in mats]), first.scale.dtype), \
            first.scale.dtype
    elif type(first) is Dense:
        new, dtype = Dense(torch.cat([m.w for m in mats]), first.w.dtype), first.w.dtype
    else:
        return None
    if new is None:
        return None
    new.kernel, new.note = first.kernel, first.note
    x = _probe(first.in_features, next(iter(first.buffers())).device, dtype)
    with torch.inference_mode():
        err = _relative_error(new(x), torch.cat([m(x) for m in mats], -1))
    return new if err <= PROBE_TOLERANCE.get(dtype, 2e-2) / 10 else None


def _probe(width: int, device, dtype: torch.dtype) -> torch.Tensor:
    """The probe input every kernel is checked on: 3 rows of a seeded normal."""
    g = torch.Generator(device="cpu").manual_seed(0)
    return torch.randn(3, width, generator=g).to(device, dtype)


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.float(), want.float()
    return ((got - want).norm() / want.norm().clamp_min(1e-12)).item()


def check(module: Matmul, w: torch.Tensor, dtype: torch.dtype, tolerance: float | None = None) -> str:
    """'' when the kernel computes the dense product of `w` on a probe input (within `tolerance`,
    relative; default the dtype's), else why not."""
    x = _probe(w.shape[1], w.device, dtype)
    try:
        with torch.inference_mode():
            got = module(x)
    except RuntimeError as e:
        return f"{module.kernel} kernel refused: {str(e).splitlines()[0][:120]}"
    err = _relative_error(got, F.linear(x.float(), w.float()))
    if not err <= (tolerance if tolerance is not None else PROBE_TOLERANCE.get(dtype, 2e-2)):
        return f"{module.kernel} kernel gave a relative error of {err:.1e} on a probe"
    return ""
