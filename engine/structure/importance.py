"""Scores of heads, channels and blocks: the lower the score, the sooner it is removed.

Pure functions on tensors. Two kinds of importance, as a recipe's `structure_importance` picks:

- magnitude: from the weights alone. A group of heads by the Frobenius norms of the rows and
  columns it owns along its value path (v's rows times o's columns); an MLP channel likewise
  (its rows of gate/up times its column of down); a block by the energy of its two output
  projections (o and down), which is what it adds to the residual stream at most.
- calibration: the output change on the calibration text. Removing a group of heads takes its
  exact contribution x_g W_o[:, g]^T out of the attention's output, whose mean energy over the
  calibration tokens is tr(W_o[:, g] H_gg W_o[:, g]^T), H = X^T X / n of o's inputs; a channel
  j likewise ||W_down[:, j]||^2 H_jj. A block by ShortGPT's block influence,
  1 - mean cos(x_in, x_out) over the tokens: a block whose output is its input scores 0.
"""
from __future__ import annotations

import torch


def group_columns(group: int, width: int) -> slice:
    """The columns (or rows) of group `group` of `width` consecutive values."""
    return slice(group * width, (group + 1) * width)


def head_groups_magnitude(w_v: torch.Tensor, w_o: torch.Tensor, groups: int) -> torch.Tensor:
    """(groups,) scores ||W_v[rows of g]||_F * ||W_o[:, columns of g]||_F for `groups` key/value
    groups. w_v: (kv_heads * d, hidden); w_o: (hidden, q_heads * d); a group is one key/value
    head and the query heads that read it.

    >>> w_v = torch.tensor([[1.0], [0.0]]); w_o = torch.tensor([[2.0, 3.0, 0.0, 1.0]])
    >>> head_groups_magnitude(w_v, w_o, 2).tolist()   # group 0: 1 * sqrt(4 + 9); group 1: 0 * 1
    [3.605551242828369, 0.0]
    """
    v = w_v.float().reshape(groups, -1).norm(dim=1)  # (groups, rows * hidden) -> (groups,)
    o = w_o.float().reshape(w_o.shape[0], groups, -1).norm(dim=(0, 2))
    return v * o


def head_groups_calibrated(w_o: torch.Tensor, h_o: torch.Tensor, groups: int) -> torch.Tensor:
    """(groups,) the mean energy per token of each group's contribution to o's output:
    tr(W_g H_gg W_g^T) with W_g = W_o[:, columns of g] and H the input statistics of o.

    >>> w_o = torch.tensor([[1.0, 2.0]]); h = torch.tensor([[4.0, 1.0], [1.0, 1.0]])
    >>> head_groups_calibrated(w_o, h, 2).tolist()   # [1*4*1, 2*1*2]
    [4.0, 4.0]
    """
    width = w_o.shape[1] // groups
    w = w_o.float()
    out = []
    for g in range(groups):
        cols = group_columns(g, width)
        wg = w[:, cols]
        out.append(((wg @ h_o[cols, cols].float()) * wg).sum())  # tr(W_g H_gg W_g^T)
    return torch.stack(out)


def channels_magnitude(w_in: list[torch.Tensor], w_down: torch.Tensor) -> torch.Tensor:
    """(channels,) scores prod_i ||W_in_i[j, :]|| * ||W_down[:, j]||, over the projections that
    make channel j (gate and up, or up alone).

    >>> channels_magnitude([torch.tensor([[3.0, 4.0], [1.0, 0.0]])], torch.tensor([[1.0, 2.0]])).tolist()
    [5.0, 2.0]
    """
    score = w_down.float().norm(dim=0)
    for w in w_in:
        score = score * w.float().norm(dim=1)
    return score


def channels_calibrated(w_down: torch.Tensor, h_down: torch.Tensor) -> torch.Tensor:
    """(channels,) the mean energy per token of channel j's contribution to the MLP's output:
    ||W_down[:, j]||^2 H_jj.

    >>> channels_calibrated(torch.tensor([[1.0, 2.0]]), torch.tensor([[9.0, 0.0], [0.0, 1.0]])).tolist()
    [9.0, 4.0]
    """
    return w_down.float().square().sum(dim=0) * torch.diagonal(h_down).float()


def block_magnitude(w_o: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """A block's score from its weights: ||W_o||_F^2 + ||W_down||_F^2."""
    return w_o.float().square().sum() + w_down.float().square().sum()


def block_influence(x_in: torch.Tensor, x_out: torch.Tensor) -> torch.Tensor:
    """ShortGPT's block influence: 1 - mean over tokens of cos(x_in, x_out), (tokens, hidden)
    each. 0 for a block that leaves every token's hidden state pointing the same way.

    >>> block_influence(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 1.0]])).item()
    0.5
    """
    cos = torch.nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1)
    return 1 - cos.mean()


def lowest(scores: torch.Tensor, count: int) -> tuple[int, ...]:
    """The indices of the `count` lowest scores, ascending by index; ties go to the lower index.

    >>> lowest(torch.tensor([0.5, 0.1, 0.1, 0.9]), 2)
    (1, 2)
    """
    order = sorted(range(scores.numel()), key=lambda i: (scores[i].item(), i))
    return tuple(sorted(order[:count]))
