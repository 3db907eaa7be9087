"""What every test shares: the CPU only (unless CUDA is asked for), the cores, the tiny models and
the offline models loaded once."""
import os
import sys
from pathlib import Path

# the tests' helpers (app_harness, cli_harness, browser, ...) import from any folder of the tests
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The tests run on the CPU, whatever the machine: CUDA is hidden from this process, and from every
# process it starts (the command line, the served app, xdist's workers), before torch first looks
# for a GPU, so that the default device ("auto": the GPU when there is one) is the CPU and values
# are compared exactly. EXPLORER_TEST_CUDA=1 leaves the GPU visible, for the tests that run on it
# on purpose (those taking the `cuda_device` fixture: `EXPLORER_TEST_CUDA=1 pytest tests/speed/test_device.py`);
# the rest of the suite is written for the CPU (the app's default device is then the GPU).
CUDA_OPT_IN = "EXPLORER_TEST_CUDA"
CUDA_ASKED_FOR = os.environ.get(CUDA_OPT_IN, "") not in ("", "0")
if not CUDA_ASKED_FOR:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

# What the engine measures of this machine (the roofline, each kernel against dense) is kept in a
# folder of this test run, not the user's cache: measured once per run, for this run's machine.
if "EXPLORER_MACHINE_CACHE" not in os.environ:
    import tempfile

    os.environ["EXPLORER_MACHINE_CACHE"] = tempfile.mkdtemp(prefix="explorer-machine-")

import pytest  # noqa: E402 (after hiding the GPU)
import torch  # noqa: E402
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
)

from engine.hardware.cores import usable_cores
from engine.models.loading import minilm_path, smollm2_path


def pytest_configure(config):
    """The app sets glibc's mmap threshold to 128 KiB once per server process (ui/allocator.py),
    process-wide. Under AppTest that would be the test process (ui.context is imported when the
    tests are collected), where every tensor of 128 KiB or more would then be a fresh mapping that
    the kernel zeroes, in every test: the test process keeps glibc's default, and the served app
    (the browser test) sets it.

    Under pytest-xdist (`make test` runs `-n 2`) the workers share the cores this process may use
    (engine.hardware.cores: its affinity and cgroup quota, not the machine's count): each takes its share
    of torch threads, and so do the interpreters and servers it starts. The controller converts
    smollm2 once before the workers start, so that two of them never race to write its cache.

    A GPU left visible without EXPLORER_TEST_CUDA=1 means torch looked for one before this file
    hid it: refused, as the tests would then compare the GPU's values with the CPU's."""
    if not CUDA_ASKED_FOR and torch.cuda.is_available():
        raise pytest.UsageError("torch saw the GPU before tests/conftest.py hid it; "
                                f"run the CUDA tests with {CUDA_OPT_IN}=1")
    from ui import allocator

    allocator.give_back_large_blocks = lambda threshold=allocator.THRESHOLD: False
    if hasattr(config, "workerinput"):
        threads = max(1, usable_cores() // int(config.workerinput["workercount"]))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    elif getattr(config.option, "numprocesses", None):
        from engine.models.loading import smollm2_path

        smollm2_path()


def pytest_collection_modifyitems(config, items):
    """The browser tests first: they share one served app and take about three minutes, so that
    under xdist they start at once on one worker while the other takes the rest, rather than
    ending the run alone. (Stable: the rest keep their order.)"""
    items.sort(key=lambda item: item.module.__name__ != "test_browser")


@pytest.fixture(scope="session")
def cuda_asked_for() -> bool:
    """Whether EXPLORER_TEST_CUDA=1 left the GPU visible."""
    return CUDA_ASKED_FOR


@pytest.fixture
def cuda_device() -> torch.device:
    """The GPU, for a test that runs on it on purpose: skipped, saying why, unless
    EXPLORER_TEST_CUDA=1 and torch sees a GPU."""
    if not CUDA_ASKED_FOR:
        pytest.skip(f"CUDA: the tests hide the GPU; {CUDA_OPT_IN}=1 runs them on one")
    if not torch.cuda.is_available():
        pytest.skip(f"CUDA: {CUDA_OPT_IN}=1, but torch sees no CUDA GPU")
    return torch.device("cuda", 0)


@pytest.fixture(scope="session")
def llama_cpp():
    """The optional llama-cpp-python (`make llamacpp`), for the tests that run a file in llama.cpp:
    skipped, saying so, where it is not installed (before any module- or function-scoped fixture
    of the test is built)."""
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional: make llamacpp)")


def _save(model, folder):
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)  # a real WordPiece vocabulary
    return str(folder)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny randomly initialised GPT-2, Llama, BERT, Mixtral and Qwen-MoE models, saved as Hugging
    Face folders."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny")
    vocab = 30522
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=256, n_embd=32, n_layer=2, n_head=2))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                         tie_word_embeddings=False))
    bert_cfg = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=512)
    bert = BertModel(BertConfig(**bert_cfg))
    classifier = BertForSequenceClassification(BertConfig(**bert_cfg, num_labels=2))
    # mixture of experts: 4 experts held as 3-D parameters, 2 per token; Qwen-MoE adds a shared expert
    moe = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               num_experts_per_tok=2, max_position_embeddings=256, tie_word_embeddings=False)
    mixtral = MixtralForCausalLM(MixtralConfig(**moe, intermediate_size=64, num_local_experts=4))
    qwen_moe = Qwen2MoeForCausalLM(Qwen2MoeConfig(**moe, intermediate_size=64, moe_intermediate_size=32,
                                                  shared_expert_intermediate_size=64, num_experts=4))
    return {name: _save(m, root / name) for name, m in
            [("gpt2", gpt2), ("llama", llama), ("bert", bert), ("bert-classifier", classifier),
             ("mixtral", mixtral), ("qwen-moe", qwen_moe)]}


@pytest.fixture(scope="session")
def tiny_llama_with_smollm2s_tokenizer(tmp_path_factory):
    """A tiny Llama with SmolLM2's tokenizer as a Hugging Face folder (as the hub has it: no GGUF)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf-llama")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer) + 3, hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# Models loaded once per test session, for the tests that only read them: each test makes its own
# workspace (Explorer.workspace), which never writes to the explorer's model. A test that changes
# a model, or needs an explorer with nothing cached yet, opens its own (a tiny model).

SHARED = ("minilm", "smollm2")


@pytest.fixture(scope="session", autouse=True)
def offline_models_loaded_once():
    """Every Explorer.open of an offline alias on the CPU (the command line run in process, the
    app under AppTest, the tests' own) returns one explorer per alias, as a long-lived app server
    does: an explorer is never modified, and its caches (reference outputs, SVDs, calibration)
    are then computed once. Loading itself is tested where the fixtures first open each alias,
    and through `python -m engine` in a new interpreter (test_cli)."""
    from engine.drivers.explorer import Explorer

    opened = {}
    plain = Explorer.open.__func__

    def open_once(cls, ref, device=None, trust_remote_code=False):
        cpu = device == "cpu" or (device in (None, "auto") and not torch.cuda.is_available())
        if ref not in SHARED or not cpu or trust_remote_code:
            return plain(cls, ref, device, trust_remote_code)
        if ref not in opened:
            opened[ref] = plain(cls, ref, "cpu")
        return opened[ref]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Explorer, "open", classmethod(open_once))
        yield


@pytest.fixture(scope="session")
def minilm_explorer():
    from engine.drivers.explorer import Explorer

    return Explorer.open("minilm", device="cpu")


@pytest.fixture(scope="session")
def smollm2_explorer():
    from engine.drivers.explorer import Explorer

    return Explorer.open("smollm2", device="cpu")


@pytest.fixture(scope="session")
def tiny_explorers(tiny_models):
    from engine.drivers.explorer import Explorer

    return {name: Explorer.open(path, device="cpu") for name, path in tiny_models.items()}


@pytest.fixture(scope="session", autouse=True)
def autograd_knows_the_pretend_device():
    """The autograd engine sizes its per-device queues once per process, at its first backward
    pass. the pretend device (device_harness) (registered from Python) is counted only while a check
    runs, so that first backward pass runs here, inside one: distillation on the pretend device
    then finds its queue whichever test ran a backward pass before."""
    from device_harness import on_device

    with on_device() as device:
        x = torch.ones(2, device=device, requires_grad=True)
        torch.autograd.grad((x * x).sum(), x)
    yield


def pytest_sessionfinish(session, exitstatus):
    """Wait for the app's background work (the sorted magnitudes and SVDs it starts after loading
    a model) before the interpreter exits: a short run of the app's tests otherwise ended while
    torch was still in it, and the process aborted ("terminate called without an active exception")."""
    import threading

    for thread in threading.enumerate():
        if thread.name == "prepare" or thread.name.startswith("preload"):
            thread.join()
