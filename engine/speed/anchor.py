"""llama.cpp beside the explorer's runtime: a GGUF file timed on the same prompt, the same greedy
steps and the same threads (llama-cpp-python, whose build is llama.cpp; optional: `make llamacpp`).

    llama_cpp(loaded, settings, ids)           # the GGUF file the model came from (smollm2's Q4_1), or None
    gguf_timing(path, ids, new_tokens, repeats)  # any GGUF file: the explorer's own export, say
"""
from __future__ import annotations

import time
from statistics import median_high
from pathlib import Path

import torch


def installed() -> dict | None:
    """None where llama-cpp-python imports, else the report's line saying it is not installed."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return {"installed": False, "note": "llama-cpp-python is not installed (make llamacpp, or "
                                            "pip install llama-cpp-python==0.3.36)"}
    return None


def gguf_timing(path: str | Path, ids: list[int], new_tokens: int, repeats: int) -> dict:
    """llama.cpp's prefill of `ids` and `new_tokens` greedy decode steps on the GGUF file at `path`,
    on torch's thread count: medians of `repeats` runs after one warm-up run."""
    import llama_cpp

    path, threads = Path(path), torch.get_num_threads()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(ids) + new_tokens + 8, n_threads=threads,
                          n_threads_batch=threads, n_batch=max(512, len(ids)), verbose=False)
    prefill, decode = [], []
    for _ in range(repeats + 1):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        for _ in range(new_tokens):
            llm.eval([int(llm.scores[llm.n_tokens - 1].argmax())])
        prefill.append(t1 - t0)
        decode.append(time.perf_counter() - t1)
    p, d = median_high(prefill[1:]), median_high(decode[1:])
    return {"installed": True, "version": llama_cpp.__version__, "file": path.name, "threads": threads,
            "bytes": path.stat().st_size, "prefill_tokens_per_s": len(ids) / p, "decode_tokens_per_s": new_tokens / d}


def llama_cpp(loaded, settings, ids: torch.Tensor) -> dict | None:
    """llama.cpp's figures for the GGUF file the model came from (smollm2's Q4_1, any GGUF source),
    where llama-cpp-python is installed, on the prompt `ids` (1, tokens). None where it does not apply."""
    from engine.models.loading import gguf_file

    path = gguf_file(loaded.ref)
    if path is None or loaded.kind != "causal-lm":
        return None
    return installed() or gguf_timing(path, ids[0].tolist(), settings.new_tokens, settings.repeats)
