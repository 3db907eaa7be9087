"""Encoder-decoder models (T5, BART): both stacks found and compressed, the decoder's
teacher-forced quality, calibration on both stacks, the command line, export and offload.
Tiny random models built here, with minilm's real WordPiece tokenizer ([PAD] 0, [CLS] 101,
[SEP] 102); evaluated on a short held-out text (three windows) to stay fast."""
import copy
import functools
import json

import pytest
import torch
from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

from cli_harness import main
from engine.drivers import footprint, offload
from engine.drivers.explorer import Explorer
from engine.models import calibrate, data
from engine.models.loading import kind_of, minilm_path
from engine.quality import make_evaluator
from engine.recipe.recipe import Recipe

IDS = dict(pad_token_id=0, eos_token_id=102, decoder_start_token_id=101)
TEXT = "\n\n".join(data.lee_background()[:4])  # the evaluator's text, its first 4 articles: 3 windows
NAME = "lee_background.cor, first 4 articles"


def _save(model, folder):
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread. A second costs more than it saves on matrices of 32 x 32, and far
    more on a busy machine (a 64 x 32 product: 5 us on one thread, tens of ms on two contended)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def s2s_models(tmp_path_factory):
    """T5 (tied head, ReLU feed-forward), T5 v1.1-style (gated feed-forward, its own head) and
    BART (scaled embeddings, learned positions; init_std 0.2 so that its outputs are not flat)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("s2s")
    t5 = dict(vocab_size=30522, d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16, **IDS)
    tied = T5ForConditionalGeneration(T5Config(**t5))
    untied = T5ForConditionalGeneration(T5Config(**t5, feed_forward_proj="gated-gelu", tie_word_embeddings=False))
    untied.lm_head.weight = torch.nn.Parameter(torch.randn(30522, 32))  # saved apart, loaded apart
    bart = BartForConditionalGeneration(BartConfig(
        vocab_size=30522, d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, max_position_embeddings=512, init_std=0.2,
        scale_embedding=True, bos_token_id=101, forced_eos_token_id=102, **IDS))
    return {name: _save(m, root / name) for name, m in [("t5", tied), ("t5-untied", untied), ("bart", bart)]}


@pytest.fixture(scope="session")
def s2s(s2s_models):
    return {name: Explorer.open(path, device="cpu") for name, path in s2s_models.items()}


def metrics(work):
    return work.evaluate(eval_text=TEXT, eval_name=NAME)


# name -> (linear layers, head tied to, an attention layer, a cross-attention layer, an MLP layer)
LAYOUT = {
    "t5": (32, "shared", "encoder.block.1.layer.0.SelfAttention.o", "decoder.block.0.layer.1.EncDecAttention.k",
           "decoder.block.1.layer.2.DenseReluDense.wo"),
    "t5-untied": (36, None, "encoder.block.0.layer.0.SelfAttention.q", "decoder.block.1.layer.1.EncDecAttention.v",
                  "encoder.block.0.layer.1.DenseReluDense.wi_1"),
    "bart": (32, "model.shared", "model.encoder.layers.0.self_attn.k_proj",
             "model.decoder.layers.1.encoder_attn.out_proj", "model.decoder.layers.0.fc2"),
}


@pytest.mark.parametrize("name", list(LAYOUT))
def test_kind_layers_ties_and_config_only_count(s2s, s2s_models, name):
    ex = s2s[name]
    n_linear, head_tie, attn, cross, mlp = LAYOUT[name]
    assert ex.kind == "seq2seq" == kind_of(ex.loaded.model.config)
    layers = {i.name: i for i in ex.layers}
    linear = [i for i in ex.layers if i.role == "linear"]
    assert len(linear) == n_linear  # both stacks: self-attention, cross-attention, feed-forward
    # the decoder has the encoder's layers and 4 cross-attention matrices per block more
    assert sum(".encoder." in f".{i.name}" for i in linear) == sum(".decoder." in f".{i.name}" for i in linear) - 8
    assert (layers[attn].group, layers[cross].group, layers[mlp].group) == ("attention", "attention", "mlp")
    emb = "model.shared" if name == "bart" else "shared"
    assert layers[emb].role == "embedding" and layers[emb].tied_to is None
    prefix = "model." if name == "bart" else ""
    for stack in ("encoder", "decoder"):  # the stacks' embed_tokens share the embedding's weight
        assert layers[f"{prefix}{stack}.embed_tokens"].tied_to == emb
    assert layers["lm_head"].role == "head" and layers["lm_head"].tied_to == head_tie
    # relative attention bias and learned positions are embeddings of another kind: left alone, counted
    assert not any("relative_attention_bias" in n or "embed_positions" in n for n in layers)
    model = ex.loaded.model
    assert ex.total_params == sum(p.numel() for p in model.parameters())
    assert ex.workspace().apply(Recipe()).memory.original_bytes == 2 * ex.total_params
    sk = footprint.open_skeleton(s2s_models[name])  # `fit`: the model built from its config alone
    assert (sk.kind, sk.total_params, sk.layers) == (ex.kind, ex.total_params, ex.layers)


def as_stored(ex):
    """The original model with every parameter rounded to fp16 (its uncompressed storage)."""
    model = copy.deepcopy(ex.loaded.model)
    for p in model.parameters():
        p.data = p.data.half().float()
    return ex.evaluator(TEXT, NAME)(model)


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_identity_is_the_fp16_original_and_error_grows_as_bits_fall(s2s, name):
    ex = s2s[name]
    work = ex.workspace()
    assert work.apply(Recipe()).memory.ratio == 1.0
    got = metrics(work)
    for k, v in as_stored(ex).items():  # BART's scaled embedding scaled as the original scales it
        assert got[k] == pytest.approx(v, abs=1e-6), k
    base = ex.evaluator(TEXT, NAME).baseline()
    at = {}
    for bits in (8, 3):
        work.apply(Recipe(bits=bits, group_size=16))
        at[bits] = metrics(work)
    gap = {b: abs(m["perplexity"] - base["perplexity"]) for b, m in at.items()}
    assert 0 < at[8]["kl_to_original"] < at[3]["kl_to_original"] and gap[8] < gap[3]
    assert at[3]["top1_agreement"] < at[8]["top1_agreement"] <= 1
    proto = ex.evaluator(TEXT, NAME).protocol
    assert (proto["window"], proto["source_tokens"], proto["target_tokens"], proto["windows"]) == (256, 128, 128, 3)
    assert proto["tokens_scored"] == 3 * 128 and "[CLS] + 128 tokens + [SEP]" in proto["encoder_input"]
    assert "[CLS] (id 101" in proto["decoder_input"]


def test_int4_bytes_by_hand_on_both_stacks(s2s):
    ex = s2s["t5"]
    work = ex.workspace()
    applied = work.apply(Recipe(bits=4, group_size=16))
    assert len(work.stored) == 32 and {n.split(".")[0] for n in work.stored} == {"encoder", "decoder"}
    layers = {r.info.name: r for r in applied.memory.layers}
    # (32, 32): 1024 values x 4 bits = 512 bytes; 32 rows x 2 groups of 16 x 2-byte scales = 128
    assert layers["decoder.block.0.layer.1.EncDecAttention.k"].bytes.compressed_bytes == 512 + 128
    # (32, 64): 2048 x 4 bits = 1024 bytes; 32 rows x 4 groups x 2 bytes = 256
    assert layers["encoder.block.1.layer.1.DenseReluDense.wo"].bytes.compressed_bytes == 1024 + 256
    # (64, 32): 1024 + 64 rows x 2 groups x 2 bytes
    assert layers["decoder.block.1.layer.2.DenseReluDense.wi"].bytes.compressed_bytes == 1024 + 256
    # left at fp16: all but the 24 attention (32, 32) and 8 feed-forward matrices: the shared embedding,
    # 12 layer norms and the two relative attention bias tables (32 buckets x 2 heads)
    untouched = ex.total_params - 24 * 32 * 32 - 8 * 32 * 64
    assert applied.memory.untouched_params == untouched == 30522 * 32 + 12 * 32 + 2 * 32 * 2
    out = work.compare("The house is wonderful.", max_new_tokens=4)  # greedy from the source, both models
    assert set(out) == {"original", "compressed", "top", "kl"} and out["original"] and out["kl"] >= 0


def test_calibration_runs_both_stacks_and_gptq_and_wanda_use_it(s2s_models, monkeypatch):
    monkeypatch.setattr(calibrate, "collect", functools.partial(calibrate.collect, samples=8))
    ex = Explorer.open(s2s_models["t5"], device="cpu")  # its own: the calibration is cached per explorer
    cal = ex.calibration()
    assert cal.samples == 8 and len(cal.hessians) == 32  # every linear layer, encoder and decoder
    cross_k, cross_q = (cal.hessians[f"decoder.block.1.layer.1.EncDecAttention.{x}"] for x in "kq")
    assert cross_k.shape == (32, 32) and not torch.allclose(cross_k, cross_q)  # encoder output vs decoder state
    work = ex.workspace()
    kl = {}
    for method in ("rtn", "gptq"):
        work.apply(Recipe(bits=3, group_size=16, quant_method=method))
        kl[method] = metrics(work)["kl_to_original"]
    assert 0 < kl["gptq"] < kl["rtn"]
    work.apply(Recipe(sparsity=0.5, prune_method="wanda"))
    wanda = {n: s.matrices[0].keep for n, s in work.stored.items()}
    work.apply(Recipe(sparsity=0.5))
    assert any(not torch.equal(wanda[n], s.matrices[0].keep) for n, s in work.stored.items())
    d = work.apply(Recipe(bits=3, distill_steps=2, distill_lr=1e-3)).distillation  # teacher-forced KL
    assert d.objective.startswith("KL") and d.loss[-1] < d.loss[0]


def test_cli_run_export_and_reload(s2s, s2s_models, tmp_path):
    text = tmp_path / "held-out.txt"
    text.write_text(TEXT)
    args = ["--bits", "4", "--include-embeddings", "--device", "cpu", "--eval-text", str(text)]
    code, out, err = main("run", s2s_models["t5"], *args)
    assert code == 0, err
    assert "(seq2seq, cpu): int4 g128 · with embeddings" in out and "perplexity" in out
    assert "decoder.block.1.layer.1.EncDecAttention.k" in out and "encoder.embed_tokens" in out
    code, _, err = main("export", s2s_models["t5"], *args[:5], "--out", str(tmp_path / "int4"))
    assert code == 0, err
    code, out, err = main("run", str(tmp_path / "int4"), *args[3:], "--json")
    assert code == 0, err
    back = json.loads(out)
    work = s2s["t5"].workspace()
    applied = work.apply(Recipe(bits=4, include_embeddings=True))
    assert back["memory"]["compressed_bytes"] == applied.memory.compressed_bytes == back["export_stored"]["tensor_bytes"]
    expected = metrics(work)
    assert {k: back["metrics"][k] for k in expected} == pytest.approx(expected, rel=1e-6)


def test_offload_of_an_untied_t5_compresses_like_the_workspace(s2s, s2s_models, tmp_path):
    recipe = Recipe(bits=4, group_size=16, include_embeddings=True)
    off = offload.load(s2s_models["t5-untied"], {"cpu": "1MB"}, str(tmp_path))
    assert off.layers == s2s["t5-untied"].layers  # the head stays its own, as loaded
    out = offload.run(off, recipe, make_evaluator(off.loaded, TEXT, NAME))
    work = s2s["t5-untied"].workspace()
    assert out["memory"]["compressed_bytes"] == work.apply(recipe).memory.compressed_bytes
    assert out["metrics"] == pytest.approx(metrics(work), rel=1e-4)
