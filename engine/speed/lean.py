"""The lean decode path: the Llama layouts' forward written out, over the runtime's kernels.

    lean, why = build(rt.model, max_tokens=160)   # None and why, where the model's layout is not one of LAYOUTS
    logits = lean(ids)           # a prompt, from position 0: the last position's logits
    logits = lean(next_ids)      # the next token(s), after what the cache holds
    lean.reset()                 # an empty cache

transformers' forward runs about ten Python modules per block, a dynamic cache that grows by
concatenation, masks and hooks: at a small model's decode, that work around the kernels takes
longer than the kernels. This forward does only what the layout computes: per block an RMSNorm,
q, k and v in one product where their kernels can be joined (engine.speed.kernels.join), rotary
positions from a table the model's own rotary module computed (so every rope variant it knows
is the same here), a static key/value cache written in place, scaled dot-product attention,
the output projection, an RMSNorm, gate and up in one product, SiLU, down. The matrices are the
runtime's modules (each stored matrix on its kernel, engine.speed.runtime): the same values,
the same kernels, no copy. Prefill and decode return only the logits they need (the last
position's), as llama.cpp does; `all_logits=True` returns every position's, to compare.

Other layouts (GPT-2, BERT, mixtures of experts, ...) keep transformers' forward: `build` says why.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.speed import kernels

# the causal LMs whose blocks this forward computes, and what each adds to Llama's
LAYOUTS = {
    "LlamaForCausalLM": "Llama (SmolLM, Llama 2 and 3)",
    "MistralForCausalLM": "Mistral (a sliding window wider than the context computes as none)",
    "Qwen2ForCausalLM": "Qwen2 (biases on q, k and v)",
    "Qwen3ForCausalLM": "Qwen3 (an RMSNorm on each head's q and k)",
}


def _linear(module: nn.Module):
    """The runtime's product for one layer as a callable, and its kernels (for joining)."""
    from engine.speed.runtime import KernelLinear

    if isinstance(module, KernelLinear):
        return module, list(module.mats), module.bias
    if isinstance(module, nn.Linear):
        return module, None, None
    raise TypeError(f"not a linear layer: {type(module).__name__}")


def _joined(modules: list[nn.Module]):
    """One callable computing the layers' outputs side by side (their products joined into one
    kernel where engine.speed.kernels.join can), else None."""
    parts = [_linear(m) for m in modules]
    if any(mats is None or len(mats) != 1 for _, mats, _ in parts):  # a plain nn.Linear, or low rank
        return None
    mat = kernels.join([mats[0] for _, mats, _ in parts])
    if mat is None:
        return None
    biases = [b for _, _, b in parts]
    if all(b is None for b in biases):
        return mat
    like = next(b for b in biases if b is not None)
    bias = torch.cat([b if b is not None else like.new_zeros(mats[0].out_features)
                      for b, (_, mats, _) in zip(biases, parts)])
    return lambda x: mat(x) + bias


@dataclass
class Block:
    ln1: torch.Tensor
    ln2: torch.Tensor
    qkv: object  # one callable for q, k, v side by side, or a tuple of three
    o: nn.Module
    gate_up: object  # one callable for gate and up side by side, or a tuple of two
    down: nn.Module
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None
    heads: int = 0  # query heads, and key/value heads: the block's own (structured pruning may differ per block)
    kv_heads: int = 0


def _why_not(model: nn.Module, max_tokens: int) -> str:
    name = type(model).__name__
    if name not in LAYOUTS:
        return f"{name} is not a layout the lean path computes ({', '.join(LAYOUTS)})"
    c = model.config
    if getattr(c, "hidden_act", "silu") != "silu":
        return f"activation {c.hidden_act} (the lean path computes SiLU)"
    window = getattr(c, "sliding_window", None)
    if window is not None and getattr(c, "use_sliding_window", True) and window < max_tokens:
        return f"a sliding window of {window} tokens, narrower than the {max_tokens} the cache holds"
    return ""


def build(model: nn.Module, max_tokens: int):
    """The lean forward of a runtime model (engine.speed.runtime.build(...).model) with a cache of
    `max_tokens` positions, and '' ; or None and why the model keeps transformers' forward."""
    why = _why_not(model, max_tokens)
    if why:
        return None, why
    return Lean(model, max_tokens), ""


class Lean:
    def __init__(self, model: nn.Module, max_tokens: int):
        c, base = model.config, model.base_model
        self.embed = base.get_input_embeddings()
        self.head = model.get_output_embeddings()
        self.norm, self.eps = base.norm.weight, base.norm.variance_epsilon
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.blocks = [self._block(layer) for layer in base.layers]
        ref = self.norm
        self.dtype, self.device = ref.dtype, ref.device
        positions = torch.arange(max_tokens, device=self.device)[None]
        probe = torch.zeros(1, dtype=self.dtype, device=self.device)
        with torch.inference_mode():
            cos, sin = base.rotary_emb(probe, positions)  # the model's own rope: scaling variants included
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)  # (positions, head_dim)
        # a cache per block, of its own key/value heads: written in place, compiled or not
        self.k = [torch.zeros((1, b.kv_heads, max_tokens, self.head_dim), dtype=self.dtype, device=self.device)
                  for b in self.blocks]
        self.v = [torch.zeros_like(k) for k in self.k]
        self.max_tokens, self.pos = max_tokens, 0
        self.positions = torch.arange(max_tokens, device=self.device)
        self._step = None  # the compiled one-token step, once compile() ran
        self.scale = getattr(base.layers[0].self_attn, "scaling", self.head_dim ** -0.5)
        self.joined = {"q, k, v": sum(not isinstance(b.qkv, tuple) for b in self.blocks),
                       "gate, up": sum(not isinstance(b.gate_up, tuple) for b in self.blocks)}  # blocks joined

    def _block(self, layer) -> Block:
        a, m = layer.self_attn, layer.mlp
        qkv = _joined([a.q_proj, a.k_proj, a.v_proj]) or (a.q_proj, a.k_proj, a.v_proj)
        gate_up = _joined([m.gate_proj, m.up_proj]) or (m.gate_proj, m.up_proj)
        qn, kn = getattr(a, "q_norm", None), getattr(a, "k_norm", None)
        rows = [p.mats[0].out_features if hasattr(p, "mats") else p.weight.shape[0] for p in (a.q_proj, a.k_proj)]
        return Block(layer.input_layernorm.weight, layer.post_attention_layernorm.weight, qkv, a.o_proj, gate_up,
                     m.down_proj, None if qn is None else qn.weight, None if kn is None else kn.weight,
                     rows[0] // self.head_dim, rows[1] // self.head_dim)

    def reset(self) -> None:
        self.pos = 0

    def compile(self) -> float:
        """Compile the one-token step with torch.compile (inductor; its C++ wrapper on the CPU, CUDA
        graphs on a GPU): the seconds it took. Inductor keeps what it compiled on disk (in the
        explorer's cache folder, per machine fingerprint), so a second run with the same model,
        recipe and machine loads it.
        Prefill stays as it is: its time is the kernels'."""
        import time

        why = compile_why_not(self.device)
        if why:
            raise RuntimeError(why)

        from engine.hardware.machine import cache_dir, fingerprint

        # one folder per processor, its features as torch runs them, torch's version and threads: code
        # compiled with AVX-512 and loaded where torch runs AVX2 computed wrongly (the tests force both).
        # Inductor sets the variable to its own default when it first looks: only another value (the
        # user's) is kept.
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        if given is None or os.path.abspath(given) == os.path.abspath(default_cache_dir()):
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "inductor" / fingerprint())
        import torch._inductor.config as inductor

        if self.device.type == "cpu":
            inductor.cpp_wrapper = True
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        step = torch.compile(self._static_step, dynamic=False, mode=mode)
        tok = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        start = time.perf_counter()
        with torch.inference_mode():
            for k in range(3):  # the first call compiles; the next record CUDA graphs on a GPU
                step(tok, self.positions[k:k + 1])  # a position as the steps pass it: a view of the table
        seconds = time.perf_counter() - start
        for t in (*self.k, *self.v):
            t.zero_()
        self._step = step
        return seconds

    def held_bytes(self) -> int:
        """Bytes of every tensor the lean forward holds: its matrices (joined ones counted once),
        norms, embedding, head, rope tables and its whole static cache."""
        from engine.speed.runtime import held_bytes

        holder = nn.Module()
        mods = [self.embed, self.head] + [m for b in self.blocks for m in (b.o, b.down, *_parts(b.qkv), *_parts(b.gate_up))]
        holder.parts = nn.ModuleList([m for m in mods if isinstance(m, nn.Module)])
        tensors = [self.norm, self.cos, self.sin, *self.k, *self.v] + [t for b in self.blocks for t in
                                                                       (b.ln1, b.ln2, b.q_norm, b.k_norm) if t is not None]
        for i, t in enumerate(tensors):
            holder.register_buffer(f"t{i}", t)
        return held_bytes(holder)

    def _norm(self, x, weight):
        """transformers' RMSNorm: in fp32, the result back in the activations' dtype, times the weight."""
        return weight * F.rms_norm(x.float(), x.shape[-1:], None, self.eps).to(x.dtype)

    def _rope(self, x, cos, sin):  # x (1, heads, tokens, head_dim), rotate-half layout
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin

    def _static_step(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One token at position `pos` (a tensor of one index): shapes that never change, for
        torch.compile; it attends over the whole cache with the positions after `pos` masked."""
        d = self.head_dim
        cos, sin = self.cos[pos], self.sin[pos]
        mask = (self.positions <= pos)[None, None, None]
        x = self.embed(tok)
        for i, b in enumerate(self.blocks):
            h, kvh = b.heads, b.kv_heads
            y = self._norm(x, b.ln1)
            q, k, v = (f(y) for f in b.qkv) if isinstance(b.qkv, tuple) else \
                b.qkv(y).split((h * d, kvh * d, kvh * d), -1)
            q, k = q.view(1, 1, h, d), k.view(1, 1, kvh, d)
            if b.q_norm is not None:
                q, k = self._norm(q, b.q_norm), self._norm(k, b.k_norm)
            q = self._rope(q.transpose(1, 2), cos, sin)
            self.k[i].index_copy_(2, pos, self._rope(k.transpose(1, 2), cos, sin))
            self.v[i].index_copy_(2, pos, v.view(1, 1, kvh, d).transpose(1, 2))
            att = F.scaled_dot_product_attention(q, self.k[i], self.v[i], attn_mask=mask, scale=self.scale,
                                                 enable_gqa=h != kvh)
            x = x + b.o(att.transpose(1, 2).reshape(1, 1, h * d))
            y = self._norm(x, b.ln2)
            g, u = (b.gate_up[0](y), b.gate_up[1](y)) if isinstance(b.gate_up, tuple) else b.gate_up(y).chunk(2, -1)
            x = x + b.down(F.silu(g) * u)
        return self.head(self._norm(x, self.norm))

    def __call__(self, ids: torch.Tensor, all_logits: bool = False) -> torch.Tensor:
        """Logits (1, 1, vocab) of the last of `ids` (1, tokens) after what the cache holds, or of
        every position (1, tokens, vocab) with `all_logits`."""
        n, start = ids.shape[1], self.pos
        end = start + n
        if end > self.max_tokens:
            raise ValueError(f"the cache holds {self.max_tokens} positions; {end} asked")
        if n == 1 and self._step is not None and not all_logits:
            with torch.inference_mode():
                out = self._step(ids, self.positions[start:end])
            self.pos = end
            return out
        d = self.head_dim
        cos, sin = self.cos[start:end], self.sin[start:end]
        mask = None
        if n > 1 and start > 0:  # new tokens after cached ones: each sees the cache and the new ones up to itself
            mask = torch.ones(n, end, dtype=torch.bool, device=self.device).tril(start)
        with torch.inference_mode():
            x = self.embed(ids)
            for i, b in enumerate(self.blocks):
                h, kvh = b.heads, b.kv_heads
                y = self._norm(x, b.ln1)
                if isinstance(b.qkv, tuple):
                    q, k, v = (f(y) for f in b.qkv)
                else:
                    q, k, v = b.qkv(y).split((h * d, kvh * d, kvh * d), -1)
                q, k = q.view(1, n, h, d), k.view(1, n, kvh, d)
                if b.q_norm is not None:
                    q, k = self._norm(q, b.q_norm), self._norm(k, b.k_norm)
                q = self._rope(q.transpose(1, 2), cos, sin)
                self.k[i][:, :, start:end] = self._rope(k.transpose(1, 2), cos, sin)
                self.v[i][:, :, start:end] = v.view(1, n, kvh, d).transpose(1, 2)
                att = F.scaled_dot_product_attention(q, self.k[i][:, :, :end], self.v[i][:, :, :end], attn_mask=mask,
                                                     is_causal=n > 1 and mask is None, scale=self.scale,
                                                     enable_gqa=h != kvh)
                x = x + b.o(att.transpose(1, 2).reshape(1, n, h * d))
                y = self._norm(x, b.ln2)
                if isinstance(b.gate_up, tuple):
                    g, u = b.gate_up[0](y), b.gate_up[1](y)
                else:
                    g, u = b.gate_up(y).chunk(2, -1)
                x = x + b.down(F.silu(g) * u)
            self.pos = end
            return self.head(self._norm(x if all_logits else x[:, -1:], self.norm))


def compile_why_not(device: torch.device) -> str:
    """'' where torch.compile can build the step here; else why not (inductor's CPU code is C++,
    built by the machine's compiler)."""
    import shutil

    if device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return "no C++ compiler on this machine (inductor builds its CPU code with one: apt-get install g++)"
    return ""


def _parts(f) -> list:
    return list(f) if isinstance(f, tuple) else [f]
