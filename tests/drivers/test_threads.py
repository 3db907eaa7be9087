"""Several people on one process: loading from several threads at once, the causal-LM
evaluation in pieces (same values, bounded memory), and workspaces that hold only what differs
from the shared model."""
import logging
import math
import sys
import threading

import pytest
import torch

from engine.models import data
from engine.models import loading as models
from engine.pipeline import compress as pipeline
from engine.quality import causal, stats
from engine.recipe.recipe import Recipe
from engine.storage import explorer_format as export_format


def test_loading_in_several_threads_at_once_leaves_the_process_alone(tiny_models, capfd):
    stderr, failures = sys.stderr, []
    start = threading.Barrier(6)

    def load(ref):
        try:
            start.wait()
            models.load(ref, "cpu") if ref in tiny_models.values() else models.open_config(ref)
        except BaseException as e:  # noqa: BLE001 -- reported below
            failures.append(e)

    refs = [tiny_models["gpt2"], tiny_models["llama"], tiny_models["bert"], "minilm", "minilm", tiny_models["gpt2"]]
    threads = [threading.Thread(target=load, args=(r,)) for r in refs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert sys.stderr is stderr
    assert "Loading weights" not in capfd.readouterr().err  # the progress bars of the loading threads stay quiet
    # and only theirs: this thread's transformers warnings still reach transformers' handler
    seen = []
    handler = logging.getLogger("transformers").handlers[0]
    emit, handler.emit = handler.emit, seen.append
    try:
        logging.getLogger("transformers.modeling_utils").warning("a warning outside any load")
    finally:
        handler.emit = emit
    assert [r.getMessage() for r in seen] == ["a warning outside any load"]


# ---------------------------------------------------------------------------------------
# The causal-LM evaluation in pieces
# ---------------------------------------------------------------------------------------


def all_at_once(ev, original, model) -> dict:
    """The evaluation as it was before it worked in pieces, full and quick: every scored token's
    log-probabilities over the vocabulary at once (the reference computed the same way)."""
    def logprobs(net, windows):
        return torch.cat([net(input_ids=windows[i:i + stats.BATCH]).logits[:, :-1].float().log_softmax(-1)
                          for i in range(0, windows.shape[0], stats.BATCH)])

    def nll(logp, windows):
        return -logp.gather(-1, windows[:, 1:, None]).squeeze(-1).mean(-1)

    with torch.inference_mode():
        ref_full, logp_full = logprobs(original, ev.windows), logprobs(model, ev.windows)
        base = nll(ref_full, ev.windows)
        out = {}
        for quick in (False, True):
            idx = ev.quick_idx if quick else list(range(ev.windows.shape[0]))
            windows, logp = ev.windows[idx], logp_full[idx]
            ref = ref_full.half()[idx].float()
            kl = (ref.exp() * (ref - logp)).sum(-1).mean().item()
            top1 = (logp.argmax(-1) == ref_full.argmax(-1)[idx]).float().mean().item()
            ppl = math.exp(nll(logp, windows).mean().item())
            if quick:
                ppl = math.exp(base.mean().item()) * ppl / math.exp(base[idx].mean().item())
            out[quick] = {"perplexity": ppl, "kl_to_original": max(kl, 0.0), "top1_agreement": top1}
        return out


def test_the_evaluation_in_pieces_gives_the_values_of_all_at_once(tiny_explorers):
    ex = tiny_explorers["llama"]
    work = ex.workspace()
    work.apply(Recipe(bits=4, sparsity=0.3))
    # the first 8 articles of the evaluation text: 7 windows, of which the first estimate takes 4
    text, name = "\n\n".join(data.lee_background()[:8]), "the first 8 articles of lee_background.cor"
    whole = ex.evaluator(text, name)
    assert whole.windows.shape[0] == 7 and len(whole.quick_idx) == stats.QUICK_WINDOWS < 7
    before = all_at_once(whole, ex.loaded.model, work.model)
    # each window whole (the default, TOKEN_CHUNK >= 255 scored tokens), and in pieces of 100, 100 and 55
    for ev in (whole, causal.CausalLMEval(ex.loaded, text, name, chunk=100)):
        assert ev.base_full_ppl == pytest.approx(whole.base_full_ppl, rel=1e-6)
        for quick in (False, True):
            got = ev(work.model, quick=quick)  # the first estimate's interval: test_estimate.py
            assert {k: got[k] for k in before[quick]} == pytest.approx(before[quick], rel=1e-6, abs=1e-9), (ev.chunk, quick)


# ---------------------------------------------------------------------------------------
# Workspaces hold only what differs from the shared model
# ---------------------------------------------------------------------------------------


def own_bytes(work) -> int:
    """Bytes of the tensors a workspace's model computes with that the explorer does not share."""
    ex = work.explorer
    shared = {t.data_ptr() for t in [*ex.loaded.model.parameters(), *ex._fp16.values()]}
    tensors = {id(t): t for t in work.model.parameters()}
    tensors.update({id(t): t for h in work.holders.values() for t in h.tensors()})
    return sum(t.numel() * t.element_size() for t in tensors.values() if t.data_ptr() not in shared)


def test_workspaces_share_what_a_recipe_leaves_at_16_bits(minilm_explorer):
    ex = minilm_explorer
    a, b = ex.workspace(), ex.workspace()
    a.apply(Recipe())  # every layer at 16 bits, dense: all of it the explorer's rounded copies
    b.apply(Recipe(bits=4))
    assert own_bytes(a) == 0
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert p is q, name  # norms, biases, position embeddings: rounded once, shared
        assert torch.equal(p, ex.loaded.model.get_parameter(name).half().float())
    emb = "embeddings.word_embeddings"  # left alone by both recipes
    assert a.holders[emb].w is b.holders[emb].w
    # what b holds of its own: the 4-bit values of the compressed layers, nothing else
    compressed = sum(4 * i.params for i in ex.selected(Recipe(bits=4)))
    assert own_bytes(b) == compressed
    # the shared values are those the pipeline computes, so results do not change
    name = ex.selected(Recipe())[0].name
    computed = pipeline.compress(name, ex.weight(name), Recipe(), lambda: None)
    assert torch.equal(a.holders[name].w, computed.tensors()[0]) and a.holders[name].w is ex.fp16_weight(name)


def test_an_export_read_back_gets_parameters_of_its_own(tiny_explorers, tmp_path):
    ex = tiny_explorers["bert"]
    source, reader, other = ex.workspace(), ex.workspace(), ex.workspace()
    source.apply(Recipe(bits=3, sparsity=0.5))
    export_format.write(source, tmp_path / "export")
    export_format.load_into(reader, tmp_path / "export")
    shared = dict(other.model.named_parameters())
    for name, p in reader.model.named_parameters():  # the file's values, in tensors nobody else holds
        assert p is not shared[name] and torch.equal(p, shared[name]), name
    reader.apply(Recipe(bits=4))  # a recipe applied again: back to the shared parameters
    assert all(p is shared[n] for n, p in reader.model.named_parameters())
