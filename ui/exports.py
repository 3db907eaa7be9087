"""The files the Explore page builds from the current recipe: the explorer's own export (zipped),
a GGUF file, a compressed-tensors folder (zipped), and what each would hold. Each is written by
the engine (engine.storage) into a temporary folder and handed back as bytes for the download."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

from engine.storage import ct_file, gguf_file
from engine.storage import explorer_format as export_format

from .context import Context, holds_export


def _name(ctx: Context, *more: str) -> str:
    """A file name for the current recipe: the model, the recipe, then `more`."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", ctx.recipe.describe()).strip("-").lower()[:80]
    return "-".join(filter(None, [Path(ctx.ref).name, slug, *more]))


def export_zip(ctx: Context, entropy: bool = False) -> tuple[str, bytes, str]:
    """(file name, zip, what its tensor bytes are) of the current recipe's export: written from
    the workspace (Huffman-coded with `entropy`), or, when the workspace holds a loaded
    export of this explorer's format, that export's own files."""
    if holds_export(ctx) and export_format.is_export(ctx.export):
        data, manifest = export_format.zip_folder(ctx.export), export_format.read_manifest(ctx.export)
        name = Path(ctx.export).name
    else:
        ctx.work.ensure(ctx.recipe)
        name = _name(ctx, "huffman" if entropy else "")
        data, manifest = export_format.zipped(ctx.work, name, entropy=entropy)
    stored, fixed = manifest["tensor_bytes"], manifest["predicted_bytes"]
    what = (f"{stored:,} bytes of tensors, Huffman-coded ({fixed:,} at fixed width: {stored / fixed:.1%})"
            if manifest.get("entropy") else f"{stored:,} bytes of tensors (fixed width)")
    return f"{name}.zip", data, what


def gguf_summary(ctx: Context) -> dict:
    """What a GGUF file of the current recipe would hold (engine.storage.gguf_file.summary)."""
    ctx.work.ensure(ctx.recipe)
    return gguf_file.summary(ctx.work)


def export_gguf(ctx: Context, dense_fallback: bool) -> tuple[str, bytes, str]:
    """(file name, the GGUF file, what its tensors are) of the current recipe."""
    ctx.work.ensure(ctx.recipe)
    export_format.check_download(ctx.work)
    with tempfile.TemporaryDirectory(prefix="gguf-") as tmp:
        report = gguf_file.write(ctx.work, tmp, dense_fallback)
        data = Path(report["file"]).read_bytes()
    what = (f"{len(report['tensors'])} tensors; the compressed layers {report['written_bytes']:,} bytes "
            f"(predicted {report['predicted_bytes']:,}, dense fallbacks {report['fallback_added_bytes']:,} more)")
    return _name(ctx) + ".gguf", data, what


def ct_summary(ctx: Context) -> dict:
    """What a compressed-tensors folder of the current recipe would hold (engine.storage.ct_file)."""
    ctx.work.ensure(ctx.recipe)
    return ct_file.summary(ctx.work)


def export_ct(ctx: Context, dense_fallback: bool) -> tuple[str, bytes, str]:
    """(file name, the folder zipped, what is in it) of the current recipe in compressed-tensors' format."""
    ctx.work.ensure(ctx.recipe)
    export_format.check_download(ctx.work)
    name = _name(ctx, "compressed-tensors")
    with tempfile.TemporaryDirectory(prefix="ct-") as tmp:
        folder = Path(tmp) / name
        report = ct_file.write(ctx.work, folder, dense_fallback)
        data = export_format.zip_folder(folder, sorted(f.name for f in folder.iterdir()))
    what = (f"{report['layers']} layers packed, {report['written_bytes']:,} bytes of codes and scales (predicted "
            f"{report['predicted_bytes']:,}), {report['dense_fallback']} dense by the fallback")
    return f"{name}.zip", data, what


def report(ctx: Context, memory: dict, quality: dict, full: bool, baseline: dict, protocol: dict,
           speed: dict | None = None, sweep: dict | None = None):
    """(file name, a callable that builds the HTML report): the report is built from these
    plain numbers only when the download is pressed (charts.report)."""
    from charts import report as html_report

    ex = ctx.explorer
    run = {"model": ctx.ref, "source": ex.loaded.source, "kind": ex.kind, "device": str(ex.loaded.device),
           "note": ex.loaded.note, "recipe": ctx.recipe.to_dict(), "memory": memory, "baseline_metrics": baseline,
           "metrics": {**quality, "protocol": {**protocol, "estimate_only": not full}}}
    return _name(ctx, "report.html"), lambda: html_report.html(run, speed, sweep)
