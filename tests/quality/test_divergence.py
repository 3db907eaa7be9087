"""llama.cpp's KL statistics (engine.quality.divergence) worked out by hand, the streamed computation
(engine.quality.causal_reference) against the direct one, its memory on a 256k vocabulary, and the
order of two quantized copies of a tiny Llama."""
import copy
import math
from types import SimpleNamespace

import pytest
import torch

from engine.quality import divergence
from engine.quality.causal_reference import CausalReference, model_difference
from engine.quality.divergence import TokenStats, percentile, summarize, token_stats

LN2, LN7 = math.log(2), math.log(7)


def test_token_stats_of_two_categorical_pairs_by_hand():
    # token 0: p = (1/2, 1/4, 1/8, 1/8), q = (1/2, 1/8, 1/4, 1/8), target 2
    #   KL = 1/2 ln 1 + 1/4 ln 2 + 1/8 ln(1/2) + 1/8 ln 1 = ln 2 / 8; both tops token 0; dp = 1/4 - 1/8
    # token 1: p = (.7, .1, .1, .1), q = (.1, .7, .1, .1), target 1
    #   KL = .7 ln 7 + .1 ln(1/7) = .6 ln 7; tops 0 and 1; dp = .7 - .1
    p = torch.tensor([[1 / 2, 1 / 4, 1 / 8, 1 / 8], [0.7, 0.1, 0.1, 0.1]])
    q = torch.tensor([[1 / 2, 1 / 8, 1 / 4, 1 / 8], [0.1, 0.7, 0.1, 0.1]])
    ref, cand = p.log() + 3.0, q.log() - 5.0  # logits: log-probabilities up to a constant
    s = token_stats(ref, cand, torch.tensor([2, 1]))
    assert s.kl.tolist() == pytest.approx([LN2 / 8, 0.6 * LN7], abs=1e-6)
    assert s.same_top.tolist() == [True, False]
    assert s.delta_p.tolist() == pytest.approx([1 / 8, 0.6], abs=1e-6)
    assert s.nll.tolist() == pytest.approx([math.log(4), -math.log(0.7)], abs=1e-6)
    assert s.ref_nll.tolist() == pytest.approx([math.log(8), math.log(10)], abs=1e-6)
    same = token_stats(ref, ref, torch.tensor([2, 1]))
    assert same.kl.tolist() == [0.0, 0.0] and same.delta_p.tolist() == [0.0, 0.0] and same.same_top.all()


def test_summary_percentiles_and_stderr_by_hand():
    kl = torch.tensor([3.0, 0.0, 10.0, 1.0, 2.0])
    dp = torch.tensor([0.2, -0.5, 0.0, 0.4, -0.1])
    nll = torch.tensor([1.0, 1.0, 3.0, 3.0, 2.0])
    stats = TokenStats(nll, nll, kl, torch.tensor([True, True, False, True, False]), dp)
    out = summarize(stats)
    # sorted KL 0, 1, 2, 3, 10: percentile f at x = 4 f between neighbours
    assert out["kl"]["mean"] == pytest.approx(3.2)
    assert out["kl"]["median"] == 2.0
    assert out["kl"]["p99"] == pytest.approx(3 + 0.96 * 7)  # x = 3.96
    assert out["kl"]["p999"] == pytest.approx(3 + 0.996 * 7)  # x = 3.996
    assert out["kl"]["max"] == 10.0
    # mean(x^2) = 114 / 5 = 22.8; 22.8 - 3.2^2 = 12.56; sqrt(12.56 / 4)
    assert out["kl"]["mean_stderr"] == pytest.approx(math.sqrt(3.14))
    assert out["same_top"] == pytest.approx(0.6)
    # sorted dp -0.5, -0.1, 0, 0.2, 0.4
    assert out["delta_p"]["mean"] == pytest.approx(0.0, abs=1e-7)  # fp32 values
    assert out["delta_p"]["p1"] == pytest.approx(-0.5 + 0.04 * 0.4)
    assert out["delta_p"]["p5"] == pytest.approx(-0.5 + 0.2 * 0.4)
    assert out["delta_p"]["p95"] == pytest.approx(0.2 + 0.8 * 0.2)
    assert out["delta_p"]["p99"] == pytest.approx(0.2 + 0.96 * 0.2)
    assert out["perplexity"] == pytest.approx(math.exp(2.0))
    assert set(out) == {"perplexity", "perplexity_low", "perplexity_high", "kl", "same_top", "delta_p"}
    assert set(out["kl"]) == {"mean", "mean_stderr", "median", "p99", "p999", "max"}
    assert set(out["delta_p"]) == {"mean", "p1", "p5", "p95", "p99"}
    assert percentile(torch.tensor([4.0, 1.0, 3.0, 2.0]), 0.5) == 2.5  # an even count: the middle two's mean
    # two windows of two tokens, means 1 and 3: 2 +- t(0.975, 1 dof) * sqrt(2) / sqrt(2)
    two = summarize(TokenStats(*(torch.tensor([1.0, 1.0, 3.0, 3.0]),) * 5), windows=2)
    t975 = 12.706204736174698
    assert two["perplexity_low"] == pytest.approx(math.exp(2 - t975))
    assert two["perplexity_high"] == pytest.approx(math.exp(2 + t975))


class Toy(torch.nn.Module):
    """A causal toy: each position's state is tanh of the running sum of its embeddings; logits
    are its head's (soft-capped at `cap` where given, as Gemma 2's are: the head alone then
    does not give them)."""

    def __init__(self, vocab: int, hidden: int = 8, cap: float | None = None):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.lm_head = torch.nn.Linear(hidden, vocab, bias=False)
        self.cap = cap

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids):
        logits = self.lm_head(torch.tanh(self.embed(input_ids).cumsum(1)))
        return SimpleNamespace(logits=logits if self.cap is None else self.cap * torch.tanh(logits / self.cap))


def toy_pair(vocab: int, cap: float | None = None, seed: int = 0):
    torch.manual_seed(seed)
    ref = Toy(vocab, cap=cap).eval()
    cand = copy.deepcopy(ref)
    with torch.no_grad():
        cand.lm_head.weight.add_(0.3 * torch.randn_like(cand.lm_head.weight))
    return ref, cand


def direct(ref_model, cand_model, windows) -> TokenStats:
    """The same statistics all at once over the full vocabulary, in float64: the whole text's logits held."""
    with torch.no_grad():
        a, b = (m(input_ids=windows).logits[:, :-1].double() for m in (ref_model, cand_model))
    y = windows[:, 1:, None]
    logp, logq = a.log_softmax(-1), b.log_softmax(-1)
    nll, ref_nll = -logq.gather(-1, y).flatten(), -logp.gather(-1, y).flatten()
    kl = (logp.exp() * (logp - logq)).sum(-1).flatten()
    return TokenStats(nll, ref_nll, kl, (a.argmax(-1) == b.argmax(-1)).flatten(), (-nll).exp() - (-ref_nll).exp())


@pytest.mark.parametrize("cap", [None, 5.0], ids=["head-recomputed", "reference-run-again"])
def test_streamed_equals_direct(cap, monkeypatch):
    """Within 1e-6 nats (KL), 1e-5 (nll) and 1e-7 (delta p): fp32 in pieces of 7 positions
    against fp64 at once; the same top token everywhere."""
    monkeypatch.setattr(divergence, "PIECE_VALUES", 7 * 500)  # 7 rows of a 500-token vocabulary
    ref_model, cand_model = toy_pair(500, cap)
    windows = torch.randint(0, 500, (3, 41))
    ref = CausalReference(ref_model, windows)
    assert ref.exact_head == (cap is None) and (ref.hidden is None) == (cap is not None)
    got, want = ref.score(cand_model), direct(ref_model, cand_model, windows)
    assert len(got) == 120
    assert torch.allclose(got.kl.double(), want.kl, atol=1e-6)
    assert torch.allclose(got.nll.double(), want.nll, atol=1e-5)
    assert torch.allclose(got.ref_nll.double(), want.ref_nll, atol=1e-5)
    assert torch.allclose(got.delta_p.double(), want.delta_p, atol=1e-7)
    assert torch.equal(got.same_top, want.same_top)
    assert torch.allclose(ref.nll.flatten().double(), want.ref_nll, atol=1e-5)
    assert summarize(got, 3)["kl"]["mean"] == pytest.approx(want.kl.mean().item(), abs=1e-7)
    assert ref.score(ref_model).kl.abs().max() < 1e-6  # the reference against itself


def peak_bytes(fn) -> int:
    """The most bytes torch held at once while `fn` ran, beyond what it held before: the CPU
    allocations and frees the profiler records (torch's own counters), in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    held = peak = 0
    for _, n in sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()):
        held += n
        peak = max(peak, held)
    return peak


def test_memory_is_bounded_on_a_256k_vocabulary():
    """300 scored tokens (10 windows of 31) over 262,144 tokens: the text's logits take 300 MiB
    for either model (600 MiB both, before any log-softmax). The reference keeps 9.6 KB of head
    inputs; its run and a candidate's scoring stay under 256 MiB each (measured: 121 and 181 MiB):
    one window's logits (30 MiB), a piece of the reference's, and a few temporaries of that size."""
    vocab, mib = 1 << 18, 2**20
    ref_model, cand_model = toy_pair(vocab)
    windows = torch.randint(0, vocab, (10, 31))
    text_logits = windows[:, 1:].numel() * vocab * 4
    assert text_logits == 300 * mib
    built = {}
    run_peak = peak_bytes(lambda: built.setdefault("ref", CausalReference(ref_model, windows)))
    ref = built["ref"]
    assert ref.exact_head and ref.hidden.numel() * ref.hidden.element_size() == 300 * 8 * 4
    score_peak = peak_bytes(lambda: built.setdefault("stats", ref.score(cand_model)))
    assert len(built["stats"]) == 300
    assert run_peak < 256 * mib and score_peak < 256 * mib, (run_peak / mib, score_peak / mib)
    assert 64 * mib <= peak_bytes(lambda: torch.ones(16 * mib).sum()) < 65 * mib  # the counters count: 64 MiB held


def test_another_model_is_named_by_its_difference():
    from transformers import GPT2Config, LlamaConfig

    a = LlamaConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2)
    assert model_difference(a, LlamaConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2)) is None
    assert model_difference(a, LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2)) == \
        "vocabulary size 100, the reference 200"
    assert model_difference(a, GPT2Config(vocab_size=200)) == "architecture gpt2, the reference llama"


def test_eight_bits_are_closer_than_four_on_a_tiny_llama(tiny_models):
    from engine.drivers.explorer import Explorer
    from engine.recipe.recipe import Recipe

    ex = Explorer.open(tiny_models["llama"], device="cpu")
    ref = CausalReference.from_text(ex.loaded, quick=True)  # 4 windows of 256 tokens of the packaged text
    assert ref.exact_head and ref.targets.shape == (4, 255)
    kl = {}
    for bits in (8, 4):
        work = ex.workspace()
        work.apply(Recipe(bits=bits, include_embeddings=True))
        kl[bits] = summarize(ref.score(work.model), ref.n_windows)["kl"]["mean"]
    assert 0 < kl[8] < kl[4]
    itself = summarize(ref.score(ex.loaded.model), ref.n_windows)
    assert itself["kl"]["max"] == 0.0 and itself["same_top"] == 1.0
    assert itself["perplexity"] == pytest.approx(ref.summary()["perplexity"], rel=1e-6)
