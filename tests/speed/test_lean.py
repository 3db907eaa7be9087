"""The lean decode path (engine.speed.lean): for every kernel path it computes what the workspace
computes, prefill and decode, in fp32 and bf16; joined kernels compute what their parts do; the
layouts it does not compute keep transformers' forward and say why."""
import pytest
import torch
from transformers import (AutoTokenizer, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

from engine import Explorer, Recipe
from engine.models.loading import minilm_path
from engine.speed import kernels, lean, runtime

IDS = torch.randint(0, 30522, (1, 12), generator=torch.Generator().manual_seed(0))


def _reference(work):
    with torch.inference_mode():
        return work.model(IDS).logits


def lean_logits(model, prompt: int = 8):
    """Every position's logits: the first `prompt` tokens in one prefill, then one token a step."""
    fast, why = lean.build(model, IDS.shape[1])
    assert fast is not None, why
    out = [fast(IDS[:, :prompt], all_logits=True)]
    out += [fast(IDS[:, i:i + 1]) for i in range(prompt, IDS.shape[1])]
    return torch.cat(out, 1), fast


def test_low_rank_layers_run_their_two_products_unjoined(tiny_explorers):
    work = tiny_explorers["llama"].workspace()
    work.apply(Recipe(rank_ratio=0.5, bits=4, group_size=32))
    got, fast = lean_logits(runtime.build(work, torch.float32).model)
    assert fast.joined == {"q, k, v": 0, "gate, up": 0}
    torch.testing.assert_close(got, _reference(work), rtol=0, atol=1e-5)


@pytest.mark.parametrize("recipe", [Recipe(bits=4, group_size=32), Recipe(bits=8, granularity="channel")],
                         ids=["int4", "int8"])
def test_bf16_activations_on_the_lean_path_stay_as_close_as_transformers_forward(tiny_explorers, recipe):
    """bf16 computed the same way on any processor (emulated where it is not native): the lean path
    is as close to the fp32 workspace as transformers' forward over the same kernels."""
    work = tiny_explorers["llama"].workspace()
    work.apply(recipe)
    rt = runtime.build(work, torch.bfloat16)
    got, _ = lean_logits(rt.model)
    want = _reference(work)
    with torch.inference_mode():
        today = rt.model(IDS).logits.float()
    lean_err = ((got.float() - want).norm() / want.norm()).item()
    today_err = ((today - want).norm() / want.norm()).item()
    assert lean_err < 0.02 and lean_err < 2 * today_err + 1e-3, (lean_err, today_err)


@pytest.mark.parametrize("dtype,bf16_inside", [(torch.float32, False), (torch.bfloat16, False), (torch.float32, True)],
                         ids=["fp32", "bf16", "fp32 model, bf16 activations"])
def test_int4_kernels_join_in_whole_tiles(tmp_path, monkeypatch, dtype, bf16_inside):
    """q, k, v of 128 rows each and gate, up of 256: whole tiles of tinygemm's packing on any processor,
    so they join (smaller parts may not: the probe decides). The third case is what a processor without
    native bf16 runs (engine.speed.tuning's choice there, forced): int4 fed bf16 inside an fp32 model."""
    from engine.speed import tuning

    monkeypatch.setattr(tuning, "call_seconds", lambda fn, label, shape, dtype, device, tokens, cap=None:
                        (0.5 if "bf16" in label else 1.0 if label.startswith("int4") else 2.0) * tokens)
    work = _tiny(LlamaForCausalLM, LlamaConfig, tmp_path, hidden_size=128, intermediate_size=256,
                 num_attention_heads=4, num_key_value_heads=4).workspace()
    work.apply(Recipe(bits=4, group_size=32))
    rt = runtime.build(work, dtype, tuning.Workload.causal(8, 4) if bf16_inside else None)
    assert rt.counts()["int4 (bf16 activations)" if bf16_inside else "int4"] == 14
    got, fast = lean_logits(rt.model)
    assert fast.joined == {"q, k, v": 2, "gate, up": 2}
    assert isinstance(fast.blocks[0].qkv, kernels.InBf16 if bf16_inside else kernels.Int4)
    with torch.inference_mode():
        today = rt.model(IDS).logits
    if dtype == torch.float32:
        torch.testing.assert_close(got, today, rtol=0, atol=1e-5)
    else:
        assert ((got.float() - today.float()).norm() / today.float().norm()).item() < 0.02


def test_a_joined_kernel_computes_its_parts_side_by_side():
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(rows, 64, generator=g) for rows in (32, 16, 16)]
    x = torch.randn(5, 64, generator=g)
    for dtype in (torch.float32, torch.bfloat16):
        q = [kernels.Int8(torch.randint(-127, 128, w.shape, generator=g), w.abs().amax(1) / 127, dtype) for w in parts]
        joined = kernels.join(q)
        assert isinstance(joined, kernels.Int8) and joined.out_features == 64 and joined.in_features == 64
        want = torch.cat([m(x.to(dtype)) for m in q], -1)
        torch.testing.assert_close(joined(x.to(dtype)), want, rtol=0, atol=0)
    dense = [kernels.Dense(w, torch.float32) for w in parts]
    torch.testing.assert_close(kernels.join(dense)(x), torch.cat([m(x) for m in dense], -1), rtol=0, atol=1e-6)
    assert kernels.join([dense[0], q[1]]) is None and kernels.join(dense[:1]) is None  # mixed kinds; one part


def _tiny(cls, config_cls, tmp_path, **extra):
    torch.manual_seed(0)
    shape = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
    model = cls(config_cls(vocab_size=30522, num_hidden_layers=2, max_position_embeddings=64,
                           tie_word_embeddings=False, **{**shape, **extra}))
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(tmp_path)
    return Explorer.open(str(tmp_path), device="cpu")


@pytest.mark.parametrize("name", ["qwen2", "qwen3", "mistral", "llama3-rope"])
def test_the_other_layouts_compute_what_the_workspace_computes(tmp_path, name):
    """Qwen2's biases on q, k, v; Qwen3's per-head norms; Mistral's window (wider than the context);
    Llama 3's rope scaling, from the model's own rotary module."""
    cls, config_cls, extra = {
        "qwen2": (Qwen2ForCausalLM, Qwen2Config, {}),
        "qwen3": (Qwen3ForCausalLM, Qwen3Config, {"head_dim": 8}),
        "mistral": (MistralForCausalLM, MistralConfig, {"sliding_window": 32}),
        "llama3-rope": (LlamaForCausalLM, LlamaConfig, {"rope_scaling": {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16}}),
    }[name]
    work = _tiny(cls, config_cls, tmp_path, **extra).workspace()
    work.apply(Recipe(bits=4, group_size=32))
    got, fast = lean_logits(runtime.build(work, torch.float32).model)
    torch.testing.assert_close(got, _reference(work), rtol=0, atol=1e-5)
    if name == "qwen2":
        assert work.model.model.layers[0].self_attn.q_proj.bias is not None


def test_layouts_without_a_lean_forward_say_why(tiny_explorers, tmp_path):
    gpt2 = tiny_explorers["gpt2"].workspace()
    assert lean.build(runtime.build(gpt2, torch.float32).model, 16) == (
        None, "GPT2LMHeadModel is not a layout the lean path computes (LlamaForCausalLM, MistralForCausalLM, "
              "Qwen2ForCausalLM, Qwen3ForCausalLM)")
    narrow = _tiny(MistralForCausalLM, MistralConfig, tmp_path, sliding_window=8)
    assert lean.build(narrow.loaded.model, 16) == (
        None, "a sliding window of 8 tokens, narrower than the 16 the cache holds")
    fast, _ = lean.build(tiny_explorers["llama"].loaded.model, 4)
    fast(IDS[:, :4])
    with pytest.raises(ValueError, match="the cache holds 4 positions; 5 asked"):
        fast(IDS[:, 4:5])


def test_the_speed_report_names_its_path(tiny_explorers):
    from engine.speed.measure import SpeedSettings, measure

    settings = SpeedSettings(prompt_tokens=8, new_tokens=2, repeats=1, timed_kernels=False, dtype="fp32")
    gpt2 = measure(tiny_explorers["gpt2"], Recipe(bits=8, granularity="channel"), settings)
    assert (gpt2["path"], gpt2["joined"]) == ("transformers", {})
    assert gpt2["path_why"].startswith("GPT2LMHeadModel is not a layout the lean path computes")
    llama = measure(tiny_explorers["llama"], Recipe(bits=8, granularity="channel"), settings)
    assert llama["path"] == "lean" and llama["max_abs_diff"] < 1e-5


def test_the_compiled_step_computes_what_the_workspace_computes(tiny_explorers):
    """torch.compile of the one-token step (inductor's C++ on the CPU): the same logits, step by step."""
    work = tiny_explorers["llama"].workspace()
    work.apply(Recipe(bits=8, granularity="channel"))
    fast, _ = lean.build(runtime.build(work, torch.float32).model, IDS.shape[1])
    assert fast.compile() > 0
    with torch.inference_mode():
        got = torch.cat([fast(IDS[:, :8], all_logits=True)] + [fast(IDS[:, i:i + 1]) for i in range(8, 12)], 1)
    torch.testing.assert_close(got, _reference(work), rtol=0, atol=1e-5)


def test_compile_is_reported_per_model_and_refused_without_a_compiler(tiny_explorers, monkeypatch):
    import shutil

    from engine.errors import UserError
    from engine.speed.measure import SpeedSettings, measure

    monkeypatch.setenv("EXPLORER_BF16", "0")
    compiled = []
    monkeypatch.setattr(lean.Lean, "compile", lambda self: compiled.append(self) or 1.5)
    settings = SpeedSettings(prompt_tokens=8, new_tokens=2, repeats=1, timed_kernels=False, compile=True)
    report = measure(tiny_explorers["llama"], Recipe(bits=8, granularity="channel"), settings)
    assert report["compiled"] and len(compiled) == 2  # the original (fp32) and the compressed model
    assert report["original"]["fp32"]["compile_seconds"] == report["compressed"]["compile_seconds"] == 1.5
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match=r"^--compile: no C\+\+ compiler on this machine \(inductor builds its CPU "
                                        r"code with one: apt-get install g\+\+\)$"):
        measure(tiny_explorers["llama"], Recipe(bits=8, granularity="channel"), settings)


def test_the_speed_page_names_the_lean_path_and_compiles_on_request(tiny_models, monkeypatch):
    """The checkbox asks for the compile of every model timed (the compile itself: the test above), on
    a machine with native bf16 (forced): both originals and the compressed model, in bf16."""
    from app_harness import APP, app_test, ok

    monkeypatch.setenv("EXPLORER_BF16", "1")
    compiled = []
    monkeypatch.setattr(lean.Lean, "compile", lambda self: compiled.append(self) or 1.5)
    at = app_test(APP, default_timeout=300)
    at.query_params["model"] = tiny_models["llama"]
    at.query_params["bits"] = "8"
    at.query_params["granularity"] = "channel"
    at.switch_page("pages/speed.py").run()
    ok(at)
    at.number_input(key="speed_repeats").set_value(1)
    at.number_input(key="speed_prompt").set_value(8)
    at.number_input(key="speed_new").set_value(2)
    at.checkbox(key="speed_compile").check()
    at.button[0].click().run()
    ok(at)
    table = at.dataframe[0].value
    assert list(table["model"]) == ["original fp32", "original bf16", "compressed"]
    assert list(table["compiled in (s)"]) == [1.5, 1.5, 1.5] and len(compiled) == 3 and (table["decode tok/s"] > 0).all()
    assert any("runtime in bf16" in c.value for c in at.caption)
    assert any(c.value.startswith("**Path: lean** (Llama (SmolLM, Llama 2 and 3))") for c in at.caption)
