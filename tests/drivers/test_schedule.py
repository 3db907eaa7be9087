"""The gradual schedule: each step's share and recipe by hand, and end to end on a tiny Llama: the
last step is the recipe itself (its bytes and shapes those of the one-shot recipe), reached in steps."""
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from cli_harness import main
from engine.drivers import schedule
from engine.drivers.explorer import Explorer
from engine.models.loading import minilm_path
from engine.recipe.recipe import Recipe, RecipeError


def test_each_step_prunes_to_its_share_of_the_target():
    targets = schedule.Targets(groups=2, channels=64, heads=1, mlp=16, blocks=2)
    r = Recipe(sparsity=0.5, prune_heads=0.5, prune_channels=0.25, prune_blocks=2, bits=4, schedule_steps=4)
    shares = schedule.shares(4)  # 0.578125, 0.875, 0.984375, 1
    steps = [schedule.step_recipe(r, targets, s, b, k == 3) for k, (s, b) in enumerate(zip(shares, [0, *shares]))]
    # sparsity 0.5 x share; heads: floor(1 x 0.578 + 1/2) = 1 group at once, of the 2 there are; channels
    # floor(16 x share + 1/2) = 9, 14, 16, 16 in all: 9 of 64, then 5 of the 55 left, 2 of 50; blocks 1, 2, 2, 2
    assert [s.sparsity for s in steps] == [0.2891, 0.4375, 0.4922, 0.5]
    assert [s.prune_heads for s in steps] == [0.5, 0, 0, 0]
    assert [s.prune_channels for s in steps] == [9 / 64, 5 / 55, 2 / 50, 0]
    assert [s.prune_blocks for s in steps] == [1, 1, 0, 0]
    assert [s.bits for s in steps] == [16, 16, 16, 4]  # the rest of the recipe at the last step only
    nm = [schedule.step_recipe(Recipe(pattern="2:4", schedule_steps=2), schedule.Targets(), s, b, k == 1)
          for k, (s, b) in enumerate(zip(schedule.shares(2), [0, 0.875]))]
    assert [(s.pattern, s.sparsity) for s in nm] == [("unstructured", 0.4375), ("2:4", 0.5)]


@pytest.mark.parametrize("fields, message", [({"schedule_steps": 1, "sparsity": 0.5}, "at least 2"),
                                             ({"schedule_steps": 3, "bits": 4}, "prunes nothing"),
                                             ({"schedule_steps": 3, "sparsity": 0.5,
                                               "per_layer": [{"match": "q", "bits": 4}]}, "per-layer rules")])
def test_a_schedule_it_cannot_run_is_refused_by_name(fields, message):
    with pytest.raises(RecipeError, match=f"schedule_steps: .*{message}"):
        Recipe(**fields)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("schedule")
    LlamaForCausalLM(LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                 tie_word_embeddings=False)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    return str(folder)


def test_the_last_step_is_the_recipe_reached_in_steps(tiny):
    ex = Explorer.open(tiny, device="cpu")
    recipe = Recipe(sparsity=0.5, prune_channels=0.25, prune_blocks=1, bits=8, schedule_steps=3, distill_steps=2)
    done = schedule.run(ex, recipe)
    one_shot = ex.workspace().apply(Recipe(sparsity=0.5, prune_channels=0.25, prune_blocks=1, bits=8)).memory
    mem = done.workspace.applied.memory
    assert done.workspace.applied.recipe == recipe
    assert mem.compressed_bytes == one_shot.compressed_bytes and mem.removed_params == one_shot.removed_params
    assert all(r.sparsity == 0.5 for r in mem.layers if r.compressed)  # exactly round(S n) per matrix at the end
    steps = done.steps
    assert [s["step"] for s in steps] == [1, 2, 3] and [round(s["share"], 4) for s in steps] == [0.7037, 0.963, 1.0]
    assert steps[0]["params"] >= steps[1]["params"] >= steps[2]["params"] == ex.total_params - mem.removed_params
    assert all(s["distill_loss"] is not None and s["metrics"]["top1_agreement"] <= 1 for s in steps)
    report = done.workspace.report()["structure"]
    assert report["blocks"] == "2 of 3" and report["channels_kept"] == [48, 48]


def test_run_reports_each_step(tiny, capsys):
    import json

    from engine.cli.run import print_run

    code, out, err = main("run", tiny, "--sparsity", "0.5", "--schedule-steps", "2", "--distill-steps", "1",
                          "--quick", "--json")
    assert code == 0, err
    out = json.loads(out)
    assert [s["step"] for s in out["schedule"]] == [1, 2] and out["recipe"]["schedule_steps"] == 2
    print_run(out)  # the text the command prints without --json
    assert "step 1: 87.5% of the target: 44% sparse" in capsys.readouterr().out


def test_a_schedule_keeps_a_tied_head_tied(tiny_llama_with_smollm2s_tokenizer):
    """Each step starts from the values the step before left: the head stays the embedding's."""
    ex = Explorer.open(str(tiny_llama_with_smollm2s_tokenizer), device="cpu")
    recipe = Recipe(sparsity=0.5, include_embeddings=True)
    done = schedule.run(ex, recipe.updated(schedule_steps=2), evaluate=False)
    model = done.workspace.explorer.loaded.model
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert done.workspace.applied.memory.compressed_bytes == ex.workspace().apply(recipe).memory.compressed_bytes
