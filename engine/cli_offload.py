"""`python -m engine run MODEL --max-memory ...`: a model loaded across GPUs, CPU and disk by
accelerate, compressed and evaluated layer by layer (engine.offload)."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from .errors import UserError


def _scratch(folder: str | None) -> str:
    """A fresh folder for the offloaded weights: inside --offload-folder (which must exist, or
    be creatable beside an existing parent), else in the system's temporary folder."""
    if folder is None:
        return tempfile.mkdtemp(prefix="offload-")
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise UserError(f"--offload-folder: {folder!r} is a file")
    if not path.parent.is_dir():
        raise UserError(f"--offload-folder: folder {str(path.parent)!r} does not exist")
    path.mkdir(exist_ok=True)
    return tempfile.mkdtemp(prefix="offload-", dir=path)


def run(args, recipe, text: str | None, name: str | None) -> dict:
    """The `run` report of `recipe` on args.model loaded within --max-memory."""
    from . import offload
    from .evaluate import make_evaluator

    if args.device:
        raise UserError("--max-memory places the model itself (GPUs first, then the CPU, then disk): drop --device")
    max_memory = offload.parse_max_memory(args.max_memory)
    budget = offload.STATS_BUDGET
    if args.calibration_memory:
        budget = offload.parse_size(args.calibration_memory, "--calibration-memory")
    offload.check(recipe)  # before minutes of loading
    scratch = _scratch(args.offload_folder)
    try:
        off = offload.load(args.model, max_memory, scratch, args.trust_remote_code)
        loaded = off.loaded
        placement = offload.placement(loaded.model)
        t0 = time.perf_counter()
        evaluator = make_evaluator(loaded, text, name)  # reference outputs, before any change
        reference_s = time.perf_counter() - t0
        result = offload.run(off, recipe, evaluator, quick=args.quick, stats_budget=budget)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "model": args.model, "export": None, "export_stored": None, "source": loaded.source, "kind": loaded.kind,
        "device": str(loaded.device), "note": loaded.note, "recipe": recipe.to_dict(),
        "metrics": {**result["metrics"], "protocol": {**evaluator.protocol, "estimate_only": args.quick}},
        "baseline_metrics": evaluator.baseline(), "memory": result["memory"], "calibration": result["calibration"],
        "distillation": None, "peak_memory": result["peak_memory"],
        "offload": {"max_memory": {str(k): v for k, v in max_memory.items()}, "placement_bytes": placement,
                    "device_map": {k: str(v) for k, v in offload.device_map(loaded.model).items()},
                    "peak_memory_compress": result["peak_memory_compress"]},
        "seconds": {"load": loaded.load_seconds, "reference": reference_s, **result["seconds"]},
    }
