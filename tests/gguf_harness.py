"""Tiny models written to GGUF with the gguf package, as a third-party converter writes them (no
explorer.source), with SmolLM2's tokenizer cut to its first VOCAB tokens (its metadata is then
read in milliseconds, not seconds): shared by the tests of GGUF source models and of `compare`."""
import json

import gguf
import numpy as np
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from engine.models.loading import smollm2_path
from engine.storage import gguf_file, gguf_vocab

TYPES = ("F16", "Q8_0", "Q4_0")
VOCAB = 1024


def cut_tokenizer(folder, vocab_size: int = VOCAB):
    """SmolLM2's byte-level BPE tokenizer cut to its first `vocab_size` ids and the merges among them."""
    full = AutoTokenizer.from_pretrained(smollm2_path())
    spec = json.loads(full.backend_tokenizer.to_str())
    vocab = {t: i for t, i in spec["model"]["vocab"].items() if i < vocab_size}
    spec["model"]["vocab"] = vocab
    spec["model"]["merges"] = [m for m in spec["model"]["merges"] if m[0] in vocab and m[1] in vocab
                               and m[0] + m[1] in vocab]
    cut = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token=full.bos_token,
                                  eos_token=full.eos_token, unk_token=full.unk_token, pad_token=full.pad_token)
    cut.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def write_gguf(path, model, tokenizer, arch: str, kind: str):
    """`model` as llama.cpp's converter writes it: its hyperparameters, its tokenizer (gguf_vocab),
    norms and biases in F32, every matrix in `kind` (gguf.quants), a Llama's q and k rows permuted."""
    cfg, kind = model.config, gguf.GGMLQuantizationType[kind]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny {arch}")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    gguf_vocab.write(w, tokenizer, cfg.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg.num_hidden_layers)
    for pname, p in model.named_parameters():
        target = names.get_name(pname, try_suffixes=(".weight", ".bias"))
        data = p.detach().float()
        heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}.get(target.split(".")[-2])
        if arch == "llama" and heads and target.endswith(".weight"):
            data = data[gguf_file._rope_permutation(data.shape[0], heads)]
        a = data.numpy()
        if a.ndim == 1:
            w.add_tensor(target, a)
        elif kind == gguf.GGMLQuantizationType.F16:
            w.add_tensor(target, a.astype(np.float16))
        else:
            w.add_tensor(target, gguf.quants.quantize(a, kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def llama_shape(vocab_size: int = VOCAB) -> dict:
    """The tiny Llama's config fields (and the tiny Qwen2's)."""
    return dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1,
                eos_token_id=2, tie_word_embeddings=False)
