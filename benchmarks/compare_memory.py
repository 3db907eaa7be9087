"""The memory `compare` needs on a model with a 256k-token vocabulary, measured.

Builds a Llama of about 295M parameters with a vocabulary of 262,144 tokens (hidden 1,024, two
blocks, tied embeddings: most of its parameters are the embedding, as in today's small models with
large vocabularies), random weights, SmolLM2's tokenizer (its ids fit the vocabulary), and runs
`python -m engine compare MODEL int8.json --json` on the full protocol (4,080 scored tokens) in a
process of its own, whose peak resident set is read back. For scale: the reference's logits over
the text, held whole in fp32, would take 4,080 x 262,144 x 4 bytes = 4.0 GiB per model.

    .venv/bin/python benchmarks/compare_memory.py
"""
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from engine.hardware.machine import header  # noqa: E402
from engine.models.loading import smollm2_path  # noqa: E402


def main() -> None:
    print(header())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "llama-256k"
        tok = AutoTokenizer.from_pretrained(smollm2_path())
        cfg = LlamaConfig(vocab_size=262_144, hidden_size=1024, intermediate_size=2816, num_hidden_layers=2,
                          num_attention_heads=16, num_key_value_heads=4, tie_word_embeddings=True,
                          max_position_embeddings=1024, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
        params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        del model
        recipe = Path(tmp) / "int8.json"
        recipe.write_text(json.dumps({"bits": 8, "include_embeddings": True}))
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "engine", "compare", str(folder), str(recipe), "--json"],
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode:
            sys.exit(done.stderr.strip().splitlines()[-1])
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        out = json.loads(done.stdout)
        cand = out["candidates"][-1]
        print(f"model: Llama, {params:,} parameters, vocabulary 262,144, fp32 weights {4 * params / 2**30:.2f} GiB")
        print(f"compare, full protocol, {out['protocol']['tokens_scored']:,} scored tokens, one int8 candidate: "
              f"{seconds:.0f} s, peak resident set {peak / 2**30:.2f} GiB")
        print(f"the text's logits held whole would take {out['protocol']['tokens_scored'] * 262_144 * 4 / 2**30:.2f} GiB "
              f"per model (fp32)")
        print(f"candidate: KL mean {cand['kl']['mean']:.3g}, same top {cand['same_top']:.3f}")


if __name__ == "__main__":
    main()
