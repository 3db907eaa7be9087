"""Models larger than memory: loaded by accelerate across the GPUs, the CPU and the disk, then
compressed and evaluated one layer at a time.

    off = load("smollm2", {"cpu": "200MiB"}, folder)  # device_map="auto", max_memory
    evaluator = make_evaluator(off.loaded)             # reference outputs, before any change
    out = run(off, Recipe(bits=4), evaluator)          # compressed layer by layer, then evaluated

`device_map="auto"` puts each block where `max_memory` leaves room (GPUs first, then the CPU,
then `offload_folder` on disk); accelerate's hooks bring an offloaded block's weights in for
its forward pass and drop them after. Compression follows the same rule: one layer's weight is
read (from the device, the CPU, or the disk), compressed, and written back where it was read,
so there is never a second copy of the model, only of one layer. Offloaded weights are written
as new files in the offload folder, never into the model's own checkpoint. What stays at 16
bits is rounded to fp16, as in a Workspace, so the model computes with the values an export
holds. The model is changed in place: a loaded model serves one recipe.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import torch

from engine.drivers.explorer import layer_factors, require_compressible
from engine.errors import UserError
from engine.formats import grid as transforms
from engine.layers import LayerInfo
from engine.layers.find import select
from engine.methods import svd
from engine.models import calibrate
from engine.models.loading import Loaded, _loading, auto_class, kind_of, open_config
from engine.pipeline import compress as pipeline
from engine.pipeline.tally import LayerReport, memory_report


def parse_max_memory(text: str) -> dict:
    """'cpu=200MiB,0=20GiB' -> {'cpu': '200MiB', 0: '20GiB'} (GPU indices as int), each size
    checked; devices are 'cpu', 'disk' or a GPU index."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        device, eq, size = item.partition("=")
        device = device.strip()
        if not eq or not (device in ("cpu", "disk") or device.isdigit()):
            raise UserError(f"--max-memory: {item!r} is not DEVICE=SIZE (DEVICE cpu or a GPU index, e.g. cpu=2GiB,0=20GiB)")
        parse_size(size, "--max-memory")
        key = int(device) if device.isdigit() else device
        if isinstance(key, int) and key >= torch.cuda.device_count():
            raise UserError(f"--max-memory: GPU {key} asked for, but this machine has {torch.cuda.device_count()}")
        out[key] = size.strip()
    if "cpu" not in out:
        raise UserError("--max-memory: give the CPU's share too (e.g. cpu=2GiB); what fits nowhere goes to disk")
    return out


@dataclass
class Offloaded:
    """A model dispatched by accelerate, and its layers as its config builds them (on the
    meta device a tied head can come apart from its embedding; the config says it is tied)."""

    loaded: Loaded
    layers: list[LayerInfo]
    total_params: int


def parse_size(text: str, flag: str) -> int:
    """'200MiB', '2GiB', '20GB' -> bytes (accelerate's reading); anything else a UserError."""
    from accelerate.utils import convert_file_size_to_int

    try:
        size = convert_file_size_to_int(text.strip())
        if size <= 0:
            raise ValueError
    except (ValueError, TypeError):
        raise UserError(f"{flag}: {text.strip()!r} is not a size (e.g. 200MiB, 2GiB, 20GB)") from None
    return size


def load(ref: str, max_memory: dict, offload_folder: str, trust_remote_code: bool = False) -> Offloaded:
    """Load a model with device_map="auto" within `max_memory`, the rest offloaded to
    `offload_folder` (fp32; a folder the caller owns and removes)."""
    from transformers import AutoTokenizer

    from engine.drivers.footprint import skeleton_of

    t0 = time.perf_counter()
    config, source, note, kw = open_config(ref, trust_remote_code)
    kind = kind_of(config)
    said = logging.getLogger("accelerate.big_modeling")  # "Some parameters are on the meta device": see placement()
    level = said.level
    said.setLevel(logging.ERROR)
    try:
        with _loading(ref):
            model = auto_class(kind).from_pretrained(source, dtype=torch.float32, device_map="auto",
                                                     max_memory=dict(max_memory), offload_folder=offload_folder, **kw)
            tokenizer = AutoTokenizer.from_pretrained(source, **kw)
    finally:
        said.setLevel(level)
    model.eval().requires_grad_(False)
    gpus = sorted(d for d in device_map(model).values() if isinstance(d, int))
    device = torch.device(f"cuda:{gpus[0]}") if gpus else torch.device("cpu")
    loaded = Loaded(ref, source, kind, model, tokenizer, device, note, time.perf_counter() - t0)
    sk = skeleton_of(config, ref, source, note, trust_remote_code)
    return Offloaded(loaded, require_compressible(sk.layers, ref, model), sk.total_params)


def device_map(model) -> dict:
    """Module prefix -> where it was placed ('cpu', 'disk' or a GPU index); {'': device}
    when the whole model fitted on one device (accelerate then sets no map)."""
    found = getattr(model, "hf_device_map", None)
    if found:
        return found
    device = next(model.parameters()).device
    return {"": device.index if device.type == "cuda" else device.type}


def placement(model) -> dict:
    """Bytes of parameters (fp32, as loaded) per place: 'cuda:N', 'cpu', 'disk'."""
    out: dict[str, int] = {}
    params = dict(model.named_parameters())
    for prefix, where in device_map(model).items():
        place = f"cuda:{where}" if isinstance(where, int) else str(where)
        n = sum(p.numel() * p.element_size() for name, p in params.items()
                if not prefix or name == prefix or name.startswith(prefix + "."))
        out[place] = out.get(place, 0) + n
    return out


class _Weights:
    """Read and write a parameter of a dispatched model wherever it lives: on its device, or
    (on the meta device) in accelerate's offloaded weights, in memory or on disk."""

    def __init__(self, model):
        self.loader = None
        for m in model.modules():
            wm = getattr(getattr(m, "_hf_hook", None), "weights_map", None)
            if wm is not None:
                self.loader = wm.dataset
                break

    def get(self, name: str, p: torch.Tensor) -> torch.Tensor:
        if p.device.type != "meta":
            return p.detach()
        if self.loader is None or self.loader.save_folder is None:
            raise UserError(f"{name}: offloaded, but not through an offload folder this engine can write to")
        return self.loader[name]

    def put(self, name: str, p: torch.Tensor, value: torch.Tensor) -> None:
        from accelerate.utils import offload_weight

        value = value.to(torch.float32)
        if p.device.type != "meta":
            p.data.copy_(value.to(p.device))
        elif name in self.loader.state_dict:  # offloaded to the CPU's memory
            self.loader.state_dict[name].copy_(value.cpu())
        else:  # on disk: a new file in the offload folder (the checkpoint stays untouched)
            offload_weight(value.cpu(), name, self.loader.save_folder, self.loader.index)


def check(recipe) -> None:
    """Refuse what this path cannot do yet (a one-line UserError)."""
    if recipe.distill_steps:
        raise UserError("--max-memory: distillation is not available on an offloaded model (it trains through "
                        "the whole model); drop --distill-steps")
    if any(r.lowrank_method == "shared" and (r.rank or r.rank_ratio) for r in (recipe, *recipe.rule_recipes())):
        raise UserError("--max-memory: a shared basis needs the weights of several blocks at once, and this path "
                        "holds one layer at a time; drop --lowrank-method shared")


STATS_BUDGET = 2**30  # bytes of calibration statistics held at once, by default


def passes(layers: list[LayerInfo], budget: int) -> list[list[LayerInfo]]:
    """The calibrated layers in model order, cut into runs whose statistics (H: in x in fp32,
    4 in^2 bytes each) fit `budget`; a layer larger than the budget has a pass of its own.

    >>> layers = [LayerInfo("q", (128, 128), "linear"), LayerInfo("k", (128, 128), "linear"),
    ...           LayerInfo("down", (128, 512), "linear")]
    >>> [[i.name for i in p] for p in passes(layers, 200_000)]  # 65,536 + 65,536 B; then 1,048,576 B alone
    [['q', 'k'], ['down']]
    """
    out, size = [], budget + 1
    for info in layers:
        need = 4 * info.shape[1] ** 2
        if size + need > budget:
            out.append([])
            size = 0
        out[-1].append(info)
        size += need
    return out


class _Layers:
    """A dispatched model's layers, read and written back one at a time. `unwritten`: each
    parameter not written yet -> every name it goes by (a tied head's weight is its embedding's,
    perhaps offloaded twice); `stacks`: an experts parameter's new value, filled expert by expert."""

    def __init__(self, model, layers: list[LayerInfo]):
        self.model, self.weights, self.stacks = model, _Weights(model), {}
        self.unwritten = {name: [name] for name, _ in model.named_parameters(remove_duplicate=False)}
        for info in layers:
            if info.tied_to is not None:
                self.unwritten[f"{info.tied_to}.weight"].append(f"{info.name}.weight")
                self.unwritten.pop(f"{info.name}.weight", None)

    def read(self, info: LayerInfo) -> torch.Tensor:
        """The layer's (out, in) matrix, fp32; an expert's is a view into its whole 3-D parameter."""
        p = self.model.get_parameter(info.param_name)
        if info.index is None:
            return info.kind.from_param(self.weights.get(info.param_name, p)).float()
        if info.param_name not in self.stacks:  # held while its experts are compressed
            self.stacks[info.param_name] = self.weights.get(info.param_name, p).float().clone()
        return info.kind.from_param(self.stacks[info.param_name][info.index])

    def write(self, info: LayerInfo, matrix: torch.Tensor) -> None:
        """The layer's new (out, in) matrix, written where it was read (experts: after the last)."""
        if info.index is None:
            return self.put(info.param_name, info.kind.to_param(matrix))
        full = self.stacks[info.param_name]
        full[info.index] = info.kind.to_param(matrix)
        if info.index == full.shape[0] - 1:
            self.put(info.param_name, self.stacks.pop(info.param_name))

    def put(self, name: str, value: torch.Tensor) -> None:
        """`value` written under every name of parameter `name` (once per tensor, unless offloaded)."""
        done = set()
        for n in self.unwritten.pop(name):
            p = self.model.get_parameter(n)
            if p.device.type == "meta" or id(p) not in done:
                self.weights.put(n, p, value)
                done.add(id(p))


class _Statistics:
    """Calibration statistics collected pass by pass (`passes`): each layer's H until it is
    compressed, the summary `compress_in_place` returns, and the calibrated layers that got none."""

    def __init__(self, loaded: Loaded, runs: list[list[LayerInfo]], budget: int, layers: int):
        self.loaded, self.hessians, self.fallback = loaded, {}, []
        self.first_of = {run[0].name: run for run in runs}  # in model order
        self.summary = {"passes": len(runs), "stats_budget_bytes": budget, "seconds": 0.0, "layers": layers}

    def collect(self, name: str | None = None) -> None:
        """Run the pass that starts at layer `name` (None: the first), if any, on the model as it is now."""
        run = self.first_of.pop(next(iter(self.first_of), None) if name is None else name, None)
        if run is not None:
            modules, experts = calibrate.targets(self.loaded.model, run)
            cal = calibrate.collect(self.loaded.model, self.loaded.tokenizer, modules, device=self.loaded.device,
                                    experts=experts)
            self.hessians.update(cal.hessians)
            self.summary.update(source=cal.source, samples=cal.samples, tokens=cal.tokens,
                                seconds=self.summary["seconds"] + cal.seconds)

    def hessian(self, info: LayerInfo, lr, device: torch.device) -> torch.Tensor | None:
        """The layer's H (made where the layer ran), moved to `device`; None where there is none."""
        h = self.hessians.pop(info.name, None)
        if h is None and lr.calibrated and info.role != "embedding":
            self.fallback.append(info.name)  # its methods fall back to the plain ones
        return None if h is None else h.to(device)

    def result(self) -> dict | None:
        """The summary with `plain_fallback`; None when the recipe needed no pass."""
        return {**self.summary, "plain_fallback": self.fallback} if self.summary["passes"] else None


def _compress_layer(info: LayerInfo, w: torch.Tensor, lr, h: torch.Tensor | None) -> tuple:
    """One layer's (out, in) fp32 matrix `w` under its recipe `lr`, with its input statistics `h`
    (or None): (its report, {'relative_error', 'sqnr_db'}, the matrix it now computes with)."""
    factors = functools.cache(functools.partial(layer_factors, w, lr.lowrank_method, h))  # SVD at most once
    stored = pipeline.compress(info.name, w, lr, factors, hessian=h if lr.calibrated else None)
    new = stored.matrix()
    rel, sqnr = transforms.error_stats(w, new, torch.linalg.vector_norm(w).item() ** 2)
    energy = svd.energy_kept(factors()[1], stored.rank) if stored.rank else None
    return stored.report(info, energy), {"relative_error": rel, "sqnr_db": sqnr}, new


def compress_in_place(off: Offloaded, recipe, progress=None,
                      stats_budget: int = STATS_BUDGET) -> tuple[list[LayerReport], dict, dict | None]:
    """Apply `recipe` to a model loaded by `load`, one layer at a time (`progress(done, total,
    name)` after each); every other parameter is rounded to fp16. Returns the layers' reports,
    per compressed layer its relative error and SQNR (dB), and the calibration (None when
    the recipe needs none).

    A calibrated method (whitened SVD, Wanda, GPTQ) needs each layer's input statistics. They
    are collected in passes over the calibration text (`passes`: at most `stats_budget` bytes
    of them held at once), each pass just before its layers are compressed, so a pass after
    the first sees the inputs of a model whose earlier layers are compressed already (GPTQ's
    sequential order). In one pass they are the original model's, as in a Workspace."""
    check(recipe)
    selected = select(off.layers, recipe)
    chosen = {i.name for i in selected}
    calibrated = [i for i in selected if i.role != "embedding"] if recipe.calibrated else []
    layers = _Layers(off.loaded.model, off.layers)
    stats = _Statistics(off.loaded, passes(calibrated, stats_budget), stats_budget, len(calibrated))
    reports, errors = [], {}
    with torch.inference_mode():
        stats.collect()  # the first pass on the original model, before anything is written
        for k, info in enumerate(off.layers):
            if info.tied_to is not None:
                continue
            stats.collect(info.name)  # the next pass, if it starts here: on the model as it is now
            w = layers.read(info)  # from the parameter, in its own layout (Conv1D: (in, out); experts: 3-D)
            if info.name in chosen:  # its error taken before the write: w may be the weight itself
                lr = recipe.for_layer(info.name)
                report, errors[info.name], new = _compress_layer(info, w, lr, stats.hessian(info, lr, w.device))
            else:
                report, new = LayerReport.left_alone(info), w.half()
            reports.append(report)
            layers.write(info, new)
            if progress:
                progress(k + 1, len(off.layers), info.name)
        for name in list(layers.unwritten):  # norms, biases, position embeddings: fp16
            layers.put(name, layers.weights.get(name, off.loaded.model.get_parameter(name)).half())
    return reports, errors, stats.result()


def run(off: Offloaded, recipe, evaluator, quick: bool = False, stats_budget: int = STATS_BUDGET) -> dict:
    """Compress the model in place under `recipe` and evaluate it with `evaluator` (built
    before, from the original): the memory report with each layer's error, the metrics, the
    peak memory of compressing and of evaluating, and the seconds of each."""
    from engine.hardware.peak import Peak

    device = off.loaded.device
    t0 = time.perf_counter()
    with Peak(device) as peak_compress:
        reports, errors, calibration = compress_in_place(off, recipe, stats_budget=stats_budget)
    apply_s = time.perf_counter() - t0
    memory = memory_report(off.layers, off.total_params, reports).to_dict(errors)
    t0 = time.perf_counter()
    with Peak(device) as peak_eval:
        metrics = evaluator(off.loaded.model, quick=quick)
    return {"memory": memory, "metrics": metrics, "calibration": calibration, "peak_memory": peak_eval.to_dict(),
            "peak_memory_compress": peak_compress.to_dict(),
            "seconds": {"apply": apply_s, "evaluate": time.perf_counter() - t0}}
