"""Every transform runs on a device other than the CPU, with no tensor left behind on the CPU.

Without a GPU the work runs on a pretend one, `fakegpu`: a tensor on it (OnDevice) says it
lives on device fakegpu:0 and keeps its values in an ordinary CPU tensor, so every op computes
real values (sorts, thresholds, nonzero, item all work). DeviceCheck, a dispatch mode, sees
every op and refuses one whose tensors live on more than one device, naming it, as CUDA
would: a tensor made with no device (torch.arange(n), torch.zeros(k)) beside one on the
device, a mask built on the CPU scattered into a device tensor, a file's tensors decoded on
the CPU into a model on the device. What CUDA allows passes: 0-dim CPU tensors (scalars),
copies between devices (.to, copy_), CPU indices into a device tensor. Results on the pretend
device are computed on the CPU, so they must equal the CPU's exactly: the reference and the
pretend device run on the same number of threads, once on one and once on two, whatever the
machine's cores and the number of test processes (SparseGPT's kept values are sums that two
threads add in another order, 2e-7 apart, where GPTQ rounds them onto its grid).

With EXPLORER_TEST_CUDA=1 and a GPU, the primitives, the pipeline and the tiny models also run on
the GPU (otherwise reported as skipped): under the same check, its results checked for where they are, not compared bit for bit
with the CPU's. The tests see no GPU otherwise (conftest hides it), which the first test checks.
"""
import os
import string
import subprocess
import sys

import pytest
import torch

from device_harness import FAKE, DeviceMixing, _exact, _same, on_device, threads
from engine.drivers.explorer import Explorer
from engine.formats.grid import (
    code_offset,
    dequantize,
    error_stats,
    fake_quantize,
    on_codebook,
    on_grid,
    per_entry,
    quant_grid,
    quantize,
)
from engine.methods.awq import awq_quantize
from engine.methods.gptq import gptq_quantize
from engine.methods.hqq import hqq_quantize
from engine.methods.kmeans import kmeans_quantize
from engine.methods.magnitude import magnitude_mask, nm_mask
from engine.methods.sparsegpt import sparsegpt_prune
from engine.methods.svd import effective_rank, energy_kept, low_rank_factors, svd
from engine.methods.wanda import row_mask, wanda_scores
from engine.methods.whitened import whitened_svd
from engine.pipeline.compress import StoredLayer, compress, requantize
from engine.recipe.recipe import Recipe
from engine.storage import codec, huffman, pack
from engine.storage import explorer_format as export


@pytest.fixture(params=[pytest.param((FAKE, 1), id="fakegpu-1thread"), pytest.param((FAKE, 2), id="fakegpu-2threads"),
                        pytest.param(("cuda", 1), id="cuda")])
def where(request):
    """(device, threads): the pretend device on one thread and on two (the CPU's reference on as
    many), and the GPU where EXPLORER_TEST_CUDA=1 finds one."""
    if request.param[0] == "cuda":
        request.getfixturevalue("cuda_device")
    return request.param


@pytest.fixture(params=[FAKE, "cuda"])
def device_kind(request):
    """The pretend device, and the GPU where EXPLORER_TEST_CUDA=1 finds one."""
    if request.param == "cuda":
        request.getfixturevalue("cuda_device")
    return request.param


def test_the_tests_see_no_gpu_unless_asked_for(cuda_asked_for):
    """conftest hides CUDA (CUDA_VISIBLE_DEVICES="") from the tests and the processes they start."""
    if cuda_asked_for:
        pytest.skip("EXPLORER_TEST_CUDA=1: the GPU is meant to be seen")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert not torch.cuda.is_available() and torch.cuda.device_count() == 0
    child = subprocess.run([sys.executable, "-c", "import os; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')))"],
                           capture_output=True, text=True, check=True)
    assert child.stdout == "''\n"


def test_the_check_refuses_mixing_and_allows_what_cuda_allows():
    x0 = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    with on_device() as device:
        x = x0.to(device)
        with pytest.raises(DeviceMixing, match="scatter_"):
            torch.zeros_like(x).scatter_(1, torch.zeros(4, 1, dtype=torch.long), 1.0)
        with pytest.raises(DeviceMixing, match="add"):
            x + torch.ones(6)
        with pytest.raises(DeviceMixing, match="randn"):
            torch.randn(3, generator=torch.Generator().manual_seed(0), device=device)
        y = x * torch.tensor(2.0) + torch.arange(6, device=x.device)  # a CPU scalar; made on x's device
        y[torch.tensor([0, 2])] = 0.0  # CPU indices
        assert y.device == device and y[1].tolist() == (x0[1] * 2 + torch.arange(6)).tolist()
        assert x.sum().item() == pytest.approx(x0.sum().item())


# ---------------------------------------------------------------------------------------
# Primitives and methods: each on the device, compared with the CPU
# ---------------------------------------------------------------------------------------


def _inputs():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 40, generator=g)
    x = torch.randn(200, 40, generator=g) * torch.linspace(0.1, 2.0, 40)
    return {"w": w, "h": x.T @ x / 200, "big": torch.randn(300, 300, generator=g),
            "ties": (w * 2).round(), "codes": torch.randint(0, 8, (5000,), generator=g) ** 2 % 8}


def _grids(t):  # every granularity, both symmetries
    w = t["w"]
    return [on_grid(w, *quant_grid(w, 3, g, 16, s), 3, g, 16, s)
            for g in ("tensor", "channel", "group") for s in (True, False)]


def _codes(t):
    w = t["w"]
    scale, zero = quant_grid(w, 4, "group", 16)
    s, o = per_entry((scale, code_offset(zero, 4, True)), *w.shape, "group", 16)
    codes = quantize(w, s, o, 4)
    return codes, dequantize(codes, s, o)


def _pack(t):
    packed = pack.pack_bits(t["codes"], 3)
    return packed, pack.unpack_bits(packed, 3, t["codes"].numel())


def _huffman(t):
    lengths = huffman.code_lengths(torch.bincount(t["codes"], minlength=8))
    stream, runs = huffman.encode(t["codes"], lengths)
    return lengths, stream, runs, huffman.decode(stream, lengths, runs, t["codes"].numel())


CASES = {
    "svd": lambda t: svd(t["w"]),
    "low_rank_factors": lambda t: low_rank_factors(*svd(t["w"]), 5),
    "energy_kept": lambda t: energy_kept(svd(t["w"])[1], 5),
    "effective_rank": lambda t: effective_rank(svd(t["w"])[1]),
    "magnitude_mask": lambda t: magnitude_mask(t["w"], 0.5),
    "magnitude_mask ties": lambda t: magnitude_mask(t["ties"], 0.5),
    "magnitude_mask sorted": lambda t: magnitude_mask(t["w"], 0.3, t["w"].abs().flatten().sort().values),
    "magnitude_mask selection": lambda t: magnitude_mask(t["big"], 0.6),
    "nm_mask": lambda t: nm_mask(t["w"][:, :38], 2, 4),
    "quant_grid on_grid": _grids,
    "quantize dequantize": _codes,
    "error_stats": lambda t: error_stats(t["w"], fake_quantize(t["w"], 3)),
    "whitened_svd": lambda t: whitened_svd(t["w"], t["h"]),
    "wanda row_mask": lambda t: row_mask(wanda_scores(t["w"], t["h"].diagonal()), 0.55),
    "gptq": lambda t: gptq_quantize(t["w"], t["h"], 4, group_size=16, return_grid=True),
    "gptq act_order": lambda t: gptq_quantize(t["w"], t["h"], 3, group_size=16, act_order=True,
                                                keep=nm_mask(t["w"], 2, 4), return_grid=True),
    "gptq channel": lambda t: gptq_quantize(t["w"], t["h"], 4, "channel", symmetric=False, return_grid=True),
    "kmeans": lambda t: kmeans_quantize(t["w"], 3, return_codebook=True),
    "kmeans keep sampled": lambda t: kmeans_quantize(t["big"], 2, keep=magnitude_mask(t["big"], 0.5),
                                                       max_fit=5000, return_codebook=True),
    "on_codebook": lambda t: on_codebook(t["w"], kmeans_quantize(t["w"], 2, return_codebook=True)[1]),
    "hqq": lambda t: hqq_quantize(t["w"], 3, group_size=16, keep=magnitude_mask(t["w"], 0.3)),
    "awq": lambda t: awq_quantize(t["w"], t["h"], 4, group_size=16, grid=4)[:2],
    "sparsegpt": lambda t: sparsegpt_prune(t["w"], t["h"], 0.45, block=16),
    "sparsegpt n:m": lambda t: sparsegpt_prune(t["w"], t["h"], 0.5, (2, 4), block=16),
    "pack": _pack,
    "huffman": _huffman,
}


@pytest.mark.parametrize("name", list(CASES))
def test_primitives_and_methods_stay_on_the_device(name, where):
    t = _inputs()
    with threads(where[1]):  # the reference on as many threads as the pretend device
        ref = CASES[name](t)
    with on_device(*where) as device:
        _same(CASES[name]({k: v.to(device) for k, v in t.items()}), ref, device)


# ---------------------------------------------------------------------------------------
# The layer pipeline and the packed codec
# ---------------------------------------------------------------------------------------

RECIPES = [
    Recipe(bits=4, sparsity=0.5),
    Recipe(rank=6, bits=4, group_size=8, sparsity=0.5),
    Recipe(bits=3, pattern="2:4", symmetric=False, group_size=16),
    Recipe(bits=5, granularity="tensor", sparsity=0.99),
    Recipe(bits=3, quant_method="kmeans", sparsity=0.6),
    Recipe(rank=8, lowrank_method="whitened", prune_method="wanda", sparsity=0.5, bits=4, quant_method="gptq",
           act_order=True, group_size=8),
    Recipe(bits=4, prune_method="wanda", pattern="1:4", quant_method="gptq", granularity="channel"),
    Recipe(sparsity=0.4),
    Recipe(bits=3, symmetric=False, group_size=16, quant_method="hqq", prune_method="sparsegpt", sparsity=0.5),
    Recipe(bits=4, group_size=8, quant_method="awq", sparsity=0.5),
]


def _tensors(stored: StoredLayer) -> list:
    """Every tensor a stored layer holds: values, keep-masks, grids."""
    return [[m.values, m.keep, m.grid.scale, m.grid.zero, m.grid.codebook, m.grid.channel] for m in stored.matrices]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.describe().replace(" · ", ", "))
def test_pipeline_and_codec_stay_on_the_device(recipe, where):
    t = _inputs()
    entropy = recipe.quant_method == "kmeans"  # Huffman-coded once (its decoding is 1024 steps)

    def run(w, h):
        factors = (lambda: whitened_svd(w, h)) if recipe.lowrank_method == "whitened" else (lambda: svd(w))
        stored = compress("m", w, recipe, factors, lambda: w.abs().flatten().sort().values, h)
        again = requantize(stored, recipe.updated(bits=3), h)
        tensors, parts = codec.encode_layer(stored, entropy)
        back = codec.decode_layer("m", stored.shape, recipe, stored.rank, parts, tensors)
        return _tensors(stored), _tensors(again), tensors, _tensors(back), stored.matrix()

    with threads(where[1]):
        ref = run(t["w"], t["h"])
    with on_device(*where) as device:
        _same(run(t["w"].to(device), t["h"].to(device)), ref, device)


# ---------------------------------------------------------------------------------------
# A tiny Llama end to end: load, calibrate, compress, evaluate, export and reload, distil
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A tiny random Llama with a character-level tokenizer (141 tokens: small logits, fast)."""
    from transformers import BertTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("device")
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars,
                                               *("##" + c for c in chars)]) + "\n")
    tokenizer = BertTokenizer(str(root / "vocab.txt"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256, tie_word_embeddings=False))
    model.save_pretrained(root / "llama")
    tokenizer.save_pretrained(root / "llama")
    return str(root / "llama")


def _on(device, tensors):
    for t in tensors:
        if t is not None:
            assert t.device == device, f"{tuple(t.shape)} on {t.device}, not {device}"


def test_tiny_llama_end_to_end_on_the_device(tiny_llama, tmp_path, device_kind):
    with on_device(device_kind) as device:
        ex = Explorer.open(tiny_llama, device=str(device))
        assert ex.loaded.device == device and all(p.device == device for p in ex.loaded.model.parameters())
        work = ex.workspace()
        for recipe in [Recipe(rank_ratio=0.5, lowrank_method="whitened", prune_method="wanda", sparsity=0.5,
                              bits=4, quant_method="gptq", act_order=True, include_embeddings=True),
                       Recipe(bits=3, quant_method="kmeans", pattern="2:4", layers="mlp")]:
            work.apply(recipe)  # calibrated: whitened SVD, Wanda and GPTQ (plain ones on the embeddings)
            for name, stored in work.stored.items():
                _on(device, [x for m in _tensors(stored) for x in m] + list(work.holders[name].tensors()))
            assert 0 < work.evaluate(quick=True)["top1_agreement"] <= 1
        assert all(e["relative_error"] > 0 for e in work.layer_errors())
        assert 0 < ex.spectrum(ex.layers[1].name, 4)["energy_kept"] < 1
        assert len(work.compare("the cat", max_new_tokens=2)["top"]) >= 10

        export.write(work, tmp_path / "export")
        back = ex.workspace()
        export.load_into(back, tmp_path / "export")  # read back onto the device, the values as written
        for name, stored in work.stored.items():
            _on(device, back.holders[name].tensors())
            assert all(torch.equal(a, b) for a, b in zip(back.holders[name].tensors(), stored.tensors()))
        _on(device, [*back.model.parameters(), *(h.w for h in back.holders.values() if h.w is not None)])
        assert back.evaluate(quick=True) == pytest.approx(work.evaluate(quick=True), rel=0 if _exact(device) else 1e-5)

        work.distill(steps=1, lr=1e-3)  # trains the stored values on the device, on their grids
        assert len(work.applied.distillation.loss) == 1
        for name in work.stored:
            _on(device, work.holders[name].tensors())


@pytest.fixture(scope="module")
def tiny_mixtral(tiny_llama):
    """A tiny random Mixtral (4 experts held as 3-D parameters) with the same tokenizer."""
    from transformers import AutoTokenizer, MixtralConfig, MixtralForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    torch.manual_seed(0)
    model = MixtralForCausalLM(MixtralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=256,
                                             tie_word_embeddings=False))
    folder = tiny_llama.replace("llama", "mixtral")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_tiny_mixtral_experts_on_the_device(tiny_mixtral, tmp_path, device_kind):
    """Each expert's statistics (the routed tokens' inputs), its compression, the stacked
    parameter the experts module computes with, and the export's reload stay on the device."""
    with on_device(device_kind) as device:
        ex = Explorer.open(tiny_mixtral, device=str(device))
        # transformers' grouped experts count tokens with torch.histc on integers, which the pretend
        # device (computing on the CPU) lacks and CUDA has: its eager experts here
        ex.loaded.model.set_experts_implementation("eager")
        work = ex.workspace()
        work.apply(Recipe(sparsity=0.5, prune_method="wanda", bits=4, group_size=16, quant_method="gptq",
                          group="experts"))
        assert ex.uncalibrated(work.applied.recipe) == []
        for name, stored in work.stored.items():
            _on(device, [x for m in _tensors(stored) for x in m] + list(work.holders[name].tensors()))
        assert 0 < work.evaluate(quick=True)["top1_agreement"] <= 1
        _on(device, [work.model.get_submodule("model.layers.0.mlp.experts").down_proj])
        export.write(work, tmp_path / "export")
        back = ex.workspace()
        export.load_into(back, tmp_path / "export")
        assert back.evaluate(quick=True) == pytest.approx(work.evaluate(quick=True), rel=0 if _exact(device) else 1e-5)
