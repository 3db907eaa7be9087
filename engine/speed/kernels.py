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

`matmul(stored, recipe, dtype)` builds the module for one stored matrix (pipeline.StoredMatrix)
and says which kernel it chose and why. Every kernel is checked when it is built: its output
on a probe input must match the dense product of the stored values, else the matrix falls
back to dense and the reason says so. The tensors take the device of the stored values.
"""
from __future__ import annotations

import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from engine.formats.grid import code_offset, per_entry, quantize

INT4_GROUPS = (32, 64, 128, 256)
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

    forward = mm

    @property
    def out_features(self):
        return self.w.shape[0]

    @property
    def in_features(self):
        return self.w.shape[1]  # F.linear takes any leading shape: no reshape around it


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
    ref = next(iter(first.buffers()))
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(3, first.in_features, generator=g).to(ref.device, dtype)
    with torch.inference_mode():
        want = torch.cat([m(x) for m in mats], -1).float()
        got = new(x).float()
    err = ((got - want).norm() / want.norm().clamp_min(1e-12)).item()
    return new if err <= PROBE_TOLERANCE.get(dtype, 2e-2) / 10 else None


# ---------------------------------------------------------------------------------------
# Choosing
# ---------------------------------------------------------------------------------------


def _codes(m, recipe) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The stored codes of a matrix on a uniform grid, with per-entry scale and offset."""
    rows, cols = m.values.shape
    scale, zero = per_entry((m.grid.scale, m.grid.zero), rows, cols, recipe.granularity, recipe.group_size)
    offset = code_offset(zero, recipe.bits, recipe.symmetric)
    return quantize(m.values, scale, offset, recipe.bits), scale, offset


def _quantized(m, recipe, dtype) -> tuple[Matmul | None, str]:
    """The integer kernel for a matrix on a uniform grid, or None and why not."""
    rows, cols = m.values.shape
    b, g = recipe.bits, recipe.granularity
    if b == 8:
        if g != "channel" or not recipe.symmetric:
            return None, f"int8 kernel: per channel and symmetric only (this is {g}, " \
                         f"{'symmetric' if recipe.symmetric else 'asymmetric'})"
        codes, scale, offset = _codes(m, recipe)
        return Int8(codes - offset, scale[:, 0], dtype), ""
    if b <= 4:
        gs = min(recipe.group_size, cols)  # a group wider than the row is the row
        if g != "group" or gs not in INT4_GROUPS:
            return None, f"int4 kernel: groups of {', '.join(map(str, INT4_GROUPS))} only (this is " \
                         f"{g if g != 'group' else f'groups of {gs}'})"
        if cols % gs:
            return None, f"int4 kernel: groups of {gs} do not divide the input width {cols}"
        codes, scale, offset = _codes(m, recipe)
        return Int4(codes, scale[:, ::gs], offset[:, ::gs], gs, dtype, b), ""
    return None, f"no kernel for {b}-bit codes"


def _ggml(m, dtype) -> tuple[Matmul | None, str]:
    """The int4 kernel for llama.cpp's q4_0 / q4_1 blocks, or None and why not."""
    fmt = m.grid.ggml
    if fmt not in ("q4_0", "q4_1"):
        return None, f"no torch kernel for llama.cpp's {fmt} blocks (llama.cpp runs them)"
    from engine.formats.ggml.legacy import unpack4

    q, d, lo = unpack4(fmt, m.grid.raw, m.values.shape[1])
    offset = torch.full_like(d, 8.0) if lo is None else -lo / torch.where(d == 0, torch.ones_like(d), d)
    return Int4(q, d, offset, 32, dtype, 4), ""


def _sparse(w, m, recipe, dtype) -> tuple[Matmul | None, str]:
    """A sparse kernel for a pruned 16-bit matrix, or None and why not."""
    if recipe.nm == (2, 4):
        if w.device.type == "cuda" and torch.cuda.get_device_capability(w.device)[0] >= 8:
            return SemiStructured(w, dtype), ""
        note = "no 2:4 kernel on the CPU" if w.device.type == "cpu" else "no 2:4 kernel on this GPU"
    else:
        note = f"{m.kept / w.numel():.0%} kept"
    if w.device.type != "cpu" or dtype != torch.float32:
        return None, note + "; CSR matmul only in fp32 on the CPU"
    csr, dense = Csr(w, dtype, note + ", CSR measured faster than dense"), Dense(w, dtype)
    if _seconds(csr, w) < _seconds(dense, w):
        return csr, ""
    return None, note + "; CSR measured slower than dense"


def _seconds(module: Matmul, w: torch.Tensor, repeats: int = 5) -> float:
    x = torch.randn(1, w.shape[1], device=w.device, dtype=torch.float32)
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def matmul(m, recipe, dtype: torch.dtype, workload=None) -> Matmul:
    """The module computing x W^T for one stored matrix `m` under its layer's `recipe`, in `dtype`.
    With a `workload` (engine.speed.tuning.Workload), an int8 or int4 kernel runs only where it is
    measured at least as fast as the dense product on this machine; else dense, saying why."""
    w = m.values
    module, why = None, ""
    try:
        if m.grid.codebook is not None:
            why = "no kernel for k-means codebooks"
        elif m.grid.ggml is not None:
            module, why = _ggml(m, dtype)
        elif m.grid.floats is not None:
            why = f"no torch kernel for {m.grid.floats} (the values run dense)"
        elif m.grid.channel is not None:
            why = "no kernel divides the inputs by AWQ's channel scales"
        elif m.grid.scale is not None:
            module, why = _quantized(m, recipe, dtype)
        elif m.keep is not None:
            module, why = _sparse(w, m, recipe, dtype)
    except RuntimeError as e:  # a kernel's own limits (tinygemm on the CPU: rows in 16s; 2:4: fp16 or bf16)
        kernel = "int4" if m.grid.ggml else f"int{8 if recipe.bits == 8 else 4}" if m.grid.scale is not None \
            else "sparse"
        why = f"{kernel} kernel refused: {str(e).splitlines()[0][:120]}"
    if module is not None:
        why = check(module, w, dtype)
    if module is None or why:
        return Dense(w, dtype, why, fallback=bool(why))
    if workload is not None and isinstance(module, (Int8, Int4)):
        from engine.speed.tuning import fastest

        candidates = [module]
        if dtype == torch.float32:  # the same kernel with bf16 activations, where it computes right
            in_bf16 = _in_bf16(m, recipe, w)
            if in_bf16 is not None:
                candidates.append(in_bf16)
        module, why = fastest(candidates, w, dtype, workload)
        if module is None:
            return Dense(w, dtype, why, timed=True)
        module.note = "; ".join(n for n in (module.note, why) if n)
    return module


def _in_bf16(m, recipe, w) -> InBf16 | None:
    """The matrix's kernel built for bf16 activations, wrapped to take and give fp32; None where it
    cannot be built or computes wrongly."""
    try:
        inner, _ = _ggml(m, torch.bfloat16) if m.grid.ggml is not None else _quantized(m, recipe, torch.bfloat16)
    except RuntimeError:
        return None
    if inner is None:
        return None
    module = InBf16(inner)
    return None if check(module, w, torch.float32, PROBE_TOLERANCE[torch.bfloat16]) else module


def check(module: Matmul, w: torch.Tensor, dtype: torch.dtype, tolerance: float | None = None) -> str:
    """'' when the kernel computes the dense product of `w` on a probe input (within `tolerance`,
    relative; default the dtype's), else why not."""
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(3, w.shape[1], generator=g).to(w.device, dtype)
    try:
        with torch.inference_mode():
            got = module(x).float()
    except RuntimeError as e:
        return f"{module.kernel} kernel refused: {str(e).splitlines()[0][:120]}"
    want = F.linear(x.float(), w.float())
    err = ((got - want).norm() / want.norm().clamp_min(1e-12)).item()
    if not err <= (tolerance if tolerance is not None else PROBE_TOLERANCE.get(dtype, 2e-2)):
        return f"{module.kernel} kernel gave a relative error of {err:.1e} on a probe"
    return ""
