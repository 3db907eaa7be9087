"""The compressed model on real kernels (engine.speed.kernels, engine.speed.runtime), the speed report and the
roofline's arithmetic (engine.speed.measure, engine.speed.roofline): each kernel path computes what the
workspace computes."""
import json
import re

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from engine import Explorer, Recipe
from engine.cli import main
from engine.models.loading import minilm_path
from engine.speed import lean, runtime
from engine.speed.measure import SpeedSettings, measure
from engine.speed.roofline import model_costs

IDS = torch.randint(0, 30522, (2, 12), generator=torch.Generator().manual_seed(0))


def _logits(model):
    with torch.inference_mode():
        return model(IDS).logits


def _lean(model, ids=IDS[:1], prompt: int = 8):
    """Every position's logits on the lean path (engine.speed.lean): `prompt` tokens in one prefill,
    then one token a step; and the lean forward."""
    fast, why = lean.build(model, ids.shape[1])
    assert fast is not None, why
    out = [fast(ids[:, :prompt], all_logits=True)] + [fast(ids[:, i:i + 1]) for i in range(prompt, ids.shape[1])]
    return torch.cat(out, 1), fast


def _both(explorer, recipe, dtype=torch.float32):
    work = explorer.workspace()
    work.apply(recipe)
    rt = runtime.build(work, dtype)
    return work, rt


# tiny Llama: hidden 32, MLP 64, so groups of 32 divide every input width; the head (30,522 rows)
# is not a multiple of 16 rows, which tinygemm on the CPU needs
PATHS = [
    (Recipe(bits=8, granularity="channel"), {"int8": 14}, "int8 weight-only"),
    (Recipe(bits=4, group_size=32), {"int4": 14}, "4-bit codes in groups of 32"),
    (Recipe(bits=3, group_size=32, symmetric=False), {"int4": 14}, "3-bit codes in groups of 32, on the 4-bit kernel"),
    (Recipe(bits=2, group_size=64), {"int4": 14}, "2-bit codes in groups of "),  # 32 where a row has 32 inputs
    (Recipe(bits=6), {"dense fallback": 14}, "no kernel for 6-bit codes"),
    (Recipe(bits=8), {"dense fallback": 14}, "int8 kernel: per channel and symmetric only"),
    (Recipe(bits=4, quant_method="kmeans"), {"dense fallback": 14}, "no kernel for k-means codebooks"),
    (Recipe(sparsity=0.5, pattern="2:4"), None, "no 2:4 kernel on the CPU"),
    (Recipe(sparsity=0.5), None, "50% kept"),
]


@pytest.mark.parametrize("recipe,counts,note", PATHS, ids=lambda v: v.describe() if isinstance(v, Recipe) else "")
def test_each_kernel_path_computes_what_the_workspace_computes(tiny_explorers, recipe, counts, note):
    work, rt = _both(tiny_explorers["llama"], recipe)
    got = rt.counts()
    assert got.pop("embedding lookup") == 1 and got.pop("dense") == 1  # the embedding, and the head left alone
    if counts is not None:
        assert got == counts
    else:  # sparse at 16 bits: a CSR matmul where it measured faster, else dense
        assert set(got) <= {"csr", "dense fallback"} and sum(got.values()) == 14
    assert all(note in r.note for r in rt.layers if r.name in work.stored), [r.note for r in rt.layers]
    a, b = _logits(work.model), _logits(rt.model)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    got, fast = _lean(rt.model)  # the lean path, prefill then decode: the same function
    torch.testing.assert_close(got, a[:1], rtol=0, atol=1e-5)
    kinds = {r.kernel for r in rt.layers if r.name in work.stored}
    if len(kinds) == 1 and kinds <= {"int8", "dense fallback"}:  # q, k, v in one kernel; gate, up in one (int4: in
        assert fast.joined == {"q, k, v": 2, "gate, up": 2}     # tinygemm's tiles of rows, tests/speed/test_lean.py)


def test_low_rank_runs_two_matmuls_of_the_factors(tiny_explorers):
    work, rt = _both(tiny_explorers["llama"], Recipe(rank_ratio=0.5, bits=4, group_size=32))
    rows = {r.name: r for r in rt.layers}
    for name, stored in work.stored.items():
        # B (r, in) first: groups of 32 over 32 or 64 inputs, on int4 where it has 16 rows or more
        b_rows = stored.matrices[1].values.shape[0]
        assert stored.rank is not None and rows[name].kernel.startswith("low rank (int4, " if b_rows >= 16 else
                                                                        "low rank (dense fallback, ")
    want = _logits(work.model)
    torch.testing.assert_close(_logits(rt.model), want, rtol=0, atol=1e-5)
    got, fast = _lean(rt.model)  # two products a layer: nothing joined
    assert fast.joined == {"q, k, v": 0, "gate, up": 0}
    torch.testing.assert_close(got, want[:1], rtol=0, atol=1e-5)


def test_a_group_that_does_not_divide_the_width_falls_back_and_says_why(tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=30522, hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(tmp_path)
    work, rt = _both(Explorer.open(str(tmp_path), device="cpu"), Recipe(bits=4, group_size=32))
    notes = {r.name.rsplit(".", 1)[-1]: (r.kernel, r.note) for r in rt.layers if r.name in work.stored}
    assert notes["q_proj"] == ("dense fallback", "int4 kernel: groups of 32 do not divide the input width 48")
    assert notes["down_proj"] == ("int4", "4-bit codes in groups of 32")  # 96 inputs: 3 groups
    torch.testing.assert_close(_logits(rt.model), _logits(work.model), rtol=0, atol=1e-5)
    got, fast = _lean(rt.model)  # q, k, v and gate, up (48 inputs) dense, each set joined; down (96) on int4
    assert fast.joined == {"q, k, v": 1, "gate, up": 1}
    torch.testing.assert_close(got, _logits(work.model)[:1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "mixtral"])
def test_conv1d_and_experts_models_run_on_the_runtime(tiny_explorers, name):
    work, rt = _both(tiny_explorers[name], Recipe(bits=4, group_size=32, include_embeddings=True))
    counts = rt.counts()
    if name == "gpt2":  # Conv1D layers, stored (in, out), on the int4 kernel; the tied head refused (30,522 rows)
        assert counts["int4"] == 8
    else:  # experts compute with their stored values, dense: 2 blocks x (gate_up, down) x 4 experts
        assert counts["dense (experts)"] == 2 * 2 * 4
    torch.testing.assert_close(_logits(rt.model), _logits(work.model), rtol=0, atol=1e-5)
    assert lean.build(rt.model, 16)[0] is None  # transformers' forward: the lean path has no such layout


def test_bf16_runtime_on_minilm_stays_close_to_the_workspace(minilm_explorer):
    work, rt = _both(minilm_explorer, Recipe(bits=4, group_size=32), torch.bfloat16)
    assert rt.counts()["int4"] == 6 * 6 + 1  # six linear layers per block, and the pooler
    batch = minilm_explorer.loaded.tokenizer(["The cat sat on the mat.", "A longer second sentence, padded to."],
                                             padding=True, return_tensors="pt")  # the int4 kernel's input made contiguous
    with torch.inference_mode():
        a = work.model(**batch).last_hidden_state
        b = rt.model(**batch).last_hidden_state.float()
    assert ((a - b).norm() / a.norm()).item() < 0.02  # bf16 activations: about 3 significant digits
    int4_bytes = sum(t.untyped_storage().nbytes() for m in rt.model.modules() if hasattr(m, "packed")
                     for t in (m.packed,))
    assert int4_bytes == sum(s.shape[0] * s.shape[1] // 2 for s in (work.stored[n] for n in work.stored))


def _held_by_hand(ex, recipe_group: int, width: int) -> int:
    """Bytes the tiny Llama's runtime holds with every linear layer on the int4 kernel: half a byte per
    code, a scale and a zero per group in the activations' `width`, and the rest dense."""
    model = ex.loaded.model
    stored = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features != 30522]
    codes = sum(m.out_features * m.in_features // 2 for m in stored)
    groups = sum(m.out_features * m.in_features // recipe_group for m in stored)
    rest = model.num_parameters() - sum(m.weight.numel() for m in stored)  # embedding, head, norms
    return codes + 2 * groups * width + rest * width + _buffer_bytes(model)


def _buffer_bytes(model) -> int:
    """The rotary embedding's frequencies: kept as they are (fp32) in every copy."""
    return sum(b.numel() * b.element_size() for b in model.buffers())


@pytest.mark.parametrize("bf16", [True, False], ids=["native bf16", "no native bf16"])
def test_speed_report_and_the_roofline_bytes(tiny_explorers, monkeypatch, bf16):
    """The dtype follows the machine (forced here both ways); every figure is a relation of others."""
    monkeypatch.setenv("EXPLORER_BF16", "1" if bf16 else "0")
    ex = tiny_explorers["llama"]
    recipe = Recipe(bits=4, group_size=32)
    settings = SpeedSettings(prompt_tokens=8, new_tokens=3, repeats=1, timed_kernels=False)
    report = measure(ex, recipe, settings)
    dtype, width = ("bf16", 2) if bf16 else ("fp32", 4)
    assert report["runtime_dtype"] == dtype
    assert report["runtime_dtype_why"] == ("this CPU has native bf16 matmuls" if bf16 else
                                           "bf16 turned off (EXPLORER_BF16=0)")
    assert set(report["original"]) == ({"fp32", "bf16"} if bf16 else {"fp32"})
    c = report["compressed"]
    assert report["speedup"] == {f"{what}_vs_{name}": c[f"{what}_tokens_per_s"] / o[f"{what}_tokens_per_s"]
                                 for name, o in report["original"].items() for what in ("decode", "prefill")}
    for model in (*report["original"].values(), c):
        assert model["prefill_tokens_per_s"] == 8 / model["prefill_seconds"]
        assert model["decode_tokens_per_s"] == 3 / model["decode_seconds"]
    assert report["path"] == "lean" and report["path_why"] == "Llama (SmolLM, Llama 2 and 3)"
    # the lean path holds the weights, a static cache of 8 + 3 positions (k and v, 2 layers, 2 kv heads of 8)
    # and rope's cos and sin tables (8 + 3 positions of 8), in the activations' width; not the rotary module's
    # frequencies
    cache = lambda w: 2 * 2 * 2 * 11 * 8 * w + 2 * 11 * 8 * w  # noqa: E731
    assert report["original"]["fp32"]["held_bytes"] == 4 * ex.loaded.model.num_parameters() + cache(4)
    assert c["held_bytes"] == _held_by_hand(ex, 32, width) - _buffer_bytes(ex.loaded.model) + cache(width)
    assert report["kernels"] == {"int4": 14, "embedding lookup": 1, "dense": 1}
    assert report["max_abs_diff"] < (1e-5 if not bf16 else 0.05 * report["max_abs_output"])
    assert report["machine"].startswith("machine: ") and f"native bf16: {'yes' if bf16 else 'no'}" in report["machine"]
    # bytes a decode step reads, by hand: every weight but the input embedding table (30,522 x 32)
    total, table = ex.loaded.model.num_parameters(), 30522 * 32
    work = ex.workspace()
    memory = work.apply(recipe).memory
    assert model_costs(ex, memory, 4)["decode_weight_bytes"] == 4 * (total - table)
    assert model_costs(ex, memory)["decode_weight_bytes"] == memory.compressed_bytes - 2 * table
    roof = report["roofline"]["models"]["compressed"]
    kv = 2 * 2 * 2 * 8 * width  # 2 (k, v) x 2 layers x 2 kv heads x head dim 8 x the runtime's bytes, per token
    assert roof["decode_bytes_per_token"] == memory.compressed_bytes - 2 * table + kv * (8 + 3 // 2)
    assert roof["macs_per_token"] == sum(r.info.params for r in memory.layers if r.info.role != "embedding")
    assert [r["name"] for r in report["roofline"]["hardware"]][:2] == ["NVIDIA H200 SXM", "NVIDIA H100 SXM"]


@pytest.mark.parametrize("winner", ["int4", "int4 (bf16 activations)", "dense (faster here)"])
def test_each_kernel_runs_only_where_it_is_faster_than_dense(tiny_explorers, monkeypatch, winner):
    """The timings forced each way: the int4 kernel (fp32 activations, or bf16 ones inside the fp32 model)
    where it wins, the dense product (and why) where both lose; the outputs the same in every case."""
    from engine.speed import tuning

    timed = []
    per_token = {"dense": 0.001, "int4/g32": 0.01, "int4 (bf16 activations)/g32": 0.01}
    per_token[{"int4": "int4/g32", "int4 (bf16 activations)": "int4 (bf16 activations)/g32"}.get(winner, "dense")] = 0.0005

    def call_seconds(fn, label, shape, dtype, device, tokens, cap=None):
        timed.append((label, shape, tokens))
        return per_token[label] * tokens

    monkeypatch.setattr(tuning, "call_seconds", call_seconds)
    work = tiny_explorers["llama"].workspace()
    work.apply(Recipe(bits=4, group_size=32))
    rt = runtime.build(work, torch.float32, tuning.Workload.causal(8, 3))
    assert rt.counts() == {winner: 14, "embedding lookup": 1, "dense": 1}
    assert ("int4/g32", (64, 32), 8) in timed and ("dense", (32, 64), 1) in timed  # up and down, prefill and decode
    notes = {r.note for r in rt.layers if r.kernel == winner}
    if winner == "dense (faster here)":  # dense: 4 ms + 3 x 0.5 ms; int4 either way: 80 + 3 x 10
        assert notes == {"int4 kernel measured slower than the dense product here (110.00 ms for the int4 kernel, "
                         "110.00 ms for the int4 (bf16 activations) kernel, against 5.50 ms dense, for a 8-token "
                         "prefill and 3 one-token decode steps, float32 activations): dense runs"}
    elif winner == "int4":
        assert notes == {"4-bit codes in groups of 32"}
    else:  # dense: 8 ms + 3 x 1 ms; bf16 activations: 4 ms + 3 x 0.5 ms
        assert notes == {"4-bit codes in groups of 32, bf16 activations; measured fastest here (110.00 ms for the "
                         "int4 kernel, 5.50 ms for the int4 (bf16 activations) kernel, 11.00 ms dense, for a 8-token "
                         "prefill and 3 one-token decode steps)"}
    a, b = _logits(work.model), _logits(rt.model)
    if winner == "int4 (bf16 activations)":  # the activations rounded to bf16 (8 bits of mantissa) at each layer
        assert ((a - b).norm() / a.norm()).item() < 0.02
    else:
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    got, fast = _lean(rt.model)  # the lean path over the same kernels: what transformers' forward computes
    torch.testing.assert_close(got, b[:1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("slower, kept", [(0.99, True), (1.0, True), (1.01, False)])
def test_a_kernel_runs_where_it_is_at_least_as_fast_as_dense(tiny_explorers, monkeypatch, slower, kept):
    """A tie goes to the kernel (it holds a fraction of the bytes); a kernel 1% slower does not run."""
    from engine.speed import tuning

    monkeypatch.setattr(tuning, "call_seconds", lambda fn, label, shape, dtype, device, tokens, cap=None:
                        (slower if label.startswith("int4") else 1.0) * tokens)
    work = tiny_explorers["llama"].workspace()
    work.apply(Recipe(bits=4, group_size=32))
    counts = runtime.build(work, torch.float32, tuning.Workload.causal(8, 3)).counts()
    assert counts.get("int4" if kept else "dense (faster here)") == 14


def test_a_long_prompt_is_timed_on_an_eighth_first(tiny_explorers, monkeypatch):
    """Where a kernel on an eighth of the prompt already takes longer than dense's whole workload, the
    whole prompt is not timed (tinygemm's fp32 prefill can take seconds a call) and the note says 'over'."""
    from engine.speed import tuning

    timed = []

    def call_seconds(fn, label, shape, dtype, device, tokens, cap=None):
        timed.append((label, tokens))
        return 0.001 * tokens if label == "dense" else 0.01 * tokens

    monkeypatch.setattr(tuning, "call_seconds", call_seconds)
    work = tiny_explorers["llama"].workspace()
    work.apply(Recipe(bits=4, group_size=32))
    rt = runtime.build(work, torch.float32, tuning.Workload.causal(128, 3))
    assert ("int4/g32", 16) in timed and ("int4/g32", 128) not in timed and ("dense", 128) in timed
    # dense: 128 ms + 3 x 1 ms; int4 either way: 160 ms on 16 tokens alone, + 3 x 10 ms
    assert {r.note for r in rt.layers if r.kernel == "dense (faster here)"} == {
        "int4 kernel measured slower than the dense product here (over 190.00 ms for the int4 kernel, over "
        "190.00 ms for the int4 (bf16 activations) kernel, against 131.00 ms dense, for a 128-token prefill and 3 "
        "one-token decode steps, float32 activations): dense runs"}


def test_a_kernel_far_slower_is_timed_no_further():
    """per_call_seconds stops after one call that exceeds its cap."""
    from engine.speed.tuning import per_call_seconds

    calls = []
    per_call_seconds(lambda x: calls.append(x), torch.zeros(1), cap=-1.0)
    assert len(calls) == 1
    per_call_seconds(lambda x: calls.append(x), torch.zeros(1), least=5, budget=0.0)
    assert len(calls) == 1 + 2 + 5  # two warm-up calls, then five timed


def test_the_speed_command(tiny_models, capsys, monkeypatch):
    monkeypatch.setenv("EXPLORER_BF16", "0")  # a machine without native bf16: fp32, chosen without a flag
    args = ["speed", tiny_models["llama"], "--bits", "8", "--granularity", "channel", "--prompt-tokens", "8",
            "--new-tokens", "2", "--repeats", "1", "--device", "cpu", "--every-kernel"]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runtime_dtype"] == "fp32" and report["settings"]["dtype"] == "auto"
    assert report["kernels"]["int8"] == 14
    assert report["kernel_choice"] == "every kernel its format allows (not timed against dense)"
    assert (report["path"], report["joined"]) == ("lean", {"q, k, v": 2, "gate, up": 2})
    assert report["max_abs_diff"] < 1e-5  # the lean path's logits against the workspace's
    assert main([*args, "--json", "--path", "transformers"]) == 0
    today = json.loads(capsys.readouterr().out)
    assert (today["path"], today["path_why"], today["joined"]) == ("transformers", "asked for (--path transformers)", {})
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "path: lean (Llama (SmolLM, Llama 2 and 3); q, k, v joined in 2 blocks, gate, up joined in 2 blocks)" in out
    assert out.startswith("machine: ") and "runtime in fp32: bf16 turned off (EXPLORER_BF16=0)" in out
    assert "decode tok/s" in out and "kernels (layers): int8 14" in out and "NVIDIA H100 SXM" in out
    from engine.hardware import machine

    assert "roofline" in json.loads(machine._store().read_text())  # measured once and kept
    assert machine.remembered("marker", lambda: 1) == 1 and machine.remembered("marker", lambda: 2) == 1
    assert main([*args, "--json", "--remeasure"]) == 0
    kept = json.loads(machine._store().read_text())
    assert "marker" not in kept and "roofline" in kept  # dropped, then measured again
    capsys.readouterr()
    assert main([*args, "--repeats", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --repeats must be 1 or more, got 0"


def test_the_info_command(capsys, monkeypatch):
    from engine.hardware import machine

    monkeypatch.setenv("EXPLORER_BF16", "0")
    assert main(["info", "--json", "--device", "cpu"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["native_bf16"] is False and d["runtime_dtype"] == "fp32" and d["device"] == "cpu"
    assert d["threads"] == torch.get_num_threads() and 1 <= d["usable_cores"] <= d["cores"]
    assert d["cpu"] == machine.cpu_model() and d["gpus"] == []
    probes = {(k["kernel"], k["dtype"]): k for k in d["kernels"]}
    assert probes[("2:4", "bf16")] == {"kernel": "2:4", "dtype": "bf16", "works": False,
                                       "why": "no 2:4 kernel on the CPU"}
    assert all(k["works"] == (k["why"] == "") for k in d["kernels"])
    assert {("int8", "fp32"), ("int4", "fp32"), ("int4", "bf16"), ("csr", "fp32")} <= probes.keys()
    monkeypatch.setenv("EXPLORER_BF16", "1")
    assert main(["info", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "bf16       native on cpu" in out and "runtime    bf16 activations by default" in out


def test_a_kernel_that_computes_wrongly_is_reported_not_used(monkeypatch):
    """A probe whose kernel gives wrong values says so (a processor where a kernel misbehaves)."""
    from engine.speed import kernels, probes

    monkeypatch.setattr(kernels.Int8, "mm", lambda self, x: torch.zeros(x.shape[0], self.q.shape[0], dtype=x.dtype))
    rows = {(k["kernel"], k["dtype"]): k for k in probes.kernel_probes("cpu")}
    assert not rows[("int8", "fp32")]["works"]
    assert rows[("int8", "fp32")]["why"].startswith("int8 kernel gave a relative error of 1.0e+00")
    assert rows[("int4", "fp32")]["works"]


def test_speed_page_measures_on_press_and_shows_kernels_and_roofline(monkeypatch):
    """An encoder on a machine without native bf16 (forced); a causal LM with native bf16 (forced):
    tests/speed/test_lean.py."""
    from app_harness import APP, app_test, ok

    bf16 = False
    monkeypatch.setenv("EXPLORER_BF16", "0")
    at = app_test(APP, default_timeout=300)
    at.query_params["bits"] = "8"
    at.query_params["granularity"] = "channel"
    at.switch_page("pages/speed.py").run()
    ok(at)
    assert any("Measure speed" in i.value for i in at.info)  # nothing is timed before the press
    at.number_input(key="speed_repeats").set_value(1)
    at.button[0].click().run()  # the form's submit button
    ok(at)
    table = at.dataframe[0].value
    assert list(table["model"]) == (["original fp32", "original bf16", "compressed"] if bf16 else
                                    ["original fp32", "compressed"])
    assert (table["sentences/s"] > 0).all()
    counts = dict(re.findall(r"\*\*([^*]+)\*\*: (\d+) layers", " ".join(m.value for m in at.markdown)))
    # 6 blocks x 6 layers, and the pooler: each on the int8 kernel or, where it measured slower here, dense
    assert int(counts.get("int8", 0)) + int(counts.get("dense (faster here)", 0)) == 37, counts
    assert any(f"runtime in {'bf16' if bf16 else 'fp32'}" in c.value for c in at.caption)


def test_llama_cpp_beside_ours_only_for_a_gguf_model(minilm_explorer, smollm2_explorer, monkeypatch):
    from engine.speed.anchor import llama_cpp
    from engine.speed.measure import prompt

    settings = SpeedSettings(prompt_tokens=16, new_tokens=4, repeats=1)
    ids = prompt(smollm2_explorer.loaded, 16)
    assert llama_cpp(minilm_explorer.loaded, settings, ids) is None  # no GGUF file behind it
    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)  # as if not installed
    assert llama_cpp(smollm2_explorer.loaded, settings, ids) == {
        "installed": False, "note": "llama-cpp-python is not installed (make llamacpp, or pip install "
                                    "llama-cpp-python==0.3.36)"}


def test_llama_cpp_runs_the_shipped_gguf_where_installed(smollm2_explorer):
    from engine.speed.anchor import llama_cpp
    from engine.speed.measure import prompt

    pytest.importorskip("llama_cpp")  # optional: not in the requirements
    got = llama_cpp(smollm2_explorer.loaded, SpeedSettings(prompt_tokens=16, new_tokens=4, repeats=1),
                    prompt(smollm2_explorer.loaded, 16))
    assert got["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and got["decode_tokens_per_s"] > 0
