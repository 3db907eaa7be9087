"""The engine's API for the app and the command line.

    explorer = Explorer.open("minilm")        # shared per model: original, SVD cache, evaluator
    work = explorer.workspace()               # per user: a working copy, never the original
    applied = work.apply(Recipe(rank_ratio=0.5, bits=4, sparsity=0.5))
    applied.memory.compressed_bytes, work.layer_errors(), work.evaluate(quick=True)

The original model is never modified: a workspace deep-copies it once, installs holders in
its compressible layers, and each `apply` refills them from the original weights and the
cached factorizations. The workspace computes with the values as they would be stored: what
stays at 16 bits (norms, biases, layers left alone, unquantized factors) is rounded to fp16,
so a compressed model's quality is that of what an export holds.
"""
from __future__ import annotations

import copy
import dataclasses
import threading
import time
from dataclasses import dataclass

import torch

from . import calibrate, compare, methods, transforms
from .calibrate import Calibration
from .compress import CompressedMatrix, quantize_shaped, shape_matrix
from .distill import Distillation, Trainable, distill
from .evaluate import make_evaluator
from .layers import LayerInfo, find_layers, install, select, weight_matrix
from .memory import LayerReport, MemoryReport, memory_report
from .models import Loaded, load
from .recipe import Recipe


@dataclass(frozen=True)
class Applied:
    recipe: Recipe
    memory: MemoryReport
    seconds: float
    per_layer: dict | None = None  # layer -> its own recipe, for a plan
    distillation: Distillation | None = None  # when the recipe distils
    export: str | None = None  # the export folder the values were read from (export.load_into)


def _module_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the modules that shares every tensor with `model` (nothing may write to them)."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo)


def _round_to_fp16(model: torch.nn.Module) -> None:
    """Give `model` its own copies of its parameters (norms, biases, position embeddings: all
    but the compressible layers' weights, which live in holders) rounded to fp16, as they are
    stored: the model then computes with exactly the values an export holds."""
    copies: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for pname, p in list(module.named_parameters(recurse=False)):
            if id(p) not in copies:
                copies[id(p)] = torch.nn.Parameter(p.detach().half().to(p.dtype), requires_grad=False)
            setattr(module, pname, copies[id(p)])


class Explorer:
    """One loaded model, shared by every workspace: never modified after loading."""

    def __init__(self, loaded: Loaded):
        self.loaded = loaded
        self.layers = find_layers(loaded.model)
        self.total_params = sum(p.numel() for p in loaded.model.parameters())
        self._svd: dict[str, tuple] = {}
        self._sorted_abs: dict[str, torch.Tensor] = {}
        self._preparing: threading.Thread | None = None
        self._signal: dict[str, float] = {}
        self._evaluators: dict = {}
        self._lock = threading.RLock()
        self._eval_lock = threading.Lock()  # reference outputs take seconds: not under _lock
        self._calibration: Calibration | None = None

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
        return select(self.layers, recipe)

    # -- factorizations and spectra -------------------------------------------------------
    def factors(self, name: str, method: str = "svd"):
        """(U, S, Vh) of a layer, computed once and cached: the plain SVD, or for 'whitened'
        the SVD of W S with H = S S^T from calibration, returned as (U, s, V^T S^-1)
        (methods.whitened_svd; a layer without input statistics, an embedding, gets the plain one)."""
        if method == "whitened":
            h = self.hessian(name)
            if h is not None:
                with self._lock:
                    if ("whitened", name) not in self._svd:
                        self._svd[("whitened", name)] = methods.whitened_svd(self.weight(name), h)
                    return self._svd[("whitened", name)]
        with self._lock:
            if name not in self._svd:
                self._svd[name] = transforms.svd(self.weight(name))
            return self._svd[name]

    # -- calibration ----------------------------------------------------------------------
    def calibration(self) -> Calibration:
        """The calibration statistics of every compressible layer (computed once: the
        calibration text through the original model with forward hooks)."""
        with self._eval_lock:
            if self._calibration is None:
                # hooks go on a copy of the modules (sharing every tensor), so that another
                # session running the original meanwhile is neither recorded nor disturbed
                model = _module_copy(self.loaded.model)
                modules = {i.name: model.get_submodule(i.name) for i in self.layers
                           if i.tied_to is None and i.role != "embedding"}
                self._calibration = calibrate.collect(model, self.loaded.tokenizer, modules)
            return self._calibration

    def calibrated(self) -> bool:
        """Whether the calibration statistics are computed already."""
        return self._calibration is not None

    def hessian(self, name: str) -> torch.Tensor | None:
        """H = X^T X / n of a layer's inputs on the calibration text; None for an embedding."""
        return self.calibration().hessians.get(name)

    def sorted_abs(self, name: str) -> torch.Tensor | None:
        """|W| of a layer, flattened and sorted, computed once: any sparsity's magnitude
        threshold is then a lookup (one more copy of the layer's weights in memory). While
        `prepare_in_background` is still building them, None (the caller selects instead)."""
        with self._lock:
            if name in self._sorted_abs:
                return self._sorted_abs[name]
            if self._preparing is not None and self._preparing.is_alive():
                return None
            self._sorted_abs[name] = self._magnitudes(name)
            return self._sorted_abs[name]

    def _magnitudes(self, name: str) -> torch.Tensor:
        return self.weight(name).abs().flatten().sort().values

    def prepare_in_background(self, factorize: bool = False) -> threading.Thread:
        """Build the sorted magnitudes of every layer but embeddings and head in a background
        thread (a second or more per model), so the first pruning after loading need not wait;
        then, with `factorize`, their SVDs, so the first low-rank recipe need not either.
        Not a daemon: the process waits for it on exit (torch killed mid-sort aborts)."""
        def build():
            names = [i.name for i in self.selected(Recipe())]
            for name in names:
                if name not in self._sorted_abs:
                    v = self._magnitudes(name)
                    with self._lock:
                        self._sorted_abs[name] = v
            if factorize:
                self.factorize(names)

        with self._lock:
            if self._preparing is None:
                self._preparing = threading.Thread(target=build, name="prepare")
                self._preparing.start()
            return self._preparing

    def signal(self, name: str) -> float:
        """||W||^2 of a layer's original weight (cached): the denominator of its error."""
        if name not in self._signal:
            self._signal[name] = torch.linalg.vector_norm(self.weight(name)).item() ** 2
        return self._signal[name]

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

    def spectrum(self, name: str, rank: int | None = None) -> dict:
        """Singular values of a layer and what they imply: the cumulative energy curve
        (energy[k-1] = fraction of squared singular values in the top k) and, for `rank`,
        the energy kept at it (None: the layer stays dense)."""
        info = self.layer(name)
        s = self.factors(name)[1]
        e = s.double().square().cumsum(0)
        energy = (e / e[-1]) if e[-1] > 0 else torch.ones_like(e)
        return {
            "name": name,
            "shape": list(info.shape),
            "singular_values": s.tolist(),
            "energy": energy.tolist(),
            "rank": rank,
            "energy_kept": None if rank is None else transforms.energy_kept(s, rank),
            "effective_rank": transforms.effective_rank(s),
            "break_even_rank": transforms.break_even_rank(*info.shape),
            "rank_for_90pct_energy": int((energy < 0.9).sum()) + 1,
        }

    # -- evaluation -----------------------------------------------------------------------
    def evaluator(self, eval_text: str | None = None, eval_name: str | None = None):
        """The quality evaluator for this model (reference outputs computed on first use)."""
        key = (eval_text, eval_name)
        with self._eval_lock:
            if key not in self._evaluators:
                self._evaluators[key] = make_evaluator(self.loaded, eval_text, eval_name)
            return self._evaluators[key]

    def workspace(self) -> "Workspace":
        return Workspace(self)


class Workspace:
    """A working copy of the model that recipes are applied to."""

    def __init__(self, explorer: Explorer):
        self.explorer = explorer
        self.model = _module_copy(explorer.loaded.model)
        self.holders = install(self.model, explorer.layers)
        _round_to_fp16(self.model)
        self.applied: Applied | None = None
        self._shaped: dict = {}  # layer -> compress.Shaped under the last recipe's structure
        self._grids: dict = {}  # layer -> its stored matrices' grids under the last recipe
        self._structure: tuple | None = None

    def apply(self, recipe: Recipe, factors=None, per_layer: dict[str, Recipe] | None = None,
              progress=None) -> Applied:
        """Fill every layer from the original weights under `recipe`, then distil if the recipe
        asks (see `distill`; `progress(step, steps, loss)`). `per_layer` (name -> recipe)
        gives some layers their own recipe (a plan; those layers are compressed whatever
        `recipe` selects). `factors(name, method)` overrides the SVD source (the benchmark
        passes one that recomputes, to time the naive way)."""
        ex = self.explorer
        per_layer = per_layer or {}
        cached_factors = factors is None and not per_layer
        factors = factors or ex.factors
        t0 = time.perf_counter()
        chosen = {i.name for i in ex.selected(recipe)} | set(per_layer)
        # layers shaped (low rank, pruned) as the last recipe shaped them only need quantizing
        reuse = cached_factors and self._structure == recipe.structure_key()
        shapes: dict = {}
        self._grids = {}
        reports = []
        with torch.inference_mode():
            for info in ex.layers:
                if info.tied_to is not None:
                    continue
                w = ex.weight(info.name)
                if info.name not in chosen:
                    with torch.inference_mode(False):  # a normal tensor: distillation runs autograd through it
                        self.holders[info.name].set(w=w.half().to(w.dtype))  # left alone: stored at fp16
                    reports.append(LayerReport.left_alone(info))
                    continue
                lr = per_layer.get(info.name, recipe)
                h = ex.hessian(info.name) if lr.calibrated else None
                shaped = self._shaped.get(info.name) if reuse else None
                if shaped is None:
                    shaped = shape_matrix(w, lr, lambda n=info.name: factors(n, lr.lowrank_method),
                                          lambda n=info.name: ex.sorted_abs(n), h)
                shapes[info.name] = shaped
                cm: CompressedMatrix = quantize_shaped(info.name, info.shape, shaped, lr, h)
                self._grids[info.name] = cm.grids
                self.holders[info.name].fill(cm.tensors)
                energy = None
                if cm.bytes.rank is not None:
                    energy = transforms.energy_kept(factors(info.name, lr.lowrank_method)[1], cm.bytes.rank)
                reports.append(LayerReport(info, True, cm.bytes, cm.sparsity, lr.bits, energy))
        self._shaped, self._structure = shapes, (recipe.structure_key() if cached_factors else None)
        compressed = dataclasses.replace(recipe, distill_steps=0)
        self.applied = Applied(compressed, memory_report(ex.layers, ex.total_params, reports), time.perf_counter() - t0, dict(per_layer))
        if recipe.distill_steps:
            self.distill(recipe.distill_steps, recipe.distill_lr, progress)
        return self.applied

    def distill(self, steps: int, lr: float, progress=None) -> Applied:
        """Knowledge distillation of the applied, not yet distilled, recipe (engine.distill):
        the compressed layers' stored values train to match the original model, on their
        grids and masks, so the bytes do not change. The result is the applied recipe with
        `distill_steps` and `distill_lr` set, and its Distillation report."""
        applied = self.applied
        if applied is None or applied.distillation is not None:
            raise ValueError("distill: apply a recipe without distillation first")
        per_layer = applied.per_layer or {}
        parts = [Trainable(self.holders[name], self._shaped[name].mats, grids, self._shaped[name].keeps,
                           per_layer.get(name, applied.recipe)) for name, grids in self._grids.items()]
        ex = self.explorer
        try:
            report = distill(self.model, ex.loaded.model, ex.loaded.tokenizer, ex.kind, parts, steps, lr, progress)
        except BaseException:  # stopped part-way: the holders match no recipe, so the next ensure re-applies
            self.applied = None
            raise
        recipe = dataclasses.replace(applied.recipe, distill_steps=steps, distill_lr=lr)
        self.applied = dataclasses.replace(applied, recipe=recipe, distillation=report,
                                           seconds=applied.seconds + report.seconds)
        return self.applied

    def forget_shapes(self) -> None:
        """Drop what the last apply kept for reuse (the holders were filled another way)."""
        self._shaped, self._grids, self._structure = {}, {}, None

    @torch.inference_mode()
    def layer_errors(self) -> list[dict]:
        """Per compressed layer: relative Frobenius error and SQNR (dB) of the stored weight."""
        out = []
        for r in self.applied.memory.layers if self.applied else ():
            if not r.compressed or r.info.tied_to is not None:
                continue
            name = r.info.name
            rel, sqnr = transforms.error_stats(self.explorer.weight(name), self.holders[name].matrix(),
                                               self.explorer.signal(name))
            out.append({"name": name, "relative_error": rel, "sqnr_db": sqnr})
        return out

    def report(self) -> dict:
        """The applied recipe's memory report (MemoryReport.to_dict) with, per layer, its
        relative error and SQNR in dB (None where not compressed; SQNR None where exact),
        and the seconds the apply took."""
        mem = self.applied.memory.to_dict(errors={e["name"]: e for e in self.layer_errors()})
        mem["apply_s"] = self.applied.seconds
        return mem

    def ensure(self, recipe: Recipe) -> Applied:
        """Apply `recipe` unless it is what the workspace already holds (a plan is not its
        top recipe, but an export loaded with that recipe is)."""
        held = self.applied
        if held is None or held.recipe != recipe or (held.per_layer and held.export is None):
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
