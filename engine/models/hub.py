"""What loading a Hugging Face hub model would download, asked of the hub before downloading it.

    hub.download_bytes("HuggingFaceTB/SmolLM2-135M")   # the bytes of its model.safetensors, from the hub
    hub.weight_bytes([("model.safetensors", 500), ("pytorch_model.bin", 900), ("onnx/model.onnx", 700)])
    # 500: transformers downloads the safetensors weights and nothing else of these

Used by the app's allow-list (ui/access.py) to refuse a model over a server's size limit.
"""
from __future__ import annotations

import re
from typing import Iterable

from engine.errors import UserError, one_line

# the weight files transformers' from_pretrained downloads: one file or numbered shards, at the top level
SAFETENSORS = re.compile(r"model(-\d+-of-\d+)?\.safetensors")
PYTORCH_BIN = re.compile(r"pytorch_model(-\d+-of-\d+)?\.bin")
OTHER_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def weight_bytes(files: Iterable[tuple[str, int | None]]) -> int:
    """The bytes of the weight files from_pretrained would download, from (name in the repo, size).

    The safetensors weights when the repo has them, else the PyTorch .bin weights; a repo with
    neither under transformers' names counts every weight-like file at its top level (.safetensors,
    .bin, .pt, .pth, .gguf), to err on the large side. Files in subfolders are not downloaded.

    >>> weight_bytes([("model-00001-of-00002.safetensors", 4), ("model-00002-of-00002.safetensors", 2),
    ...               ("pytorch_model.bin", 9), ("config.json", 1)])
    6
    """
    top = [(name, size or 0) for name, size in files if "/" not in name]
    for pattern in (SAFETENSORS, PYTORCH_BIN):
        chosen = [size for name, size in top if pattern.fullmatch(name)]
        if chosen:
            return sum(chosen)
    return sum(size for name, size in top if name.endswith(OTHER_WEIGHTS))


def download_bytes(repo_id: str, timeout: float = 10.0) -> int:
    """The bytes of `repo_id`'s weight files as the hub lists them (`weight_bytes`); a hub that
    cannot be asked (no network, no such repo, a gated one) is a one-line UserError."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo_id, files_metadata=True, timeout=timeout)
    except Exception as e:  # noqa: BLE001 -- whatever the hub or the network says, on one line
        raise UserError(f"the hub could not say how large {repo_id!r} is: {one_line(e)}") from None
    return weight_bytes((s.rfilename, s.size) for s in info.siblings or ())
