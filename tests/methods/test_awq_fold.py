"""AWQ at equal bytes: the scales folded into the norm or the linear before, on tiny Llamas built
here. The folded model computes what AWQ with those scales stored computes, in round to nearest's
bytes; where nothing can absorb them (the attention output under grouped-query attention) the
layer keeps its stored scales, and says so."""
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from engine.drivers.explorer import Explorer
from engine.models.loading import minilm_path
from engine.recipe.recipe import Recipe

AWQ = Recipe(bits=4, group_size=16, quant_method="awq")


def _tiny(folder, kv_heads):
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64,
                                 tie_word_embeddings=False)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    return Explorer.open(str(folder), device="cpu")


@pytest.fixture(scope="module")
def mha(tmp_path_factory):
    return _tiny(tmp_path_factory.mktemp("mha"), 4)


@pytest.fixture(scope="module")
def gqa(tmp_path_factory):
    return _tiny(tmp_path_factory.mktemp("gqa"), 2)


@pytest.mark.parametrize("recipe, kept", [
    (AWQ, ()),
    # v at 16 bits: q and k keep their scales (their group mixes recipes); o still folds into v's rows
    (AWQ.updated(per_layer=[{"match": "v_proj", "bits": 16}]),
     tuple(f"model.layers.{b}.self_attn.{p}_proj" for b in (0, 1) for p in "kq")),
], ids=["all", "v at 16 bits"])
def test_folded_scales_compute_what_stored_scales_compute(mha, recipe, kept):
    """Every layer holds its matrix in the folded basis and the norms their weights over s; put back
    in the original basis (diag(rows) M diag(1/cols)) beside the original norms, the same model."""
    work = mha.workspace()
    work.apply(recipe)
    folds = mha.awq_folds(recipe)
    assert folds.kept_scales == tuple(sorted(kept)) and len(folds.norms) == (4 if not kept else 2)
    reference = mha.workspace()
    reference.apply(Recipe())  # the original at fp16, norms included
    with torch.no_grad():
        for name, stored in work.stored.items():
            held = work.holders[name].matrix()
            reference.holders[name].set(w=held if stored.fold is None else stored.fold.original(held))
    ids = torch.randint(0, 30522, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(work.model(ids).logits, reference.model(ids).logits, rtol=0, atol=2e-3)
    if kept:  # v at 16 bits holds its rows over o's scales: in the original basis, v itself, to fp16's rounding
        assert {e["name"]: e["relative_error"] for e in work.layer_errors()}["model.layers.0.self_attn.v_proj"] < 1e-3
    norm, name = work.model.model.layers[0].post_attention_layernorm.weight, "model.layers.0.post_attention_layernorm"
    assert torch.equal(norm, (torch.ones(32) / folds.norms[name]).half().float())


def test_awq_folded_stores_the_bytes_of_round_to_nearest(mha, gqa):
    rtn = Recipe(bits=4, group_size=16)
    assert mha.workspace().apply(AWQ).memory.compressed_bytes == mha.workspace().apply(rtn).memory.compressed_bytes
    # grouped-query attention: o's inputs are not one per value row; o keeps its fp16 scale per input column
    folds = gqa.awq_folds(AWQ)
    assert folds.kept_scales == ("model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj")
    extra = gqa.workspace().apply(AWQ).memory.compressed_bytes - gqa.workspace().apply(rtn).memory.compressed_bytes
    assert extra == 2 * 2 * 32  # 2 bytes x 32 input columns x 2 blocks
    from engine.drivers.footprint import open_skeleton, predict

    assert predict(open_skeleton(gqa.loaded.ref), AWQ).compressed_bytes == gqa.workspace().apply(AWQ).memory.compressed_bytes


def test_a_folded_group_errs_no_more_than_round_to_nearest(mha):
    """alpha = 0 is round to nearest, so the group's summed output error tr(D H D^T) is never above it."""
    from engine.methods.awq import output_error

    folded, plain = mha.workspace(), mha.workspace()
    folded.apply(AWQ)
    plain.apply(Recipe(bits=4, group_size=16))
    group = [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]
    h = mha.hessian(group[0])

    def err(work, n):
        held = work.holders[n].matrix()
        fold = work.stored[n].fold
        return output_error(mha.weight(n) - (held if fold is None else fold.original(held)), h)

    assert sum(err(folded, n) for n in group) <= sum(err(plain, n) for n in group) * (1 + 1e-6)


def test_folded_awq_goes_into_gguf_as_round_to_nearest_does(tiny_llama_with_smollm2s_tokenizer, tmp_path):
    """Folded, an AWQ layer is a plain grid (here q4_0's), and the norms carry the scales:
    transformers loads the file and computes what the workspace computes."""
    from transformers import AutoModelForCausalLM

    from engine.storage import gguf_file

    ex = Explorer.open(str(tiny_llama_with_smollm2s_tokenizer), device="cpu")
    work = ex.workspace()
    work.apply(Recipe(bits=4, group_size=32, quant_method="awq", layers="(q|k|v|gate|up|down)_proj$"))
    assert work.report()["awq"]["scales_kept"] == []
    report = gguf_file.write(work, tmp_path)
    assert {t["type"] for t in report["tensors"] if t["name"].endswith(("attn_q", "ffn_down"))} == {"q4_0"}
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=report["file"].split("/")[-1],
                                              dtype=torch.float32)
    ids = ex.loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        torch.testing.assert_close(hf(ids).logits, work.model(ids).logits, rtol=0, atol=1e-5)
