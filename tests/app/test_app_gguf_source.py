"""The app's model picker takes any GGUF file as a source model: a link naming a third-party file
(no explorer.source) opens it, dequantized once, its note naming the file's types."""
import pytest

from app_harness import compressed_bytes, ok, start


@pytest.fixture(scope="module")
def q8_file(tmp_path_factory):
    """A tiny Llama written to GGUF in Q8_0 as a third-party converter writes it, converted in a cache of its own."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from gguf_harness import cut_tokenizer, llama_shape, write_gguf

    root = tmp_path_factory.mktemp("gguf-source")
    tokenizer = cut_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    path = write_gguf(root / "llama-Q8_0.gguf", LlamaForCausalLM(LlamaConfig(**llama_shape())), tokenizer, "llama",
                      "Q8_0")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMPRESSION_EXPLORER_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield str(path)


def test_a_link_to_a_gguf_file_opens_it_as_the_source_model(q8_file):
    at = ok(start("pages/explore.py", model=q8_file, bits=4))
    notes = [i.value for i in at.info if i.value.startswith("Note:")]
    assert len(notes) == 1 and "GGUF file of types Q8_0" in notes[0] and "not the original weights" in notes[0]
    four = compressed_bytes(at)
    at = ok(start("pages/explore.py", model=q8_file, bits=8))  # the cache: the same model, now at 8 bits
    assert compressed_bytes(at) > four
