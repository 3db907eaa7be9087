"""One loaded model, shared by every user: the engine's entry point for the app and the command line.

    explorer = Explorer.open("minilm")        # shared per model: original, SVD cache, evaluator
    work = explorer.workspace()               # per user: a working copy, never the original
    applied = work.apply(Recipe(rank_ratio=0.5, bits=4, sparsity=0.5))
    applied.memory.compressed_bytes, work.layer_errors(), work.evaluate(quick=True)

The original model is never modified after loading. The explorer caches what every workspace
reads from it: each layer's SVD and sorted magnitudes, the calibration statistics, the
evaluators with their reference outputs, and the values rounded to fp16 that a workspace
computes with where a recipe leaves them at 16 bits. See engine.drivers.workspace for the working copy.

What the explorer keeps, and its budget per model (each an engine.lru.LRU: the least recently
used entry is evicted first, and computed again when next asked for):

    cache                                                      budget
    factors: each layer's SVD, plain or whitened, and a        FACTORS_BYTES (768 MiB; smollm2's
      shared group's stacked one                                 plain SVDs take 604 MiB)
    sorted magnitudes |W| of each layer                        MAGNITUDES_BYTES (512 MiB; smollm2: 405)
    evaluators with their reference outputs, per text          EVALUATORS (2; smollm2's: 383 MiB each)
    calibration statistics                                     one per model (computed once)
    the fp16 copies of weights and parameters                  held weakly: as long as a workspace
                                                                 computes with them
    each layer's ||W||^2                                       one float per layer

The background preparation stops where a budget is full, rather than evict what it made.
"""
from __future__ import annotations

import threading
import time
import weakref

import torch

from engine.drivers.smaller import Smaller
from engine.drivers.workspace import Workspace, module_copy
from engine.errors import UserError
from engine.layers import LayerInfo
from engine.layers.find import BLOCK_ROLES, find_layers, select
from engine.lru import LRU, tensor_bytes
from engine.methods import METHODS, shared, svd
from engine.models import calibrate
from engine.models.calibrate import Calibration
from engine.models.loading import Loaded, load
from engine.quality import make_evaluator
from engine.recipe.recipe import Recipe

MIB = 2**20
FACTORS_BYTES = 768 * MIB
MAGNITUDES_BYTES = 512 * MIB
EVALUATORS = 2
SMALLER = 1  # smaller models (structured pruning) held at once


def svd_bytes(info: LayerInfo, element_size: int = 4) -> int:
    """The bytes of a layer's full SVD (U, S, V^T): (out*k + k + k*in) values, k = min(out, in)."""
    out, inp = info.shape
    k = min(out, inp)
    return (out * k + k + k * inp) * element_size


def layer_factors(w: torch.Tensor, method: str = "svd", h: torch.Tensor | None = None) -> tuple:
    """(U, S, Vh) of the (out, in) matrix `w` for its low-rank `method`: for 'whitened' with
    input statistics `h` (H = X^T X / n, (in, in)) the SVD of W S with H = S S^T, returned as
    (U, s, V^T S^-1) (engine.methods.whitened); else, 'svd', 'whitened' without `h` (an embedding,
    an expert no calibration token reached) or 'shared' on a layer of no group, the plain SVD:
    the method's `run` in engine.methods.METHODS.
    A group sharing one basis takes its stacked SVD instead (shared.shared_whitened_svd).

    >>> w = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    >>> layer_factors(w)[1].tolist(), layer_factors(w, "whitened", None)[1].tolist()  # no H: the plain SVD
    ([4.0, 3.0], [4.0, 3.0])
    """
    return METHODS[method].run(w, h)


def require_compressible(layers: list[LayerInfo], ref: str, model: torch.nn.Module) -> list[LayerInfo]:
    """`layers`, when at least one is a layer the engine compresses inside the model (nn.Linear,
    GPT-2's Conv1D); else a UserError that says so (a model of convolutions, say)."""
    if not any(i.role in BLOCK_ROLES for i in layers):
        raise UserError(f"cannot explore {ref!r}: {type(model).__name__} has no nn.Linear or Conv1D layer, "
                        "the only layers the explorer compresses")
    return layers


class Explorer(Smaller):
    """One loaded model, shared by every workspace: never modified after loading. Its smaller
    models (structured pruning) and AWQ's folds: engine.drivers.smaller.Smaller."""

    def __init__(self, loaded: Loaded):
        self.loaded = loaded
        self.layers = require_compressible(find_layers(loaded.model), loaded.ref, loaded.model)
        self._by_name = {i.name: i for i in self.layers}
        self.total_params = sum(p.numel() for p in loaded.model.parameters())
        self._svd = LRU("factors", max_bytes=FACTORS_BYTES, size=tensor_bytes)
        self._sorted_abs = LRU("sorted magnitudes", max_bytes=MAGNITUDES_BYTES, size=tensor_bytes)
        self._preparing: threading.Thread | None = None
        self._signal: dict[str, float] = {}
        self._evaluators = LRU("evaluators", max_entries=EVALUATORS, size=lambda ev: tensor_bytes(vars(ev)))
        # layer name or id(parameter) -> its values rounded to fp16 (shared, read only), while a workspace holds them
        self._fp16: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._lock = threading.RLock()
        self._eval_lock = threading.Lock()  # reference outputs take seconds: not under _lock
        self._calibration: Calibration | None = None
        # a smaller model's explorer: the original's (`root`, its quality's reference), the explorer whose
        # model it was cut from (`start`: the original, or a schedule's step) and what of the original it keeps
        self.root, self.start, self.structure = self, self, None
        self._smaller = LRU("smaller models", max_entries=SMALLER)  # Structure -> its Explorer
        self._structures: dict[tuple, object] = {}  # Recipe.removal_key() -> Structure
        self._influence: list[float] | None = None
        self._folds = LRU("AWQ folds", max_entries=2)  # Recipe -> awq_fold.Folds

    @classmethod
    def open(cls, ref: str, device: str | None = None, trust_remote_code: bool = False) -> "Explorer":
        return cls(load(ref, device, trust_remote_code))

    @property
    def kind(self) -> str:
        return self.loaded.kind

    def weight(self, name: str) -> torch.Tensor:
        """The original (out, in) weight of a layer (a view: do not modify)."""
        info = self._by_name[name]
        return info.kind.matrix(self.loaded.model, info).detach()

    def layer(self, name: str) -> LayerInfo:
        return self._by_name[name]

    def preset(self, name: str, base: Recipe | None = None, quant_method: str | None = None) -> Recipe:
        """llama.cpp's mix `name` ('q4_k_m', ...) on this model: a recipe with per-layer types
        (`base`'s other fields kept; `quant_method` 'imatrix' for an importance matrix)."""
        from engine.recipe.presets import preset_recipe

        return preset_recipe(name, self.layers, self.loaded.model.config, base, quant_method)

    def selected(self, recipe: Recipe) -> list[LayerInfo]:
        """Layers the recipe compresses (a tied head follows its embedding)."""
        return select(self.layers, recipe)

    # -- factorizations and spectra -------------------------------------------------------
    def factors(self, name: str, method: str = "svd"):
        """(U, S, Vh) of a layer, computed once and cached: the plain SVD, or for 'whitened'
        the SVD of W S with H = S S^T from calibration, returned as (U, s, V^T S^-1)
        (layer_factors; a layer without input statistics, an embedding, gets the plain one)."""
        h = self.hessian(name) if method == "whitened" else None
        key = name if h is None else ("whitened", name)  # without H the plain SVD, cached once for both
        with self._lock:
            return self._svd.get_or_put(key, lambda: layer_factors(self.weight(name), method, h))

    def shared_factors(self, share) -> list:
        """Per layer of a group that shares one basis (an engine.methods.shared.Share), in its order,
        (U_i, s, V^T S^-1) of the group's stacked whitened SVD (shared.shared_whitened_svd),
        computed once and cached; a group of one layer takes its whitened SVD (`factors`)."""
        if len(share.group) == 1:
            return [self.factors(share.owner, "whitened")]
        key = ("shared", share.group)
        with self._lock:
            return self._svd.get_or_put(key, lambda: shared.shared_whitened_svd(
                [self.weight(n) for n in share.group], [self.hessian(n) for n in share.group]))

    def sharing(self, recipe: Recipe) -> dict:
        """Layer name -> its engine.methods.shared.Share, for the layers `recipe` shares a basis between."""
        return shared.groups(self.selected(recipe), recipe)

    def shared_spectrum(self, share) -> dict:
        """The spectrum of a group's stacked whitened matrix [W_1; ...; W_N] S, as `spectrum`
        gives a layer's, at the group's basis rank."""
        s = self.shared_factors(share)[0][1]
        e = s.double().square().cumsum(0)
        out, inp = self.layer(share.owner).shape
        return {"name": " + ".join(share.group), "shape": [len(share.group) * out, inp],
                "singular_values": s.tolist(), "energy": (e / e[-1]).tolist() if e[-1] > 0 else [1.0] * len(s),
                "rank": share.rank, "energy_kept": svd.energy_kept(s, share.rank),
                "break_even_rank": svd.break_even_rank(len(share.group) * out, inp)}

    def sharing_table(self, recipe: Recipe) -> list[dict]:
        """The groups of layers that share one basis under `recipe` (engine.methods.shared.table), with
        the energy of the stacked whitened spectrum kept at the basis rank."""
        return shared.table(self.selected(recipe), recipe, lambda share: self.shared_spectrum(share)["energy_kept"])

    # -- calibration ----------------------------------------------------------------------
    def calibration(self) -> Calibration:
        """The calibration statistics of every compressible layer (computed once: the
        calibration text through the original model with forward hooks)."""
        with self._eval_lock:
            if self._calibration is None:
                # hooks go on a copy of the modules (sharing every tensor), so that another
                # session running the original meanwhile is neither recorded nor disturbed
                model = module_copy(self.loaded.model)
                modules, experts = calibrate.targets(model, [i for i in self.layers
                                                            if i.tied_to is None and i.role != "embedding"])
                self._calibration = calibrate.collect(model, self.loaded.tokenizer, modules, experts=experts)
            return self._calibration

    def calibrated(self) -> bool:
        """Whether the calibration statistics are computed already."""
        return self._calibration is not None

    def hessian(self, name: str) -> torch.Tensor | None:
        """H = X^T X / n of a layer's inputs on the calibration text; None for an embedding."""
        return self.calibration().hessians.get(name)

    def uncalibrated(self, recipe: Recipe) -> list[str]:
        """The layers `recipe` compresses with a calibrated method that have no input statistics
        (an expert the calibration text never reached; embeddings excepted): their methods fall
        back to the plain ones (round to nearest, magnitude, plain SVD)."""
        return [i.name for i in self.selected(recipe) if i.role != "embedding"
                and recipe.for_layer(i.name).calibrated and self.hessian(i.name) is None]

    def sorted_abs(self, name: str) -> torch.Tensor | None:
        """|W| of a layer, flattened and sorted, computed once: any sparsity's magnitude
        threshold is then a lookup (one more copy of the layer's weights in memory). While
        `prepare_in_background` is still building them, or where MAGNITUDES_BYTES has no room
        for them, None (the caller selects instead)."""
        with self._lock:
            if name in self._sorted_abs:
                return self._sorted_abs.get(name)
            w = self.weight(name)
            if (self._preparing is not None and self._preparing.is_alive()
                    or not self._sorted_abs.room(w.numel() * w.element_size())):
                return None
            return self._sorted_abs.put(name, self._magnitudes(name))

    def _magnitudes(self, name: str) -> torch.Tensor:
        return self.weight(name).abs().flatten().sort().values

    def prepare_in_background(self, factorize: bool = False) -> threading.Thread:
        """Build the sorted magnitudes of every layer but embeddings and head in a background
        thread (a second or more per model), so the first pruning after loading need not wait;
        then, with `factorize`, their SVDs, so the first low-rank recipe need not either. Each
        stops where its budget is full (MAGNITUDES_BYTES, FACTORS_BYTES): the rest are made when
        asked for. Not a daemon: the process waits for it on exit (torch killed mid-sort aborts)."""
        def build():
            layers = self.selected(Recipe())
            for info in layers:
                if info.name not in self._sorted_abs:
                    if not self._sorted_abs.room(info.params * self.weight(info.name).element_size()):
                        break
                    v = self._magnitudes(info.name)
                    with self._lock:
                        self._sorted_abs.put(info.name, v)
            if factorize:
                for info in layers:
                    if info.name not in self._svd and not self._svd.room(svd_bytes(info)):
                        break
                    self.factors(info.name)

        with self._lock:
            if self._preparing is None:
                self._preparing = threading.Thread(target=build, name="prepare")
                self._preparing.start()
            return self._preparing

    def fp16_weight(self, name: str) -> torch.Tensor:
        """A layer's original (out, in) weight rounded to fp16, in its own dtype: what a layer
        left alone, or kept at 16 bits dense and unpruned, computes with. Shared by every
        workspace (never written to), and kept while one holds it; a normal tensor, so
        distillation can run autograd through a model that holds it."""
        with self._lock:
            held = self._fp16.get(name)
            if held is None:
                w = self.weight(name)
                with torch.inference_mode(False), torch.no_grad():
                    self._fp16[name] = held = w.half().to(w.dtype)
            return held

    def fp16_parameter(self, p: torch.nn.Parameter) -> torch.nn.Parameter:
        """A parameter of the original model (a norm, a bias, position embeddings) rounded to
        fp16, in its own dtype, as it is stored: shared by every workspace, kept while one holds it."""
        with self._lock:
            held = self._fp16.get(id(p))  # the original's parameters live as long as the explorer
            if held is None:
                with torch.inference_mode(False), torch.no_grad():
                    self._fp16[id(p)] = held = torch.nn.Parameter(p.detach().half().to(p.dtype), requires_grad=False)
            return held

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
        """Whether every layer's SVD is held, or as many as FACTORS_BYTES holds (the others are
        computed when a recipe asks for them)."""
        missing = [i for i in self.selected(Recipe()) if i.name not in self._svd]
        return not missing or not self._svd.room(svd_bytes(missing[0]))

    def low_rank_layers(self, recipe: Recipe) -> list[str]:
        """The selected layers that `recipe` factorizes (its per-layer rules included)."""
        return [i.name for i in self.selected(recipe) if recipe.for_layer(i.name).rank_for(i.full_rank) is not None]

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
            "energy_kept": None if rank is None else svd.energy_kept(s, rank),
            "effective_rank": svd.effective_rank(s),
            "break_even_rank": svd.break_even_rank(*info.shape),
            "rank_for_90pct_energy": int((energy < 0.9).sum()) + 1,
        }

    # -- evaluation -----------------------------------------------------------------------
    def evaluator(self, eval_text: str | None = None, eval_name: str | None = None):
        """The quality evaluator for this model (reference outputs computed on first use); a
        smaller model's is the original's, so it is judged against the original."""
        if self.root is not self:
            return self.root.evaluator(eval_text, eval_name)
        with self._eval_lock:
            return self._evaluators.get_or_put((eval_text, eval_name),
                                               lambda: make_evaluator(self.loaded, eval_text, eval_name))

    def workspace(self) -> "Workspace":
        return Workspace(self)
