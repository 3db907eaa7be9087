"""A model's bytes summed over its layers: each layer's report, and the model's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from engine.formats.bytes import LayerBytes
from engine.layers import LayerInfo


@dataclass(frozen=True)
class LayerReport:
    info: "LayerInfo"
    compressed: bool
    bytes: LayerBytes
    sparsity: float
    bits: int
    energy_kept: float | None  # fraction of squared singular values kept, for factorized layers

    @classmethod
    def left_alone(cls, info: "LayerInfo") -> "LayerReport":
        """A layer the recipe does not compress: stored at fp16."""
        return cls(info, False, LayerBytes(info.name, info.shape, None, ()), 0.0, 16, None)

    def to_dict(self) -> dict:
        b = self.bytes
        tied = self.info.tied_to is not None
        return {
            "name": self.info.name,
            "shape": list(self.info.shape),
            "role": self.info.role,
            "group": self.info.group,
            "tied_to": self.info.tied_to,
            "compressed": self.compressed,
            "original_bytes": 0 if tied else b.original_bytes,
            "compressed_bytes": 0 if tied else (b.compressed_bytes if self.compressed else b.original_bytes),
            "format": ("tied (stored with " + self.info.tied_to + ")") if tied
            else (b.format if self.compressed else "fp16 (left alone)"),
            "rank": b.rank,
            "factors_exceed_dense": b.factors_exceed_dense,
            "energy_kept": self.energy_kept,
            "sparsity": self.sparsity,
            "bits": self.bits,
            "components": {
                "values": sum(p.values for p in b.parts),
                "scales": sum(p.scales for p in b.parts),
                "index": sum(p.index for p in b.parts),
            } if self.compressed and not tied else None,
        }


@dataclass(frozen=True)
class MemoryReport:
    """A model's bytes: `total_params` of the model compressed (a smaller one after structured
    pruning, which removed `removed_params` of the original's), its layers' reports. The
    original's bytes count every parameter of the original."""

    total_params: int
    layers: tuple[LayerReport, ...]
    removed_params: int = 0

    @property
    def original_bytes(self) -> int:
        return 2 * (self.total_params + self.removed_params)

    @property
    def original_bytes_fp32(self) -> int:
        return 4 * (self.total_params + self.removed_params)

    @property
    def untouched_params(self) -> int:
        return self.total_params - sum(
            r.info.params for r in self.layers if r.compressed and r.info.tied_to is None
        )

    @property
    def compressed_bytes(self) -> int:
        return 2 * self.untouched_params + sum(
            r.bytes.compressed_bytes for r in self.layers if r.compressed and r.info.tied_to is None
        )

    @property
    def ratio(self) -> float:
        return self.compressed_bytes / self.original_bytes

    def components(self) -> dict:
        """Bytes by kind, for a stacked bar: values (of dense and factored layers), scales and
        zero-points, masks and indices, and untouched parameters at 16 bits."""
        comp = {"values": 0, "factor_values": 0, "scales": 0, "index": 0, "untouched": 2 * self.untouched_params}
        for r in self.layers:
            if r.compressed and r.info.tied_to is None:
                for p in r.bytes.parts:
                    comp["factor_values" if r.bytes.rank is not None else "values"] += p.values
                    comp["scales"] += p.scales
                    comp["index"] += p.index
        return comp

    def to_dict(self, errors: dict | None = None) -> dict:
        """The report as plain data. With `errors` (layer name -> {'relative_error', 'sqnr_db'},
        for the compressed layers), every layer also gets those two fields: None where it was
        not compressed (a tied head takes its embedding's), SQNR None where exact (infinite)."""
        layers = [r.to_dict() for r in self.layers]
        for layer in layers if errors is not None else ():
            e = errors.get(layer["tied_to"] or layer["name"])
            layer["relative_error"] = None if e is None else e["relative_error"]
            layer["sqnr_db"] = None if e is None or math.isinf(e["sqnr_db"]) else e["sqnr_db"]
        return {
            "original_bytes": self.original_bytes,
            "original_bytes_fp32": self.original_bytes_fp32,
            "compressed_bytes": self.compressed_bytes,
            "ratio": self.ratio,
            "untouched_params": self.untouched_params,
            "removed_params": self.removed_params,
            "components": self.components(),
            "layers": layers,
        }


def memory_report(layers: list[LayerInfo], total_params: int, reports: list[LayerReport],
                  removed_params: int = 0) -> MemoryReport:
    """The memory report of a model from its layers' reports (a tied head, not among them,
    is listed after its embedding, sharing its storage), in model order."""
    reports = list(reports)
    for info in layers:
        if info.tied_to is not None:
            src = next(r for r in reports if r.info.name == info.tied_to)
            reports.append(LayerReport(info, src.compressed, src.bytes, src.sparsity, src.bits, src.energy_kept))
    order = {i.name: k for k, i in enumerate(layers)}
    return MemoryReport(total_params, tuple(sorted(reports, key=lambda r: order[r.info.name])), removed_params)
