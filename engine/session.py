"""The engine's API for the app and the command line.

    explorer = Explorer.open("minilm")        # shared per model: original, SVD cache, evaluator
    work = explorer.workspace()               # per user: a working copy, never the original
    applied = work.apply(Recipe(rank_ratio=0.5, bits=4, sparsity=0.5))
    applied.memory.compressed_bytes, work.layer_errors(), work.evaluate(quick=True)

The original model is never modified: a workspace deep-copies it once, installs holders in
its compressible layers, and each `apply` refills them from the original weights and the
cached factorizations.
"""
from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass

import torch

from . import compare, transforms
from .compress import CompressedMatrix, compress_matrix
from .evaluate import make_evaluator
from .layers import LayerInfo, find_layers, install, weight_matrix
from .memory import LayerBytes
from .models import Loaded, load
from .recipe import Recipe


@dataclass(frozen=True)
class LayerReport:
    info: LayerInfo
    compressed: bool
    bytes: LayerBytes
    sparsity: float
    bits: int
    energy_kept: float | None  # fraction of squared singular values kept, for factorized layers

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
    total_params: int
    layers: tuple[LayerReport, ...]

    @property
    def original_bytes(self) -> int:
        return 2 * self.total_params

    @property
    def original_bytes_fp32(self) -> int:
        return 4 * self.total_params

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

    def to_dict(self) -> dict:
        return {
            "original_bytes": self.original_bytes,
            "original_bytes_fp32": self.original_bytes_fp32,
            "compressed_bytes": self.compressed_bytes,
            "ratio": self.ratio,
            "untouched_params": self.untouched_params,
            "components": self.components(),
            "layers": [r.to_dict() for r in self.layers],
        }


@dataclass(frozen=True)
class Applied:
    recipe: Recipe
    memory: MemoryReport
    seconds: float


class Explorer:
    """One loaded model, shared by every workspace: never modified after loading."""

    def __init__(self, loaded: Loaded):
        self.loaded = loaded
        self.layers = find_layers(loaded.model)
        self.total_params = sum(p.numel() for p in loaded.model.parameters())
        self._svd: dict[str, tuple] = {}
        self._sorted_abs: dict[str, torch.Tensor] = {}
        self._evaluators: dict = {}
        self._lock = threading.RLock()

    @classmethod
    def open(cls, ref: str, device: str | None = None, trust_remote_code: bool = False) -> "Explorer":
        return cls(load(ref, device, trust_remote_code))

    @property
    def kind(self) -> str:
        return self.loaded.kind

    def weight(self, name: str) -> torch.Tensor:
        """The original (out, in) weight of a layer (a view: do not modify)."""
        return weight_matrix(self.loaded.model.get_submodule(name)).detach()

    def layer(self, name: str) -> LayerInfo:
        return next(i for i in self.layers if i.name == name)

    def selected(self, recipe: Recipe) -> list[LayerInfo]:
        """Layers the recipe compresses (a tied head follows its embedding)."""
        return [
            i for i in self.layers
            if i.tied_to is None and recipe.selects(i.name, i.group)
            and (recipe.include_embeddings or i.role not in ("embedding", "head"))
        ]

    # -- factorizations and spectra -------------------------------------------------------
    def factors(self, name: str):
        """(U, S, Vh) of a layer, computed once and cached."""
        with self._lock:
            if name not in self._svd:
                self._svd[name] = transforms.svd(self.weight(name))
            return self._svd[name]

    def sorted_abs(self, name: str) -> torch.Tensor:
        """|W| of a layer, flattened and sorted, computed once: any sparsity's magnitude
        threshold is then a lookup (one more copy of the layer's weights in memory)."""
        with self._lock:
            if name not in self._sorted_abs:
                self._sorted_abs[name] = self.weight(name).abs().flatten().sort().values
            return self._sorted_abs[name]

    def factorize(self, names=None, progress=None) -> float:
        """Compute (and cache) the SVD of the given layers, default all but embeddings/head.
        `progress(done, total, name)` is called after each layer. Returns seconds."""
        t0 = time.perf_counter()
        names = names or [i.name for i in self.selected(Recipe())]
        for k, name in enumerate(names):
            self.factors(name)
            if progress:
                progress(k + 1, len(names), name)
        return time.perf_counter() - t0

    def factorized(self) -> bool:
        return all(i.name in self._svd for i in self.selected(Recipe()))

    def ranks_for(self, recipe: Recipe) -> list[dict]:
        """For each distinct full rank among the selected layers: the rank the recipe gives
        (None: stays dense) and how many layers share it."""
        out: dict[int, dict] = {}
        for i in self.selected(recipe):
            row = out.setdefault(i.full_rank, {"full_rank": i.full_rank, "rank": recipe.rank_for(i.full_rank),
                                               "layers": 0})
            row["layers"] += 1
        return sorted(out.values(), key=lambda r: r["full_rank"])

    def energy_grid(self, points: int = 41) -> dict:
        """Energy kept by every factorizable layer at `points` normalized ranks from 0 to 1:
        {'layers': [name], 'ratios': [r / full rank], 'energy': [[per ratio] per layer]}."""
        ratios = [k / (points - 1) for k in range(points)]
        names = [i.name for i in self.selected(Recipe())]
        energy = []
        for name in names:
            e = self.factors(name)[1].double().square().cumsum(0)
            e = torch.cat([e.new_zeros(1), e / e[-1]])
            n = e.numel() - 1
            energy.append([e[round(r * n)].item() for r in ratios])
        return {"layers": names, "ratios": ratios, "energy": energy}

    def spectrum(self, name: str) -> dict:
        """Singular values of a layer and what they imply."""
        info = self.layer(name)
        s = self.factors(name)[1]
        return {
            "name": name,
            "shape": list(info.shape),
            "singular_values": s.tolist(),
            "effective_rank": transforms.effective_rank(s),
            "break_even_rank": transforms.break_even_rank(*info.shape),
            "rank_for_90pct_energy": int((s.double().square().cumsum(0) / s.double().square().sum() < 0.9).sum()) + 1,
        }

    # -- evaluation -----------------------------------------------------------------------
    def evaluator(self, eval_text: str | None = None, eval_name: str | None = None):
        """The quality evaluator for this model (reference outputs computed on first use)."""
        key = (eval_text, eval_name)
        with self._lock:
            if key not in self._evaluators:
                self._evaluators[key] = make_evaluator(self.loaded, eval_text, eval_name)
            return self._evaluators[key]

    def workspace(self) -> "Workspace":
        return Workspace(self)


class Workspace:
    """A working copy of the model that recipes are applied to."""

    def __init__(self, explorer: Explorer):
        self.explorer = explorer
        original = explorer.loaded.model
        # share every tensor with the original (nothing here writes to them); copy only modules
        memo = {id(t): t for t in [*original.parameters(), *original.buffers()]}
        self.model = copy.deepcopy(original, memo)
        self.holders = install(self.model, explorer.layers)
        self.applied: Applied | None = None

    def apply(self, recipe: Recipe, factors=None) -> Applied:
        """Fill every layer from the original weights under `recipe`. `factors(name)` overrides
        the SVD source (the benchmark passes one that recomputes, to time the naive way)."""
        ex = self.explorer
        factors = factors or ex.factors
        t0 = time.perf_counter()
        chosen = {i.name for i in ex.selected(recipe)}
        reports = []
        with torch.inference_mode():
            for info in ex.layers:
                if info.tied_to is not None:
                    continue
                w = ex.weight(info.name)
                if info.name not in chosen:
                    self.holders[info.name].set(w=w)
                    reports.append(LayerReport(info, False, LayerBytes(info.name, info.shape, None, ()), 0.0, 16, None))
                    continue
                cm: CompressedMatrix = compress_matrix(info.name, w, recipe, lambda n=info.name: factors(n),
                                                       lambda n=info.name: ex.sorted_abs(n))
                if len(cm.tensors) == 1:
                    self.holders[info.name].set(w=cm.tensors[0])
                else:
                    self.holders[info.name].set(a=cm.tensors[0], b=cm.tensors[1])
                energy = None
                if cm.bytes.rank is not None:
                    energy = transforms.energy_kept(factors(info.name)[1], cm.bytes.rank)
                reports.append(LayerReport(info, True, cm.bytes, cm.sparsity, recipe.bits, energy))
        # a tied head is listed after its embedding, sharing its storage
        for info in ex.layers:
            if info.tied_to is not None:
                src = next(r for r in reports if r.info.name == info.tied_to)
                reports.append(LayerReport(info, src.compressed, src.bytes, src.sparsity, src.bits, src.energy_kept))
        order = {i.name: k for k, i in enumerate(ex.layers)}
        reports.sort(key=lambda r: order[r.info.name])
        self.applied = Applied(recipe, MemoryReport(ex.total_params, tuple(reports)), time.perf_counter() - t0)
        return self.applied

    @torch.inference_mode()
    def layer_errors(self) -> list[dict]:
        """Per compressed layer: relative Frobenius error and SQNR (dB) of the stored weight."""
        out = []
        for r in self.applied.memory.layers if self.applied else ():
            if not r.compressed or r.info.tied_to is not None:
                continue
            rel, sqnr = transforms.error_stats(self.explorer.weight(r.info.name), self.holders[r.info.name].matrix())
            out.append({"name": r.info.name, "relative_error": rel, "sqnr_db": sqnr})
        return out

    def ensure(self, recipe: Recipe) -> Applied:
        """Apply `recipe` unless it is what the workspace already holds."""
        if self.applied is None or self.applied.recipe != recipe:
            return self.apply(recipe)
        return self.applied

    def evaluate(self, quick: bool = False, eval_text: str | None = None, eval_name: str | None = None) -> dict:
        return self.explorer.evaluator(eval_text, eval_name)(self.model, quick=quick)

    def compare(self, text: str, sentences: list[str] | None = None, max_new_tokens: int = 40):
        """The original and this workspace's model on the user's input (see engine.compare)."""
        ex = self.explorer
        original, tok = ex.loaded.model, ex.loaded.tokenizer
        if ex.kind == "causal-lm":
            return compare.causal_lm(original, self.model, tok, text, max_new_tokens=max_new_tokens)
        if ex.kind == "encoder":
            return compare.encoder(original, self.model, tok, text, sentences or [])
        return compare.classifier(original, self.model, tok, text)
