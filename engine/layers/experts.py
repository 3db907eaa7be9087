"""Mixture-of-experts layers: experts held as one 3-D parameter, and the routers that pick them.

transformers (5.x) keeps the experts of Mixtral, Qwen-MoE, DeepSeek-style and similar models
as 3-D parameters of one experts module: `gate_up_proj` (E, 2I, H) and `down_proj` (E, H, I),
used as `F.linear(x, gate_up_proj[e])`; a module with `is_transposed` stores (E, in, out).
Each expert's matrix is a compressible layer of its own, found by type (a 3-D parameter):

    name  'model.layers.0.mlp.experts.down_proj.3'   (the parameter, then the expert)
    shape (out, in) = (H, I), role 'expert', group 'experts'

A router scores the experts: a module whose class is a router (MixtralTopKRouter: a 2-D
`weight`, not an nn.Linear), or an nn.Linear beside an experts module with at most as many
outputs as there are experts (Qwen-MoE's `shared_expert_gate`). Routers are layers of group
'router', left at 16 bits unless a recipe asks for them (engine.layers.find.select).

The workspace computes with the module's own forward: each stored matrix lives in a holder
(`StackedHolder`), and before the module runs, `ParamStack` stacks its holders' matrices into
the parameter's place (only after a change), so every experts implementation of transformers
(eager, grouped or batched matmuls) computes with the stored values, gradients included.
"""
from __future__ import annotations

import torch
from torch import nn

from engine.layers.kinds import LayerKind, Stored


def is_transposed(module: nn.Module) -> bool:
    return bool(getattr(module, "is_transposed", False))


def stacked_params(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The 3-D parameters a module holds itself: one matrix per expert."""
    return [(n, p) for n, p in module.named_parameters(recurse=False) if p.dim() == 3]


def is_router(module: nn.Module) -> bool:
    """A router module that is not an nn.Linear (its class says so, it holds a 2-D weight)."""
    w = getattr(module, "weight", None)
    return ("router" in type(module).__name__.lower() and not isinstance(module, nn.Linear)
            and isinstance(w, nn.Parameter) and w.dim() == 2)


class StackedKind(LayerKind):
    """A matrix its module reads from its own parameter: an expert's slice of a 3-D parameter
    (`transposed`: stored (in, out)), or a router's 2-D weight. It is read from the parameter,
    and in a workspace written back through a ParamStack."""

    def __init__(self, transposed: bool = False):
        self.transposed = transposed

    def matrix(self, model: nn.Module, info) -> torch.Tensor:
        module_name, _, pname = info.param_name.rpartition(".")
        p = getattr(model.get_submodule(module_name), pname)  # a workspace's stack holds a plain tensor
        return self.from_param(p if info.index is None else p[info.index])

    def shape(self, module: nn.Module) -> tuple[int, int]:
        return tuple(module.weight.shape)

    def to_param(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix.transpose(-1, -2) if self.transposed else matrix

    def install(self, model: nn.Module, info) -> Stored:
        module_name, _, pname = info.param_name.rpartition(".")
        module = model.get_submodule(module_name)
        stack = ParamStack.of(module, pname, self)
        return StackedHolder(stack, info.index, self.matrix(model, info).detach())


STACKED_KINDS = {"expert": StackedKind(), "expert_t": StackedKind(transposed=True), "router": StackedKind()}


class ParamStack:
    """Puts the holders' matrices in the place of a module's parameter before the module runs.

    The parameter (shared with the original model, never written to) becomes a plain tensor
    attribute; a forward pre-hook replaces it by the stacked matrices after any holder changed
    (a new tensor each time: the original's stays untouched)."""

    def __init__(self, module: nn.Module, pname: str, kind: StackedKind):
        self.module, self.pname, self.kind = module, pname, kind
        p = module._parameters.pop(pname)
        self.count = p.shape[0] if p.dim() == 3 else None  # None: a 2-D weight, one holder
        setattr(module, pname, p.detach())
        self.holders: dict[int | None, StackedHolder] = {}
        self.dirty = False
        module.register_forward_pre_hook(lambda _m, _args: self.refresh())

    @classmethod
    def of(cls, module: nn.Module, pname: str, kind: StackedKind) -> "ParamStack":
        stacks = module.__dict__.setdefault("_explorer_stacks", {})
        if pname not in stacks:
            stacks[pname] = cls(module, pname, kind)
        return stacks[pname]

    def refresh(self) -> None:
        if not self.dirty:
            return
        setattr(self.module, self.pname, self.value())
        self.dirty = False

    def value(self) -> torch.Tensor:
        """The parameter as the holders hold it: their matrices stacked (E, out, in), in the
        module's own layout."""
        if self.count is None:
            return self.kind.to_param(self.holders[None].matrix())
        return self.kind.to_param(torch.stack([self.holders[e].matrix() for e in range(self.count)]))


class StackedHolder(Stored):
    """A Stored holder whose matrix the module reads through its ParamStack."""

    def __init__(self, stack: ParamStack, index: int | None, w: torch.Tensor):
        super().__init__(w)
        self.__dict__["_stack"], self.__dict__["_index"] = stack, index
        stack.holders[index] = self

    def set(self, w=None, a=None, b=None):
        super().set(w, a, b)
        stack = self.__dict__.get("_stack")
        if stack is not None:
            stack.dirty = True


# ---------------------------------------------------------------------------------------
# Calibration: the inputs each expert actually receives
# ---------------------------------------------------------------------------------------


def input_hook(path: str, wanted: set[str], accumulate):
    """A forward pre-hook (with kwargs) for the experts module at `path`: for each expert e that
    the router sent tokens to, `accumulate(name, x)` with the rows x (tokens, in) its matrices
    see: the hidden states of its tokens for `gate_up_proj` (or `up_proj`), and the gated
    activations act(gate) * up of those tokens for `down_proj`, computed with the module's own
    weights and gate. Only names in `wanted` are accumulated."""
    prefix = f"{path}." if path else ""

    def fn(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        idx = args[1] if len(args) > 1 else kwargs["top_k_index"]
        x = x.reshape(-1, x.shape[-1]).float()  # (tokens, H)
        idx = idx.reshape(x.shape[0], -1)  # (tokens, top_k)
        first = "gate_up_proj" if hasattr(module, "gate_up_proj") else "up_proj"
        for e in idx.unique().tolist():
            rows = (idx == e).any(-1)
            name_in, name_down = f"{prefix}{first}.{e}", f"{prefix}down_proj.{e}"
            if e < 0 or not (name_in in wanted or name_down in wanted):
                continue  # a sentinel index (expert parallelism), or nothing to record
            xe = x[rows]
            if name_in in wanted:
                accumulate(name_in, xe)
            if name_down in wanted:
                w = _weight(module, first)[e].to(xe.device).float()
                h = xe @ (w if is_transposed(module) else w.T)  # (tokens, out)
                if getattr(module, "has_bias", False):
                    h = h + _weight(module, f"{first}_bias")[e].to(xe.device).float()
                gated = module._apply_gate(h) if getattr(module, "has_gate", True) else module.act_fn(h)
                accumulate(name_down, gated)
    return fn


def _weight(module: nn.Module, pname: str) -> torch.Tensor:
    """A parameter of `module`; offloaded by accelerate (on the meta device until the module
    runs), read from accelerate's weights map instead."""
    w = getattr(module, pname)
    if w.device.type == "meta":
        w = module._hf_hook.weights_map[pname]
    return w


def experts_modules(model: nn.Module, names) -> dict[str, nn.Module]:
    """Experts module path -> module, for the expert layers among `names`."""
    out = {}
    for name in names:
        parts = name.split(".")
        if len(parts) >= 3 and parts[-1].isdigit():
            path = ".".join(parts[:-2])
            try:
                module = model.get_submodule(path) if path else model
            except AttributeError:
                continue
            if stacked_params(module) or any(isinstance(v, torch.Tensor) and v.dim() == 3
                                             for v in vars(module).values()):
                out[path] = module
    return out


def materialize(module: nn.Module, dtype: torch.dtype) -> None:
    """On a copy of a workspace's experts module: its stacked parameters as plain tensors in
    `dtype`, computed once from the holders, and no pre-hook (a copy's hooks would refresh the
    workspace's module, not the copy)."""
    stacks = module.__dict__.pop("_explorer_stacks", {})
    module._forward_pre_hooks.clear()
    for pname, stack in stacks.items():
        setattr(module, pname, stack.value().detach().to(dtype))
