"""A working copy of a model that recipes are applied to (one per user).

    work = explorer.workspace()
    applied = work.apply(Recipe(rank_ratio=0.5, bits=4, sparsity=0.5))
    applied.memory.compressed_bytes, work.stored["encoder.layer.0.attention.self.query"].bytes

The original model is never modified: a workspace copies its modules once (sharing every
tensor), installs holders in its compressible layers, and each `apply` refills them through
the layer pipeline (engine.pipeline.compress) from the original weights and the cached factorizations.
The workspace computes with the values as they would be stored: what stays at 16 bits (norms,
biases, layers left alone, unquantized factors) is rounded to fp16, so a compressed model's
quality is that of what an export holds.

A workspace holds only what differs from the shared model: the values rounded to fp16 of the
parameters and of the layers a recipe leaves at 16 bits (dense, unpruned) are the explorer's,
computed once and shared by every workspace (`Explorer.fp16_weight`, `fp16_parameter`); nothing
writes to them (distillation trains copies, an export read back gets its own parameters).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from types import MappingProxyType

import torch

from engine.drivers.awq_fold import fold_norm
from engine.drivers.distill import Distillation, Trainable, distill
from engine.formats import grid as transforms
from engine.layers.find import install
from engine.lru import tensors
from engine.methods import svd
from engine.pipeline import compress as pipeline
from engine.pipeline.tally import LayerReport, MemoryReport, memory_report
from engine.quality import compare
from engine.recipe.recipe import Recipe


@dataclass(frozen=True)
class Applied:
    recipe: Recipe
    memory: MemoryReport
    seconds: float
    distillation: Distillation | None = None  # when the recipe distils
    export: str | None = None  # the export folder the values were read from


def module_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the modules that shares every tensor with `model` (nothing may write to them)."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo)


def set_parameters(model: torch.nn.Module, new) -> None:
    """Replace every parameter of `model` (norms, biases, position embeddings: all but the
    compressible layers' weights, which live in holders) by `new(name, p)`; a parameter two
    modules share stays shared."""
    done: dict[int, torch.nn.Parameter] = {}
    for mname, module in model.named_modules():
        for pname, p in list(module.named_parameters(recurse=False)):
            if id(p) not in done:
                done[id(p)] = new(f"{mname}.{pname}" if mname else pname, p)
            setattr(module, pname, done[id(p)])


def _plain_fp16(stored: pipeline.StoredLayer) -> bool:
    """Whether a layer stores its weight dense and unpruned at 16 bits: its values are then the
    original's rounded to fp16, equal to Explorer.fp16_weight."""
    (m, *more) = stored.matrices
    return (not more and stored.rank is None and m.keep is None and m.grid.scale is None
            and m.grid.codebook is None and m.grid.ggml is None and m.grid.floats is None)


class Workspace:
    """A working copy of the model that recipes are applied to. `applied` is what it holds
    (None before the first apply), `stored` each compressed layer as the pipeline stored it."""

    def __init__(self, explorer):
        self.root = explorer.root  # the original's explorer (a smaller model's explorer is derived from it)
        self.start = explorer.start  # the explorer a structured recipe cuts from (the original, or a schedule's step)
        self._copy(explorer)

    def _copy(self, explorer) -> None:
        """Work on `explorer`'s model: the original's, or a smaller one (engine.structure) made from it."""
        self.explorer = explorer
        self.model = module_copy(explorer.loaded.model)
        self.holders = install(self.model, explorer.layers)
        self._original = {n: p for n, p in self.model.named_parameters()}  # the original's, by name
        self._share_parameters()  # as stored: the model computes with exactly the values an export holds
        self.applied: Applied | None = None
        self._stored: dict[str, pipeline.StoredLayer] = {}
        self._reusable = False  # whether the stored layers' shapes may be reused (cached factors)
        self._folds = None  # where the applied recipe's AWQ scales went (engine.drivers.awq_fold.Folds)
        self.held_bytes = 0  # own_bytes() as of the last apply, hold or distillation

    def _share_parameters(self) -> None:
        """The parameters rounded to fp16, shared with every workspace of the explorer."""
        set_parameters(self.model, lambda name, p: self.explorer.fp16_parameter(self._original[name]))

    def own_bytes(self) -> int:
        """The bytes of the tensors this workspace holds that the explorer does not share (its
        original weights and fp16 copies): the stored layers' values, values before
        quantization, masks and scales, and parameters of its own (an export read back); a
        tensor's numel * element_size, tensors on one storage counted once (the largest)."""
        ex = self.explorer
        shared = {t.untyped_storage().data_ptr() for t in [*ex.loaded.model.parameters(), *ex._fp16.values()]}
        own: dict[int, int] = {}
        for t in tensors(([*self._stored.values()], [*self.model.parameters()])):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in shared and t.device.type != "meta":
                own[ptr] = max(own.get(ptr, 0), t.numel() * t.element_size())
        return sum(own.values())

    @property
    def stored(self) -> MappingProxyType:
        """Layer name -> its StoredLayer under the applied recipe (compressed layers only)."""
        return MappingProxyType(self._stored)

    def apply(self, recipe: Recipe, factors=None, progress=None) -> Applied:
        """Fill every layer from the original weights under `recipe` (each selected layer under
        its own recipe, Recipe.for_layer), then distil if the recipe asks (see `distill`;
        `progress(step, steps, loss)`). `factors(name, method)` overrides the SVD source (the
        benchmark passes one that recomputes, to time the naive way). A failure part-way leaves
        the workspace holding no recipe (the next `ensure` applies afresh)."""
        target = self.start.structured(recipe)  # the smaller model of a structured recipe, else the start
        if target is not self.explorer:
            self._copy(target)
        ex = self.explorer
        reuse, self._reusable = self._reusable and factors is None, factors is None
        factors = factors or ex.factors
        t0 = time.perf_counter()
        chosen = {i.name for i in ex.selected(recipe)}
        old, self._stored, self.applied = (self._stored if reuse else {}), {}, None
        try:
            reports = self._fill(recipe, chosen, old, factors)
        except BaseException:
            self._stored, self._reusable, self.held_bytes = {}, False, 0
            raise
        compressed = dataclasses.replace(recipe, distill_steps=0)
        self.applied = Applied(compressed, memory_report(ex.layers, ex.total_params, reports, ex.removed_params),
                               time.perf_counter() - t0)
        self.held_bytes = self.own_bytes()
        if recipe.distill_steps:
            self.distill(recipe.distill_steps, recipe.distill_lr, progress)
        return self.applied

    def _fill(self, recipe: Recipe, chosen: set, old: dict, factors) -> list[LayerReport]:
        """Fill every holder under `recipe` (the layers in `chosen`; the rest left alone at
        fp16), re-quantizing a layer of `old` where it is shaped as the recipe shapes it (each
        taken out of `old` as it goes, so the old values are freed layer by layer); the layers'
        reports."""
        ex = self.explorer
        self._share_parameters()
        reports = []
        shares = ex.sharing(recipe)  # the layers that share a basis with their neighbours (engine.methods.shared)
        folds = self._folds = ex.awq_folds(recipe)  # AWQ's scales folded into the module before (awq_fold)
        with torch.inference_mode():
            for info in ex.layers:
                if info.tied_to is not None:
                    continue
                if info.name not in chosen:
                    self.holders[info.name].set(w=ex.fp16_weight(info.name))  # left alone: stored at fp16
                    reports.append(LayerReport.left_alone(info))
                    continue
                lr = recipe.for_layer(info.name)
                h = ex.hessian(info.name) if lr.calibrated else None
                fold = folds.layers.get(info.name)
                if fold is not None and fold.cols is not None:
                    lr = lr.updated(quant_method="rtn")  # its AWQ scales live in the module before
                before, share = old.pop(info.name, None), shares.get(info.name)
                layer_factors = (lambda n=info.name: factors(n, lr.lowrank_method)) if share is None else (
                    lambda n=info.name, s=share: ex.shared_factors(s)[s.index(n)])
                if pipeline.reusable(before, lr, share, fold):  # shaped as before: the same values, or only quantize
                    stored = before if before.recipe == lr else pipeline.requantize(before, lr, h)
                elif fold is not None:  # dense and unpruned (awq_fold.eligible): no factors, no magnitudes
                    stored = dataclasses.replace(pipeline.compress(info.name, fold.apply(ex.weight(info.name)), lr,
                                                                   layer_factors, None, h), fold=fold)
                else:
                    stored = pipeline.compress(info.name, ex.weight(info.name), lr, layer_factors,
                                               lambda n=info.name: ex.sorted_abs(n), h, share)
                if fold is None and _plain_fp16(stored):  # at 16 bits, dense, unpruned: the shared rounded copy
                    stored = stored.with_values((ex.fp16_weight(info.name),))
                self._stored[info.name] = stored
                self.holders[info.name].fill(stored.tensors())
                energy = None
                if stored.rank is not None:
                    energy = svd.energy_kept(layer_factors()[1], stored.rank)
                reports.append(stored.report(info, energy))
            for name, s in folds.norms.items():  # the norms that absorb AWQ's scales, as stored (fp16)
                module = self.model.get_submodule(name)
                for pname, v in fold_norm(module, s).items():
                    setattr(module, pname, torch.nn.Parameter(v.half().to(v.dtype), requires_grad=False))
        return reports

    def use(self, structure) -> None:
        """Work on the smaller model `structure` (engine.structure.removal.Structure) keeps of the
        original, or on the original itself (None): before `hold` of an export of that model."""
        target = self.root if structure is None else self.root.smaller(structure)
        if target is not self.explorer:
            self._copy(target)
            self.applied, self._stored = None, {}

    def hold(self, recipe: Recipe, stored: dict, alone: dict, params: dict, seconds: float,
             export: str | None = None) -> Applied:
        """Hold given values instead of applying a recipe (an export read back): `stored`
        (name -> StoredLayer) for the compressed layers, `alone` (name -> fp16 matrix) for the
        layers left alone, `params` (name -> tensor) for every other parameter, of the model the
        workspace works on (see `use`)."""
        ex = self.explorer
        reports = []
        self.applied, self._stored, self._reusable = None, {}, False
        with torch.no_grad():
            for info in ex.layers:
                if info.tied_to is not None:
                    continue
                if info.name in stored:
                    self.holders[info.name].fill(stored[info.name].tensors())
                    reports.append(stored[info.name].report(info))
                else:
                    self.holders[info.name].set(w=alone[info.name])
                    reports.append(LayerReport.left_alone(info))
            # its own parameters (the shared ones are never written to)
            set_parameters(self.model, lambda name, p: torch.nn.Parameter(
                params[name].to(device=p.device, dtype=p.dtype), requires_grad=False))
        self._stored = dict(stored)
        self.applied = Applied(recipe, memory_report(ex.layers, ex.total_params, reports, ex.removed_params), seconds,
                               export=export)
        self.held_bytes = self.own_bytes()
        return self.applied

    def distill(self, steps: int, lr: float, progress=None) -> Applied:
        """Knowledge distillation of the applied, not yet distilled, recipe (engine.drivers.distill):
        the compressed layers' stored values train to match the original model, on their
        grids and masks, so the bytes do not change. The result is the applied recipe with
        `distill_steps` and `distill_lr` set, and its Distillation report."""
        applied = self.applied
        if applied is None or applied.distillation is not None or applied.export is not None:
            raise ValueError("distill: apply a recipe without distillation first")
        recipe = dataclasses.replace(applied.recipe, distill_steps=steps, distill_lr=lr)  # checked before training
        parts = [Trainable(self.holders[name], tuple(m.unquantized for m in s.matrices),
                           tuple(m.grid for m in s.matrices), tuple(m.keep for m in s.matrices), s.recipe)
                 for name, s in self._stored.items()]
        ex = self.explorer
        try:
            report = distill(self.model, ex.root.loaded.model, ex.loaded.tokenizer, ex.kind, parts, steps, lr, progress)
        except BaseException:  # stopped part-way: the holders match no recipe, so the next ensure re-applies
            self.applied = None
            raise
        self._stored = {name: s.with_values(self.holders[name].tensors()) for name, s in self._stored.items()}
        self.applied = dataclasses.replace(applied, recipe=recipe, distillation=report,
                                           seconds=applied.seconds + report.seconds)
        self.held_bytes = self.own_bytes()
        return self.applied

    @torch.inference_mode()
    def layer_errors(self) -> list[dict]:
        """Per compressed layer: relative Frobenius error and SQNR (dB) of the stored weight."""
        out = []
        for r in self.applied.memory.layers if self.applied else ():
            if not r.compressed or r.info.tied_to is not None:
                continue
            name = r.info.name
            held, fold = self.holders[name].matrix(), getattr(self._stored.get(name), "fold", None)
            rel, sqnr = transforms.error_stats(self.explorer.weight(name), held if fold is None else fold.original(held),
                                               self.explorer.signal(name))
            out.append({"name": name, "relative_error": rel, "sqnr_db": sqnr})
        return out

    def report(self) -> dict:
        """The applied recipe's memory report (MemoryReport.to_dict) with, per layer, its
        relative error and SQNR in dB (None where not compressed; SQNR None where exact),
        and the seconds the apply took."""
        mem = self.applied.memory.to_dict(errors={e["name"]: e for e in self.layer_errors()})
        mem["apply_s"] = self.applied.seconds
        folds = self._folds if self.applied.export is None else None
        mem["awq"] = None if not folds or not (folds.layers or folds.kept_scales) else {
            "folded": sorted(n for n, f in folds.layers.items() if f.cols is not None),
            "scales_kept": list(folds.kept_scales)}  # where AWQ's scales went (engine.drivers.awq_fold)
        structure = self.explorer.structure
        mem["structure"] = None if structure is None else {
            **structure.summary(), "params": self.explorer.total_params, "original_params": self.root.total_params}
        return mem

    def ensure(self, recipe: Recipe) -> Applied:
        """Apply `recipe` unless it is what the workspace already holds."""
        if self.applied is None or self.applied.recipe != recipe:
            return self.apply(recipe)
        return self.applied

    def evaluate(self, quick: bool = False, eval_text: str | None = None, eval_name: str | None = None) -> dict:
        return self.explorer.evaluator(eval_text, eval_name)(self.model, quick=quick)

    def compare(self, text: str, sentences: list[str] | None = None, max_new_tokens: int = 40):
        """The original and this workspace's model on the user's input (see engine.quality.compare)."""
        ex = self.explorer
        original, tok = ex.loaded.model, ex.loaded.tokenizer
        if ex.kind == "causal-lm":
            return compare.causal_lm(original, self.model, tok, text, max_new_tokens=max_new_tokens)
        if ex.kind == "seq2seq":
            return compare.seq2seq(original, self.model, tok, text, max_new_tokens=max_new_tokens)
        if ex.kind == "encoder":
            return compare.encoder(original, self.model, tok, text, sentences or [])
        return compare.classifier(original, self.model, tok, text)
