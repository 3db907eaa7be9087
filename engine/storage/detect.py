"""The three export formats, told apart by what lies at a path, and read back the same way.

    formats.kind("exports/minilm-int3")      # 'explorer' (manifest.json), 'gguf' (a .gguf file
                                             # written by export), 'compressed-tensors', or None
    ref, recipe = formats.source_of(path)     # the source model and the recipe the export names
    formats.load_into(work, path)             # a workspace of that model, filled from the files
"""
from __future__ import annotations

import os
from pathlib import Path

from engine.storage import ct_file, gguf_file
from engine.storage import explorer_format as explorer_folder


def kind(path: str | os.PathLike) -> str | None:
    """'explorer', 'gguf', 'compressed-tensors', or None when `path` is no export."""
    if explorer_folder.is_export(path):
        return "explorer"
    if str(path).endswith(".gguf") and Path(path).is_file():
        return "gguf"
    if ct_file.is_folder(path):
        return "compressed-tensors"
    return None


def _module(path):
    return {"explorer": explorer_folder, "gguf": gguf_file, "compressed-tensors": ct_file}[kind(path)]


def source_of(path: str | os.PathLike):
    """(the source model's ref, the recipe) an export of any format names."""
    if kind(path) == "explorer":
        from engine.recipe.recipe import Recipe

        manifest = explorer_folder.read_manifest(path)
        return manifest["model"]["ref"], Recipe.from_dict(manifest["recipe"])
    return _module(path).source_of(path)


def load_into(work, path: str | os.PathLike):
    """Fill a workspace of the export's source model from the export; returns its Applied."""
    return _module(path).load_into(work, path)
