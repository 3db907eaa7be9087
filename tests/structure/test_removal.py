"""Structured pruning on tiny models built here: the smaller model computes what the original
computes with the same parts zeroed, its counts and bytes by hand, and importance picks the part
made unimportant on purpose."""
import copy

import pytest
import torch
from transformers import (AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

from engine.drivers.explorer import Explorer
from engine.models.loading import minilm_path
from engine.recipe.recipe import Recipe
from engine.structure import blocks, removal

SHAPE = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)


def _zeroed(model, structure):
    """The original with what `structure` removes zeroed: a removed group's output columns (o), a
    removed channel's down column, a removed block's o and down (a pre-norm block is then the identity)."""
    zeroed = copy.deepcopy(model)
    found = blocks.find(zeroed)
    lay = found.layout
    with torch.no_grad():
        for k, block in enumerate(found.blocks):
            o, down = block.get_submodule(lay.o), block.get_submodule(lay.down)
            if k not in structure.kept_blocks:
                o.weight.zero_(), down.weight.zero_()
                continue
            i = structure.kept_blocks.index(k)
            q_heads, kv_heads, d = blocks.heads(block, lay)
            width = q_heads // kv_heads * d
            for g in set(range(kv_heads)) - set(structure.kept_groups[i]):
                o.weight[:, g * width:(g + 1) * width] = 0
            for c in set(range(structure.channels)) - set(structure.kept_channels[i]):
                down.weight[:, c] = 0
    return zeroed


@pytest.mark.parametrize("cls, config", [(LlamaForCausalLM, LlamaConfig), (Qwen2ForCausalLM, Qwen2Config)])
def test_the_smaller_decoder_computes_what_the_original_computes_with_those_parts_zeroed(cls, config):
    """Qwen2 has biases on q, k and v; the removed block's successors are renumbered for the cache."""
    torch.manual_seed(0)
    model = cls(config(**SHAPE)).eval()
    structure = removal.Structure(3, 2, 64, (0, 2), ((1,), (0, 1)), (tuple(range(0, 64, 2)), tuple(range(48))),
                                  "magnitude")
    smaller = removal.remove(model, structure)
    ids = torch.randint(0, 300, (2, 10))
    with torch.no_grad():
        want = _zeroed(model, structure)(ids).logits
        torch.testing.assert_close(smaller(ids).logits, want, rtol=0, atol=1e-5)
        past = smaller(ids[:, :9], use_cache=True).past_key_values  # prefill, then one step from the cache
        torch.testing.assert_close(smaller(ids[:, 9:], past_key_values=past).logits[:, -1], want[:, -1], rtol=0,
                                   atol=1e-5)
    q = smaller.model.layers[0].self_attn
    # one group of two query heads and its key/value head: 16 query rows, 8 key and value rows
    assert (q.q_proj.weight.shape, q.k_proj.weight.shape, q.o_proj.weight.shape) == ((16, 32), (8, 32), (32, 16))
    assert smaller.model.layers[1].mlp.gate_proj.weight.shape == (48, 32)
    assert [m.self_attn.layer_idx for m in smaller.model.layers] == [0, 1]
    assert smaller.config.num_hidden_layers == 2 and model.config.num_hidden_layers == 3  # the original untouched
    assert not structure.uniform and not removal.config_holds(smaller)


def test_a_uniform_structure_sets_the_config_and_transformers_builds_it_back(tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE)).eval()
    structure = removal.Structure(3, 2, 64, (1, 2), ((0,), (1,)), (tuple(range(40)), tuple(range(24, 64))), "magnitude")
    smaller = removal.remove(model, structure)
    c = smaller.config
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size) == (
        2, 2, 1, 8, 40)
    assert removal.config_holds(smaller)
    smaller.save_pretrained(tmp_path)
    back = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 300, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, smaller(ids).logits, rtol=0, atol=0)


def test_bert_heads_and_channels_removed_equal_them_zeroed():
    """A post-norm encoder without grouped-query attention: a group is one head."""
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64)).eval()
    structure = removal.Structure(2, 4, 64, (0, 1), ((0, 3), (1, 2, 3)), (tuple(range(32)), tuple(range(1, 64))),
                                  "magnitude")
    smaller = removal.remove(model, structure)
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(smaller(ids).last_hidden_state, _zeroed(model, structure)(ids).last_hidden_state,
                                   rtol=0, atol=1e-5)
    assert smaller.encoder.layer[0].attention.self.query.weight.shape == (16, 32)


def test_counts_by_hand_with_per_layer_rules():
    r = Recipe(prune_heads=0.5, prune_channels=0.25, prune_blocks=1,
               per_layer=[{"match": r"layers\.0\.", "prune_heads": 0.0}, {"match": r"layers\.2\.mlp", "prune_channels": 0.9}])
    plan = removal.plan_for(r, 3, 3, 64, lambda k: f"model.layers.{k}.self_attn.o_proj",
                            lambda k: f"model.layers.{k}.mlp.down_proj")
    # heads: floor(0.5 * 3 + 1/2) = 2 of 3 groups, none in block 0; channels floor(0.25 * 64 + 1/2) = 16, block 2's
    # floor(0.9 * 64 + 1/2) = 58
    assert (plan.remove_groups, plan.remove_channels, plan.remove_blocks) == ((0, 2, 2), (16, 16, 58), 1)
    assert removal.plan_for(Recipe(prune_heads=0.9), 1, 2, 8, str, str).remove_groups == (1,)  # one group is kept
    with pytest.raises(Exception, match="prune_blocks: the model has 3 blocks"):
        removal.plan_for(Recipe(prune_blocks=3), 3, 2, 8, str, str)
    with pytest.raises(Exception, match="remove_blocks: the model has blocks 0..2"):
        removal.plan_for(Recipe(remove_blocks="1,3"), 3, 2, 8, str, str)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama whose block 1 adds nothing (o and down zero), and whose block 0's group 1 and
    MLP channels 0..15 write nothing (their o columns, their down columns zero)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("structured")
    model = LlamaForCausalLM(LlamaConfig(**{**SHAPE, "vocab_size": 30522}))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[:, 16:] = 0
            layer.mlp.down_proj.weight[:, :16] = 0
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    return Explorer.open(str(folder), device="cpu")


@pytest.mark.parametrize("importance", ["calibration", "magnitude"])
def test_importance_removes_the_parts_that_add_nothing(tiny, importance):
    r = Recipe(prune_heads=0.5, prune_channels=0.25, prune_blocks=1, structure_importance=importance)
    structure = tiny.structured(r).structure
    assert structure.kept_blocks == (0, 2)
    assert structure.kept_groups == ((0,), (0,))
    assert all(c == tuple(range(16, 64)) for c in structure.kept_channels)


def test_bytes_of_the_smaller_model_by_hand(tiny):
    """Per block: a group is 16 query rows, 8 key and 8 value rows, 16 output columns of width 32
    (1,536 parameters); 16 channels are 16 rows of gate and up and 16 columns of down (1,536)."""
    work = tiny.workspace()
    mem = work.apply(Recipe(prune_heads=0.5, prune_channels=0.25)).memory
    removed = 3 * (1536 + 1536)
    assert mem.removed_params == removed and mem.total_params == tiny.total_params - removed
    assert mem.original_bytes == 2 * tiny.total_params and mem.compressed_bytes == 2 * (tiny.total_params - removed)
    report = work.report()
    assert report["structure"]["groups_kept"] == [1, 1, 1] and report["structure"]["channels_kept"] == [48] * 3
    shapes = {layer["name"]: tuple(layer["shape"]) for layer in report["layers"]}
    assert shapes["model.layers.2.self_attn.q_proj"] == (16, 32) and shapes["model.layers.2.mlp.down_proj"] == (32, 48)
    # with 4-bit groups of 16 on what remains: q (16, 32) holds 512 codes (256 bytes) and 32 fp16 scales (64)
    mem4 = work.apply(Recipe(prune_heads=0.5, prune_channels=0.25, bits=4, group_size=16)).memory
    q = next(r for r in mem4.layers if r.info.name == "model.layers.0.self_attn.q_proj")
    assert q.bytes.compressed_bytes == 256 + 64
    # the quality is judged against the original (its reference outputs), not the smaller model
    assert work.explorer.evaluator() is tiny.evaluator()


@pytest.mark.parametrize("recipe", [
    Recipe(prune_heads=0.5, prune_channels=0.25, bits=4, group_size=16),
    Recipe(prune_blocks=1, prune_channels=0.5, sparsity=0.5),
    Recipe(prune_channels=0.25, per_layer=[{"match": r"layers\.2\.", "prune_heads": 0.5}])], ids=["heads", "blocks",
                                                                                                "per block"])
def test_fit_counts_the_smaller_model_from_its_config_as_the_weights_do(tiny, recipe):
    """Which parts go needs the weights; their shapes and bytes do not: the plan from a config
    gives the bytes of the model made from the weights, and the key/value cache of its blocks."""
    from engine.drivers.footprint import footprint, open_skeleton

    fp = footprint(open_skeleton(tiny.loaded.ref), recipe, batch=1, tokens=10)
    mem = tiny.workspace().apply(recipe).memory
    assert (fp["weights"]["compressed_bytes"], fp["weights"]["removed_params"]) == (mem.compressed_bytes,
                                                                                    mem.removed_params)
    smaller = tiny.structured(recipe).loaded.model
    kv_heads = sum(layer.self_attn.k_proj.weight.shape[0] // 8 for layer in smaller.model.layers)
    assert fp["kv_cache"]["bytes"] == 2 * kv_heads * 8 * 2 * 10  # keys and values, head width 8, fp16, 10 tokens


def test_the_lean_decode_path_runs_blocks_of_their_own_head_counts(tiny):
    """A smaller model whose blocks keep different numbers of key/value groups, on the runtime's
    kernels: prefill, then one token a step from each block's own cache, as the workspace computes."""
    from engine.speed import lean, runtime

    work = tiny.workspace()
    work.apply(Recipe(bits=4, group_size=16, prune_channels=0.25, prune_blocks=1,
                      per_layer=[{"match": r"layers\.0\.", "prune_heads": 0.5}]))
    ids = torch.randint(0, 30522, (1, 12))
    fast, why = lean.build(runtime.build(work, torch.float32).model, ids.shape[1])
    assert fast is not None, why
    assert [(b.heads, b.kv_heads) for b in fast.blocks] == [(2, 1), (4, 2)]
    got = torch.cat([fast(ids[:, :8], all_logits=True), *[fast(ids[:, i:i + 1]) for i in range(8, 12)]], 1)
    with torch.inference_mode():
        torch.testing.assert_close(got, work.model(ids).logits, rtol=0, atol=1e-5)


def test_recovery_distils_the_smaller_model_from_the_original(tiny):
    """The teacher is the original (its logits), the student the smaller model; the bytes do not change."""
    work = tiny.workspace()
    # half the channels: 16 of those the fixture zeroed and 16 that write something, so the smaller model differs
    before = work.apply(Recipe(prune_channels=0.5, prune_blocks=1, bits=8)).memory.compressed_bytes
    applied = work.distill(3, 1e-3)
    assert applied.memory.compressed_bytes == before and len(applied.distillation.loss) == 3
    assert applied.recipe.distill_steps == 3 and work.explorer.structure.kept_blocks == (0, 2)
    # the first step's loss is the smaller model's KL to the original's next-token distributions
    assert applied.distillation.loss[0] > 1e-6  # the teacher is not the student
