"""Cross-layer basis sharing (Basis Sharing, Wang et al. 2024): which layers share one basis,
and at what rank.

Layers of one kind (the same name once the block number is replaced, the same shape, the same
recipe) in consecutive groups of N = `share_blocks` blocks (blocks 0..N-1, N..2N-1, ...; a
last, shorter group shares among fewer) are stacked, [W_1; ...; W_N] (N out, in), and whitened
with the summed input statistics H = sum_i H_i (as the authors' code sums the layers' X^T X);
with H = S S^T, the SVD of the stacked W S = U diag(s) V^T gives one basis B = sqrt(s_k) V_k^T
S^-1 (k, in), stored once, and each layer its own coefficients A_i = U_k^(i) sqrt(s_k) (out, k),
the rows of U that belong to layer i; layer i computes A_i (B x). At full k it is exact.

The rank: a group stores no more than per-layer low rank at the recipe's rank r would
(N r (out + in) values): k = floor(N r (out + in) / (in + N out)), so the basis and the
coefficients hold k in + N out k <= N r (out + in) values. A group of one layer (no partner, or
no block number) is then the per-layer whitened SVD at rank r exactly.

Bytes: the basis is counted on the first layer of its group (the owner); the others store
their coefficients only, their B counted 0 bytes and marked 'shared'.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from engine.formats.bytes import TensorBytes
from engine.methods.whitened import whitened_svd

BLOCK = re.compile(r"\.(\d+)\.")
SHARED = TensorBytes(0, 0, 0, "shared")  # a basis stored with the first layer of its group


@dataclass(frozen=True)
class Share:
    """One layer's place in a group that shares a basis: the group's layers, in block order,
    and the basis's rank k."""

    group: tuple[str, ...]
    rank: int

    @property
    def owner(self) -> str:
        """The layer whose bytes hold the basis."""
        return self.group[0]

    def index(self, name: str) -> int:
        return self.group.index(name)


def shared_rank(n: int, r: int, out: int, inp: int) -> int:
    """The basis rank k of a group of n (out, in) layers that stores no more values than n
    layers at rank r: floor(n r (out + in) / (in + n out)), at most the stacked matrix's rank.

    >>> shared_rank(2, 192, 384, 384), shared_rank(1, 192, 384, 384)
    (256, 192)
    """
    k = n * r * (out + inp) // (inp + n * out)
    return max(1, min(k, n * out, inp))


def kind_and_block(name: str) -> tuple[str, int | None]:
    """A layer's kind (its name with the block number replaced by '*') and its block number
    (None: the layer is in no numbered block, e.g. an embedding).

    >>> kind_and_block("encoder.layer.3.attention.self.query")
    ('encoder.layer.*.attention.self.query', 3)
    """
    m = BLOCK.search(f".{name}.")
    if m is None:
        return name, None
    return (f".{name}."[: m.start()] + ".*." + f".{name}."[m.end():])[1:-1], int(m.group(1))


def groups(infos, recipe) -> dict[str, Share]:
    """Layer name -> its Share, for every layer of `infos` (those a recipe selects) that
    `recipe` (through Recipe.for_layer) factorizes with lowrank_method 'shared'."""
    found: dict[tuple, list] = {}
    for info in infos:
        if getattr(info, "tied_to", None) is not None:
            continue
        lr = recipe.for_layer(info.name)
        r = lr.rank_for(min(info.shape))
        if lr.lowrank_method != "shared" or r is None:
            continue
        kind, block = kind_and_block(info.name)
        key = (kind, tuple(info.shape), lr, info.name if block is None else block // lr.share_blocks)
        found.setdefault(key, []).append((block or 0, info.name, r))
    out = {}
    for (_, (rows, cols), _, _), members in found.items():
        members.sort()
        names = tuple(name for _, name, _ in members)
        share = Share(names, shared_rank(len(names), members[0][2], rows, cols))
        out.update({name: share for name in names})
    return out


def table(infos, recipe, spectra=None) -> list[dict]:
    """One row per group of two or more layers: its kind, layers and blocks, the basis rank k, the per-layer rank
    r, and the values stored per-layer and shared (the difference is what sharing saves at
    16 bits; the rank k is chosen so that it is never negative). `spectra(share)`: the
    stacked spectrum's energy kept at k, where given."""
    by_name = {i.name: i for i in infos}
    rows, seen = [], set()
    for name, share in groups(infos, recipe).items():
        if share.group in seen or len(share.group) < 2:
            continue
        seen.add(share.group)
        out, inp = by_name[name].shape
        n, k = len(share.group), share.rank
        r = recipe.for_layer(name).rank_for(min(out, inp))
        row = {"kind": kind_and_block(name)[0], "layers": list(share.group),
               "blocks": [kind_and_block(n)[1] for n in share.group], "shape": [out, inp], "rank": k,
               "per_layer_rank": r, "per_layer_values": n * r * (out + inp), "shared_values": k * inp + n * out * k}
        if spectra is not None:
            row["energy_kept"] = spectra(share)
        rows.append(row)
    return rows


def shared_whitened_svd(ws: list[torch.Tensor], hs: list[torch.Tensor | None], damp: float = 1e-4) -> list:
    """Basis Sharing (Wang et al. 2024): one basis for the (out_i, in) matrices `ws` whose
    inputs have the statistics `hs`. The SVD of the stacked [W_1; ...; W_N] S, with the summed
    H = sum_i H_i = S S^T (inputs without statistics count as none; with none at all, the plain
    SVD), is U diag(s) V^T; returns per layer (U_i, s, V^T S^-1), U_i its rows of U, so that
    low_rank_factors gives every layer its own A_i and one and the same B (the basis)."""
    known = [h for h in hs if h is not None]
    w = torch.cat(list(ws))
    if known:
        u, s, vh = whitened_svd(w, sum(known[1:], known[0]), damp)
    else:
        u, s, vh = (t.to(w.dtype) for t in torch.linalg.svd(w.double(), full_matrices=False))
    return [(ui, s, vh) for ui in u.split([m.shape[0] for m in ws])]
