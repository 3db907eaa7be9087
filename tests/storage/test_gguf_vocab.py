"""--format gguf from a Hugging Face model: its byte-level BPE tokenizer written as GGUF metadata,
read back by the gguf package, transformers and llama.cpp (where the optional llama-cpp-python is
installed: skipped, saying so, where not) with the same tokens."""
import json
from pathlib import Path

import gguf
import pytest
import torch
from transformers import AutoTokenizer

from cli_harness import main
from engine.drivers.explorer import Explorer
from engine.errors import UserError
from engine.models import data
from engine.models.loading import gguf_file, minilm_path
from engine.storage import gguf_file as gguf_export
from engine.storage import gguf_vocab

SMOLLM_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
LLAMA3_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": gguf_vocab._LLAMA3}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


def _spec(pre, **model):
    return {"model": {"type": "BPE", "byte_fallback": False, **model}, "decoder": {"type": "ByteLevel"},
            "normalizer": None, "pre_tokenizer": pre}


def test_pre_tokenizers_are_named_as_llama_cpp_names_them_and_others_refused():
    assert gguf_vocab.pre_name(_spec(SMOLLM_PRE)) == "smollm"
    assert gguf_vocab.pre_name(_spec(LLAMA3_PRE)) == "llama-bpe"
    assert gguf_vocab.pre_name(_spec(SMOLLM_PRE["pretokenizers"][1])) == "gpt-2"
    other = json.loads(json.dumps(LLAMA3_PRE))
    other["pretokenizers"][0]["pattern"]["Regex"] = gguf_vocab._LLAMA3.replace("{1,3}", "{1,4}")
    with pytest.raises(UserError, match="no pre-tokenizer known"):
        gguf_vocab.pre_name(_spec(other))
    with pytest.raises(UserError, match="SentencePiece"):
        gguf_vocab.pre_name(_spec(None, byte_fallback=True))
    bert = json.loads(AutoTokenizer.from_pretrained(minilm_path()).backend_tokenizer.to_str())
    with pytest.raises(UserError, match="WordPiece"):
        gguf_vocab.pre_name(bert)


@pytest.fixture(scope="module")
def hf_llama_gguf(tiny_llama_with_smollm2s_tokenizer, tmp_path_factory):
    """The tiny Hugging Face Llama in Q8_0, and its GGUF file: (the workspace, the writer's report)."""
    ex = Explorer.open(str(tiny_llama_with_smollm2s_tokenizer), device="cpu")
    work = ex.workspace()
    work.apply(ex.preset("q8_0"))
    return work, gguf_export.write(work, tmp_path_factory.mktemp("q8_0"))


def _text_and_ids(folder):
    """Real text (gensim's Lee corpus, numbers included) and the Hugging Face tokenizer's ids for it."""
    text = " ".join(data.lee_documents()[:3])
    return text, AutoTokenizer.from_pretrained(folder)(text).input_ids


def test_a_hugging_face_llama_exports_to_gguf_with_its_own_tokenizer(tiny_llama_with_smollm2s_tokenizer,
                                                                     hf_llama_gguf):
    from transformers import AutoModelForCausalLM

    work, report = hf_llama_gguf
    assert report["written_bytes"] == report["predicted_bytes"]
    ours, shipped = gguf.GGUFReader(report["file"]), gguf.GGUFReader(gguf_file("smollm2"))

    def field(reader, key):
        return reader.fields[key].contents()

    n = len(field(shipped, "tokenizer.ggml.tokens"))
    assert field(ours, "tokenizer.ggml.pre") == "gpt-2"  # the converted folder's plain byte-level split
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):  # SmolLM2's own file, token for token
        assert field(ours, key)[:n] == field(shipped, key)
    assert field(ours, "tokenizer.ggml.tokens")[n:] == [f"[PAD{i}]" for i in range(n, n + 3)]
    assert field(ours, "tokenizer.ggml.token_type")[n:] == [gguf.TokenType.UNUSED] * 3
    assert field(ours, "tokenizer.ggml.merges") == field(shipped, "tokenizer.ggml.merges")
    for key in ("bos_token_id", "eos_token_id"):
        assert field(ours, f"tokenizer.ggml.{key}") == field(shipped, f"tokenizer.ggml.{key}")

    text, hf_ids = _text_and_ids(tiny_llama_with_smollm2s_tokenizer)
    file = Path(report["file"])
    assert AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)(text).input_ids == hf_ids
    model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
    ids = torch.tensor([hf_ids[:64]])
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, work.model(ids).logits)


def test_llama_cpp_splits_the_exported_tokenizer_as_hugging_face_does(llama_cpp, tiny_llama_with_smollm2s_tokenizer,
                                                                       hf_llama_gguf):
    _, report = hf_llama_gguf
    text, hf_ids = _text_and_ids(tiny_llama_with_smollm2s_tokenizer)
    llm = llama_cpp.Llama(model_path=report["file"], n_ctx=64, n_threads=2, verbose=False, vocab_only=True)
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == hf_ids  # llama.cpp splits text as HF does


def test_a_tokenizer_llama_cpp_cannot_split_the_same_way_is_refused_in_one_line(tiny_models, tmp_path):
    code, _, err = main("export", tiny_models["llama"], "--number-format", "q8_0", "--format", "gguf",
                        "--out", str(tmp_path))
    assert code == 2 and "WordPiece" in err and err.count("\n") == 1  # the tiny Llama has BERT's tokenizer
