"""Which of the engine's kernels work on this machine: each built on a small matrix and checked
against the dense product (`python -m engine info`)."""
from __future__ import annotations

import torch

from engine.speed.kernels import Csr, Int4, Int8, SemiStructured, check


def kernel_probes(device: torch.device | str = "cpu") -> list[dict]:
    """Each of the engine's kernels (engine.speed.kernels), built on a small matrix of this device in
    each dtype and checked against the dense product: whether it works here, and why not."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    out, inp, group = 32, 64, 32
    codes = torch.randint(0, 16, (out, inp), generator=g)
    scale = torch.rand(out, inp // group, generator=g) / 10 + 0.01
    offset = torch.full_like(scale, 8.0)
    w4 = (codes - 8) * scale.repeat_interleave(group, 1)
    q8 = torch.randint(-127, 128, (out, inp), generator=g)
    s8 = torch.rand(out, generator=g) / 100 + 0.001
    w8 = q8 * s8[:, None]
    sparse = w4 * (torch.rand(out, inp, generator=g) < 0.3)
    rows = []
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        builds = {"int8": (lambda: Int8(q8.to(device), s8.to(device), dtype), w8),
                  "int4": (lambda: Int4(codes.to(device), scale.to(device), offset.to(device), group, dtype, 4),
                           w4)}
        if dtype == torch.float32 and device.type == "cpu":
            builds["csr"] = (lambda: Csr(sparse.to(device), dtype, ""), sparse)
        if device.type == "cuda":
            builds["2:4"] = (lambda: SemiStructured(_two_four(w4).to(device), dtype), _two_four(w4))
        for name, (build, w) in builds.items():
            try:
                why = check(build(), w.to(device), dtype)
            except (RuntimeError, NotImplementedError, AssertionError) as e:
                why = f"refused: {str(e).splitlines()[0][:120]}"
            rows.append({"kernel": name, "dtype": dtype_name, "works": not why, "why": why})
    if device.type == "cpu":
        rows.append({"kernel": "2:4", "dtype": "bf16", "works": False, "why": "no 2:4 kernel on the CPU"})
    return rows


def _two_four(w: torch.Tensor) -> torch.Tensor:
    """`w` with the two smaller of every four values along a row set to zero."""
    blocks = w.reshape(w.shape[0], -1, 4)
    keep = blocks.abs().argsort(-1)[..., 2:]
    return torch.zeros_like(blocks).scatter(-1, keep, blocks.gather(-1, keep)).reshape(w.shape)
