"""The report of one run (what `python -m engine run --json` prints), built once for both paths.

    report.in_memory(explorer, recipe, model="minilm")         # a workspace: apply, evaluate
    report.in_memory(explorer, recipe, model, export=folder, manifest=manifest)  # an export
    report.offloaded("smollm2", recipe, "cpu=200MB")            # engine.drivers.offload: layer by layer

Both return the same keys, in the same order (`common`); the offloaded run adds `offload`.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path

from engine.drivers import schedule
from engine.errors import UserError
from engine.recipe.recipe import Recipe

log = logging.getLogger(__name__)


def common(model: str, loaded, recipe: dict, evaluator, metrics: dict, quick: bool, memory: dict,
           calibration: dict | None, distillation: dict | None, peak_memory: dict | None, seconds: dict,
           export: str | None = None, export_stored: dict | None = None, offload: dict | None = None,
           schedule: list | None = None) -> dict:
    """The run report's fields from what either path measured: `loaded` (engine.models.loading.Loaded)
    gives the source, kind, device and note; `evaluator` the protocol and the baseline metrics."""
    out = {
        "model": model, "export": export, "export_stored": export_stored, "source": loaded.source,
        "kind": loaded.kind, "device": str(loaded.device), "note": loaded.note, "recipe": recipe,
        "metrics": {**metrics, "protocol": {**evaluator.protocol, "estimate_only": quick}},
        "baseline_metrics": evaluator.baseline(), "memory": memory, "calibration": calibration,
        "distillation": distillation, "schedule": schedule, "peak_memory": peak_memory,
    }
    if offload is not None:
        out["offload"] = offload
    out["seconds"] = seconds
    return out


def in_memory(ex, recipe: Recipe, model: str, quick: bool = False, eval_text: str | None = None,
              eval_name: str | None = None, export: str | None = None, manifest: dict | None = None,
              progress=None, shipped: str | None = None) -> dict:
    """Apply `recipe` to a workspace of the Explorer `ex` (or, with `export` and its
    `manifest`, read the values from that export folder, whose recipe `recipe` is; with
    `shipped`, from that GGUF file or compressed-tensors folder written by `export`), distil
    when the recipe says so (`progress(step, steps, loss)` after each step), evaluate, and
    report. `model` is the name the report gives the model."""
    from engine.hardware.peak import Peak
    from engine.storage import detect as formats

    if not export and not shipped and not recipe.schedule_steps:  # a schedule cuts its own, step by step
        ex = ex.structured(recipe)  # a smaller model where the recipe removes heads, channels or blocks
    work = ex.workspace()
    selected = ex.selected(recipe)
    factored = ex.low_rank_layers(recipe)
    factorize_s = ex.factorize(factored) if factored else 0.0
    t0 = time.perf_counter()
    ev = ex.evaluator(eval_text, eval_name)  # reference outputs of the original model
    reference_s = time.perf_counter() - t0
    calibration = ex.calibration() if recipe.calibrated and selected and not export and not shipped else None
    if calibration is None and not export and not shipped and recipe.structured \
            and recipe.structure_importance == "calibration":
        calibration = ex.root.calibration()  # what ranked the heads, channels and blocks
    scheduled = None
    if export or shipped:
        applied = formats.load_into(work, export or shipped)
        recipe = dataclasses.replace(recipe, distill_steps=0, schedule_steps=0)  # the values are in the files
    elif recipe.schedule_steps:  # gradual: the steps distil as they go (engine.drivers.schedule)
        scheduled = schedule.run(ex, recipe, progress=lambda k, n, what: log.info(what))
        work, applied = scheduled.workspace, scheduled.workspace.applied
    else:
        applied = work.apply(dataclasses.replace(recipe, distill_steps=0))
    if not selected:
        log.warning("the recipe selects no layer: nothing was compressed")
    t0 = time.perf_counter()
    with Peak(ex.loaded.device) as peak:
        metrics = work.evaluate(quick=quick, eval_text=eval_text, eval_name=eval_name)
    evaluate_s = time.perf_counter() - t0
    distillation = None  # a schedule's distillation: in its steps' reports
    if recipe.distill_steps and selected and scheduled is None:
        applied = work.distill(recipe.distill_steps, recipe.distill_lr, progress=progress)
        distillation = {**applied.distillation.to_dict(), "metrics_before": metrics}
        t0 = time.perf_counter()
        metrics = work.evaluate(quick=quick, eval_text=eval_text, eval_name=eval_name)
        evaluate_s += time.perf_counter() - t0
    distill_s = distillation["seconds"] if distillation else 0.0
    stored = None
    if shipped:
        files = [Path(shipped)] if Path(shipped).is_file() else list(Path(shipped).iterdir())
        stored = {"tensor_bytes": sum(r.bytes.compressed_bytes for r in applied.memory.layers
                                      if r.compressed and r.info.tied_to is None),
                  "file_bytes": sum(f.stat().st_size for f in files),
                  "format": formats.kind(shipped)}
    if export:
        stored = {k: manifest[k] for k in ("tensor_bytes", "header_bytes", "predicted_bytes")}
        stored["entropy"] = manifest.get("entropy", False)
    return common(
        model, ex.loaded, manifest["recipe"] if export else recipe.to_dict(), ev, metrics, quick, work.report(),
        {**calibration.to_dict(), "plain_fallback": ex.uncalibrated(recipe)} if calibration else None,
        distillation, peak.to_dict(),
        {"load": ex.loaded.load_seconds, "factorize": factorize_s, "reference": reference_s,
         "calibrate": calibration.seconds if calibration else 0.0,
         "apply": scheduled.seconds if scheduled else applied.seconds - distill_s,
         "distill": distill_s, "evaluate": evaluate_s},
        export=str(export or shipped) if export or shipped else None, export_stored=stored,
        schedule=scheduled.steps if scheduled else None)


def scratch_folder(folder: str | None) -> str:
    """A fresh folder for the offloaded weights: inside `folder` (--offload-folder, which must
    exist, or be creatable beside an existing parent), else in the system's temporary folder."""
    if folder is None:
        return tempfile.mkdtemp(prefix="offload-")
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise UserError(f"--offload-folder: {folder!r} is a file")
    if not path.parent.is_dir():
        raise UserError(f"--offload-folder: folder {str(path.parent)!r} does not exist")
    path.mkdir(exist_ok=True)
    return tempfile.mkdtemp(prefix="offload-", dir=path)


def offloaded(model: str, recipe: Recipe, max_memory: str, offload_folder: str | None = None,
              calibration_memory: str | None = None, trust_remote_code: bool = False, quick: bool = False,
              eval_text: str | None = None, eval_name: str | None = None) -> dict:
    """The report of `recipe` on `model` loaded within `max_memory` ('cpu=200MB', '0=20GiB,cpu=30GiB'),
    compressed in place layer by layer (engine.drivers.offload), with at most `calibration_memory` of
    input statistics held at once. The offloaded copies are removed at the end."""
    from engine.drivers import offload
    from engine.quality import make_evaluator

    limits = offload.parse_max_memory(max_memory)
    budget = offload.STATS_BUDGET
    if calibration_memory:
        budget = offload.parse_size(calibration_memory, "--calibration-memory")
    offload.check(recipe)  # before minutes of loading
    scratch = scratch_folder(offload_folder)
    try:
        off = offload.load(model, limits, scratch, trust_remote_code)
        loaded = off.loaded
        placement = offload.placement(loaded.model)
        t0 = time.perf_counter()
        evaluator = make_evaluator(loaded, eval_text, eval_name)  # reference outputs, before any change
        reference_s = time.perf_counter() - t0
        result = offload.run(off, recipe, evaluator, quick=quick, stats_budget=budget)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    where = {"max_memory": {str(k): v for k, v in limits.items()}, "placement_bytes": placement,
             "device_map": {k: str(v) for k, v in offload.device_map(loaded.model).items()},
             "peak_memory_compress": result["peak_memory_compress"]}
    return common(model, loaded, recipe.to_dict(), evaluator, result["metrics"], quick, result["memory"],
                  result["calibration"], None, result["peak_memory"],
                  {"load": loaded.load_seconds, "reference": reference_s, **result["seconds"]}, offload=where)
