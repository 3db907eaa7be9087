"""How fast it runs: the original model and the compressed one on real kernels, side by side.

    report = measure(explorer, recipe, SpeedSettings())   # what `python -m engine speed` prints

A causal LM: a prompt of `prompt_tokens` tokens of the evaluation text (gensim's
lee_background.cor), batch 1; prefill is one forward pass over it with the cache on; decode
is `new_tokens` greedy steps with the key/value cache, after a prefill. An encoder: sentences/s
on a batch of `batch` sentences of the same text. Every figure is the median over `repeats`
runs after one warm-up run. The models: the original in fp32, in bf16 where the machine has
it natively, and the compressed runtime model (engine.speed.runtime) in the runtime dtype: by default
bf16 where this machine has native bf16 matmuls, else fp32 (engine.hardware.machine.runtime_dtype), with
each int8 and int4 kernel timed against the dense product for this workload and the faster one
run (engine.speed.tuning), so that no layer is slower than the original's. Peak memory: the
bytes of the tensors the model holds, plus the peak rise of memory while it runs (CUDA's peak
allocated bytes; on the CPU the process's resident set, engine.hardware.peak).
"""
from __future__ import annotations

import time
from statistics import median_high
from dataclasses import dataclass

import torch

from engine.drivers.footprint import kv_cache_of
from engine.hardware import machine
from engine.hardware.peak import Peak
from engine.models import data
from engine.pipeline.tally import LayerReport, memory_report
from engine.speed import anchor, lean, roofline, runtime, tuning


@dataclass(frozen=True)
class SpeedSettings:
    prompt_tokens: int = 128
    new_tokens: int = 32
    batch: int = 32  # sentences, for an encoder
    repeats: int = 5
    dtype: str = "auto"  # the runtime model's activations: 'auto' (engine.hardware.machine.runtime_dtype), 'bf16', 'fp32'
    timed_kernels: bool = True  # each int8/int4 kernel against the dense product, the faster runs (engine.speed.tuning)
    path: str = "auto"  # 'auto': the lean path where the layout has one (engine.speed.lean); 'transformers': never
    compile: bool = False  # the lean path's one-token step through torch.compile, for every model timed


DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prompt(loaded, tokens: int) -> torch.Tensor:
    """The first `tokens` tokens of lee_background.cor (its articles joined by blank lines),
    tokenized from as many articles as they need, not the whole text."""
    articles = data.lee_background()
    for n in range(1, len(articles) + 1):
        ids = loaded.tokenizer("\n\n".join(articles[:n]), add_special_tokens=False)["input_ids"]
        if len(ids) > tokens:  # one token more: the last article's end tokenized as in the whole text
            break
    return torch.tensor([ids[:tokens]], device=loaded.device)


class Steps:
    """A causal LM's generation as two calls: `first(ids)` (an empty cache, then the prompt) and
    `next(ids)` (one more token), each returning logits whose last position picks the next token;
    on transformers' forward (its dynamic cache) or on the lean path (engine.speed.lean)."""

    def __init__(self, model=None, lean=None):
        self.model, self.lean, self.past = model, lean, None

    def first(self, ids):
        if self.lean is not None:
            self.lean.reset()
            return self.lean(ids)
        out = self.model(ids, use_cache=True)
        self.past = out.past_key_values
        return out.logits

    def next(self, ids):
        if self.lean is not None:
            return self.lean(ids)
        out = self.model(ids, past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return out.logits


def causal_timing(steps: Steps, ids, new_tokens: int, repeats: int) -> dict:
    """Prefill of `ids` and `new_tokens` greedy steps, `repeats` times after a warm-up: the medians."""
    device = ids.device
    prefill, decode = [], []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            _sync(device)
            t0 = time.perf_counter()
            logits = steps.first(ids)
            _sync(device)
            t1 = time.perf_counter()
            for _ in range(new_tokens):
                logits = steps.next(logits[:, -1:].argmax(-1))
            _sync(device)
            prefill.append(t1 - t0)
            decode.append(time.perf_counter() - t1)
    p, d = median_high(prefill[1:]), median_high(decode[1:])
    return {"prefill_seconds": p, "prefill_tokens_per_s": ids.shape[1] / p, "decode_seconds": d,
            "decode_tokens_per_s": new_tokens / d}


def _encoder(model, batch: dict, repeats: int) -> dict:
    with torch.inference_mode():
        t = roofline.median_seconds(lambda: model(**batch), repeats, batch["input_ids"].device)
    return {"batch_seconds": t, "sentences_per_s": batch["input_ids"].shape[0] / t}


def inputs(loaded, settings: SpeedSettings):
    """What every model is timed on, tokenized once: the prompt's ids (1, tokens) of a causal LM,
    else a batch of `settings.batch` documents of up to 128 tokens."""
    if loaded.kind == "causal-lm":
        return prompt(loaded, settings.prompt_tokens)
    batch = loaded.tokenizer(list(data.lee_documents())[: settings.batch], padding=True, truncation=True,
                             max_length=128, return_tensors="pt")
    return {k: v.to(loaded.device) for k, v in batch.items()}


def _time(model, held: int, loaded, x, settings: SpeedSettings, lean=None) -> dict:
    """The model's figures: on the lean path where `lean` is given (its held bytes then; compiled
    first with `settings.compile`, the seconds reported), else transformers' forward."""
    compiled = {}
    if lean is not None and settings.compile:
        compiled = {"compile_seconds": lean.compile()}
    with Peak(loaded.device) as peak:
        if loaded.kind == "causal-lm":
            out = causal_timing(Steps(model, lean), x, settings.new_tokens, settings.repeats)
        else:
            out = _encoder(model, x, settings.repeats)
    rise = max(0, peak.peak - peak.start) if peak.peak is not None and peak.start is not None else 0
    return {**out, **compiled, "held_bytes": held, "peak_memory_bytes": held + rise}


def max_abs_diff(work, rt, loaded, ids: torch.Tensor, lean=None) -> tuple[float, float]:
    """The largest difference between the workspace's outputs and the runtime model's on `ids`
    (logits of a causal LM, every position's, on the lean path where `lean` is given; the last
    hidden state otherwise), and the largest |output| of the workspace, its scale."""
    pick = (lambda o: o.logits) if loaded.kind == "causal-lm" else (lambda o: o.last_hidden_state)
    with torch.inference_mode():
        a = pick(work.model(ids))
        if lean is not None:
            lean.reset()
            b = lean(ids, all_logits=True)
            lean.reset()
        else:
            b = pick(rt.model(ids))
    return (a.float() - b.float()).abs().max().item(), a.abs().max().item()


def path_for(model, loaded, settings: SpeedSettings):
    """The lean forward of a causal LM (engine.speed.lean) where its layout has one and
    `settings.path` allows it, else None; and why."""
    if loaded.kind != "causal-lm":
        return None, "an encoder runs on transformers' forward"
    if settings.path == "transformers":
        return None, "asked for (--path transformers)"
    if settings.compile:
        why = lean.compile_why_not(loaded.device)
        if why:
            from engine.errors import UserError

            raise UserError(f"--compile: {why}")
    return lean.build(model, settings.prompt_tokens + settings.new_tokens)


def _original(model, loaded, x, settings, on_lean: bool) -> dict:
    """The original's figures, on the path the compressed model takes (its layers unjoined: no copy)."""
    fast = lean.build(model, settings.prompt_tokens + settings.new_tokens)[0] if on_lean else None
    return _time(model, fast.held_bytes() if fast else runtime.held_bytes(model), loaded, x, settings, fast)


def measure(explorer, recipe, settings: SpeedSettings = SpeedSettings(), progress=None) -> dict:
    """The speed report (see the module's docstring); `progress(step, steps, what)` as it goes."""
    from engine.errors import UserError

    loaded = explorer.loaded
    if loaded.kind == "seq2seq":
        raise UserError("speed: encoder-decoder models are not measured yet (causal LMs and encoders are)")
    device = loaded.device
    dtype_name, dtype_why = machine.runtime_dtype(device, settings.dtype)
    if dtype_name == "bf16" and not machine.native_bf16(device):
        dtype_why += "; this machine has no native bf16 matmuls: they are emulated, slower than fp32"
    dtype = DTYPES[dtype_name]
    steps = 7
    say = progress or (lambda *a: None)
    say(0, steps, "measuring this machine's bandwidth and matmul throughput")
    here = roofline.machine(device)
    work = explorer.workspace()
    say(1, steps, "compressing")
    applied = work.apply(recipe)
    say(2, steps, "building the runtime model on its kernels")
    x = inputs(loaded, settings)
    workload = (tuning.Workload.causal(settings.prompt_tokens, settings.new_tokens) if loaded.kind == "causal-lm"
                else tuning.Workload.encoder(int(x["input_ids"].numel())))
    rt = runtime.build(work, dtype, workload if settings.timed_kernels else None)
    fast, path_why = path_for(rt.model, loaded, settings)
    first = min(settings.prompt_tokens, 64)  # the outputs compared on the prompt's first tokens
    diff, scale = max_abs_diff(work, rt, loaded, x[:, :first] if loaded.kind == "causal-lm" else prompt(loaded, first),
                               fast)
    held = work.explorer  # the model compressed: a smaller one after structured pruning
    del work
    originals = {}
    say(3, steps, "timing the original in fp32")
    originals["fp32"] = _original(loaded.model, loaded, x, settings, fast is not None)
    if machine.native_bf16(device):
        say(4, steps, "timing the original in bf16")
        originals["bf16"] = _original(runtime.cast(loaded.model, torch.bfloat16), loaded, x, settings, fast is not None)
    say(5, steps, "timing the compressed model")
    compressed = _time(rt.model, fast.held_bytes() if fast else rt.held_bytes(), loaded, x, settings, fast)
    say(6, steps, "timing llama.cpp on the model's GGUF file, where it applies")
    anchor_row = anchor.llama_cpp(loaded, settings, x) if loaded.kind == "causal-lm" else None
    say(7, steps, "done")
    rate = "decode_tokens_per_s" if loaded.kind == "causal-lm" else "sentences_per_s"
    speedup = {f"{what}_vs_{name}": compressed[key] / o[key]
               for name, o in originals.items()
               for what, key in ([("decode", rate), ("prefill", "prefill_tokens_per_s")]
                                 if loaded.kind == "causal-lm" else [("sentences", rate)])}
    if anchor_row and anchor_row.get("installed"):
        speedup["decode_vs_llama_cpp"] = compressed["decode_tokens_per_s"] / anchor_row["decode_tokens_per_s"]
        speedup["prefill_vs_llama_cpp"] = compressed["prefill_tokens_per_s"] / anchor_row["prefill_tokens_per_s"]
    return {"model": loaded.ref, "kind": loaded.kind, "device": str(device), "threads": torch.get_num_threads(),
            "threads_why": machine.threads_why(),
            "machine": machine.header(device), "recipe": recipe.to_dict(), "settings": settings.__dict__,
            "runtime_dtype": dtype_name, "runtime_dtype_why": dtype_why,
            "kernel_choice": (f"each int8 and int4 kernel timed against the dense product on this machine for "
                              f"{workload.what}; the faster runs") if settings.timed_kernels else
                             "every kernel its format allows (not timed against dense)",
            "original": originals, "compressed": compressed, "speedup": speedup,
            "path": "lean" if fast else "transformers", "path_why": path_why or lean.LAYOUTS[type(rt.model).__name__],
            "joined": fast.joined if fast else {}, "compiled": bool(fast and settings.compile),
            "llama_cpp": anchor_row, "kernels": rt.counts(), "layers": [r.__dict__ for r in rt.layers],
            "max_abs_diff": diff, "max_abs_output": scale,
            "max_abs_diff_of": "logits" if loaded.kind == "causal-lm" else "last hidden state",
            "roofline": _roofline(explorer, held, applied.memory, here, settings, dtype_name, originals,
                                  compressed)}


def _roofline(explorer, held, memory, here, settings, dtype_name, originals, compressed) -> dict:
    """Bounds for the original (fp32, bf16) and the compressed model (`held`: the explorer of the
    model compressed, a smaller one after structured pruning), on this machine (with the measured
    fraction of each) and on the shipped list of hardware."""
    loaded = explorer.loaded
    causal = loaded.kind == "causal-lm"
    kv = {m: {w: kv_cache_of(loaded.kind, ex.loaded.model.config, 1, 1, w)["bytes"] for w in (2, 4)}
          for m, ex in (("original", explorer), ("compressed", held))}
    context = settings.prompt_tokens + settings.new_tokens // 2  # the mean context of the decode steps
    plain = memory_report(explorer.layers, explorer.total_params,
                          [LayerReport.left_alone(i) for i in explorer.layers if i.tied_to is None])
    models = {"original fp32": (roofline.model_costs(explorer, plain, 4), 4, "fp32"),
              "original bf16": (roofline.model_costs(explorer, plain, 2), 2, "bf16"),
              "compressed": (roofline.model_costs(held, memory), 4 if dtype_name == "fp32" else 2, dtype_name)}
    measured = {"original fp32": originals.get("fp32"), "original bf16": originals.get("bf16"),
                "compressed": compressed}
    out = {"machine": here, "context_tokens": context, "models": {}, "hardware": []}
    for name, (costs, width, dt) in models.items():
        b = roofline.bound(costs, here["bandwidth_bytes_per_s"], here["matmul_flops_per_s"][dt],
                           settings.prompt_tokens, context, kv[name.split()[0]][width])
        got = measured[name]
        if got and causal:
            b["decode_fraction_of_bound"] = got["decode_tokens_per_s"] / b["decode_tokens_per_s"]
            b["prefill_fraction_of_bound"] = got["prefill_tokens_per_s"] / b["prefill_tokens_per_s"]
        out["models"][name] = {**costs, **b}
    for dev in roofline.hardware():
        row = {"name": dev["name"], "kind": dev["kind"]}
        if "memory_bytes" in dev:  # a phone, board or laptop: whether the compressed model fits, and llama.cpp there
            need = memory.compressed_bytes + kv["compressed"][2] * (settings.prompt_tokens + settings.new_tokens)
            row.update(memory_bytes=dev["memory_bytes"], fits=need <= dev["memory_bytes"], anchor=dev.get("anchor"))
        for name in ("original bf16", "compressed"):
            costs = models[name][0]
            b = roofline.bound(costs, dev["bandwidth_bytes_per_s"], dev["bf16_flops_per_s"],
                               settings.prompt_tokens, context, kv[name.split()[0]][2])
            row[name] = {"decode_tokens_per_s": b["decode_tokens_per_s"],
                         "prefill_tokens_per_s": b["prefill_tokens_per_s"] if dev["bf16_flops_per_s"] else None}
        out["hardware"].append(row)
    return out
