"""The three export formats, told apart by what lies at a path, and read back the same way.

    formats.kind("exports/minilm-int3")      # 'explorer' (manifest.json), 'gguf' (a GGUF file written
                                             # by export, or a folder holding one), 'compressed-tensors', or None
    ref, recipe = formats.source_of(path)     # the source model and the recipe the export names
    formats.load_into(work, path)             # a workspace of that model, filled from the files

A GGUF file is the explorer's export when its metadata names its source model (`explorer.source`);
any other GGUF file is no export but a source model itself (engine.models.gguf_source), loaded as
a folder or a hub id is.
"""
from __future__ import annotations

import os
from pathlib import Path

from engine.errors import UserError
from engine.models import gguf_source
from engine.storage import ct_file, gguf_file
from engine.storage import explorer_format as explorer_folder


def _gguf_export(path: str | os.PathLike) -> Path | None:
    """The explorer's GGUF export at `path` (the file, or the one GGUF file a folder holds), or None."""
    try:
        file = gguf_source.gguf_in(path)
    except (UserError, OSError):
        return None
    return file if file is not None and gguf_file.is_export(file) else None


def kind(path: str | os.PathLike) -> str | None:
    """'explorer', 'gguf', 'compressed-tensors', or None when `path` is no export."""
    if explorer_folder.is_export(path):
        return "explorer"
    if _gguf_export(path) is not None:
        return "gguf"
    if ct_file.is_folder(path):
        return "compressed-tensors"
    return None


def _module(path):
    if kind(path) is None:
        raise UserError(f"{str(path)!r} is no export of this explorer (an export folder, a GGUF file whose metadata "
                        "names its source model, or a compressed-tensors folder)")
    return {"explorer": explorer_folder, "gguf": gguf_file, "compressed-tensors": ct_file}[kind(path)]


def _file(path):
    """The path the format's module reads: a GGUF export's file, else `path` itself."""
    return _gguf_export(path) or path


def source_of(path: str | os.PathLike):
    """(the source model's ref, the recipe) an export of any format names."""
    if kind(path) == "explorer":
        from engine.recipe.recipe import Recipe

        manifest = explorer_folder.read_manifest(path)
        return manifest["model"]["ref"], Recipe.from_dict(manifest["recipe"])
    return _module(path).source_of(_file(path))


def load_into(work, path: str | os.PathLike):
    """Fill a workspace of the export's source model from the export; returns its Applied."""
    return _module(path).load_into(work, _file(path))
