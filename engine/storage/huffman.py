"""Huffman coding of packed integer codes (the last stage of Deep Compression), and back.

A layer's codes (values in [0, 2^b), b <= 8) get a canonical Huffman code built from their
own counts, at most LIMIT bits per symbol. What is stored: the code length of each of the
2^b symbols (one byte each: the code itself follows from the lengths), the bit stream, and
the length in bits of each run of SYNC codes (int32), so that decoding runs all runs at once
rather than one code after another.

The stream is written least significant bit first, like pack.pack_bits, with each code's
bits reversed so that its first bit comes first: reading LIMIT bits at any code's start and
looking them up in a table of 2^LIMIT entries gives the symbol and its length. Encoding and
decoding run on the device of the codes (or the stream) given.

>>> lengths = code_lengths(torch.bincount(torch.tensor([0, 0, 0, 1, 2]), minlength=4))
>>> lengths.tolist()  # 0 is most frequent: 1 bit; 3 never occurs: no code
[1, 2, 2, 0]
"""
from __future__ import annotations

import heapq

import torch

LIMIT = 16  # longest code, in bits: the decoding table has 2^LIMIT entries
SYNC = 1024  # codes per run; each run's bit length is stored (4 bytes per SYNC codes)
CHUNK = 1 << 20  # codes per encoding pass: a bounded buffer


def _huffman_lengths(counts: list[int]) -> list[int]:
    """Code lengths of an unlimited Huffman code for the symbols with counts > 0."""
    used = [s for s, c in enumerate(counts) if c > 0]
    lengths = [0] * len(counts)
    if len(used) == 1:
        lengths[used[0]] = 1
        return lengths
    heap = [(counts[s], s, [s]) for s in used]  # (weight, tie-break, symbols below)
    heapq.heapify(heap)
    while len(heap) > 1:
        w1, t1, s1 = heapq.heappop(heap)
        w2, t2, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (w1 + w2, min(t1, t2), s1 + s2))
    return lengths


def code_lengths(counts: torch.Tensor, limit: int = LIMIT) -> torch.Tensor:
    """Per symbol, its code length (uint8; 0 for a symbol that never occurs). Where the
    Huffman code would exceed `limit` bits, the rarest counts are raised to a floor that
    doubles until it does not (Brotli's way): the code stays a valid prefix code."""
    device, counts = counts.device, [int(c) for c in counts.tolist()]
    if sum(1 for c in counts if c) > 1 << limit:
        raise ValueError(f"huffman: more than 2^{limit} symbols")
    floor = 1
    while True:
        lengths = _huffman_lengths([max(c, floor) if c else 0 for c in counts])
        if max(lengths, default=0) <= limit:
            return torch.tensor(lengths, dtype=torch.uint8, device=device)
        floor *= 2


def _reversed_codes(lengths: torch.Tensor) -> torch.Tensor:
    """The canonical code of each symbol (shorter codes first, then by symbol), its bits
    reversed for an LSB-first stream (int64; 0 where the length is 0), on the lengths' device."""
    device, lengths = lengths.device, lengths.tolist()
    codes = [0] * len(lengths)
    code, prev = 0, 0
    for s in sorted((s for s, n in enumerate(lengths) if n), key=lambda s: (lengths[s], s)):
        code <<= lengths[s] - prev
        prev = lengths[s]
        codes[s] = int(f"{code:0{prev}b}"[::-1], 2)
        code += 1
    return torch.tensor(codes, dtype=torch.int64, device=device)


def encode(symbols: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symbols -> (stream: uint8, runs: int32 bit length of each run of SYNC symbols).
    Every symbol must have a code (lengths[s] > 0)."""
    symbols = symbols.flatten().to(torch.int64)
    rev, size = _reversed_codes(lengths.to(symbols.device)), lengths.to(symbols.device, torch.int64)
    bits = size[symbols]
    if symbols.numel() and bool((bits == 0).any()):
        raise ValueError("huffman.encode: a symbol without a code")
    runs = torch.nn.functional.pad(bits, (0, (-bits.numel()) % SYNC)).view(-1, SYNC).sum(1)
    ends = bits.cumsum(0)
    out = torch.zeros(-(-int(ends[-1]) // 8) if bits.numel() else 0, dtype=torch.uint8, device=symbols.device)
    for start in range(0, symbols.numel(), CHUNK):
        at = (ends[start:start + CHUNK] - bits[start:start + CHUNK])  # each code's first bit
        word = rev[symbols[start:start + CHUNK]] << (at & 7)  # <= LIMIT + 7 bits: three bytes
        first = int(at[0]) >> 3
        acc = torch.zeros(int(at[-1] >> 3) + 3 - first, dtype=torch.int64, device=symbols.device)
        for k in range(3):  # codes do not overlap: adding their bits is OR-ing them
            acc.index_add_(0, (at >> 3) - first + k, (word >> (8 * k)) & 0xFF)
        acc = acc[: out.numel() - first]
        out[first:first + acc.numel()] |= acc.to(torch.uint8)
    return out, runs.to(torch.int32)


def decode(stream: torch.Tensor, lengths: torch.Tensor, runs: torch.Tensor, count: int) -> torch.Tensor:
    """The inverse of encode: `count` symbols (int64). Every run is decoded at once, one
    table lookup per step; a stream whose sizes do not add up raises ValueError."""
    device = stream.device
    lengths, runs = lengths.to(device, torch.int64), runs.to(device)
    if runs.numel() != -(-count // SYNC) or int(runs.to(torch.int64).sum()) > stream.numel() * 8 \
            or stream.numel() != -(-int(runs.to(torch.int64).sum()) // 8):
        raise ValueError(f"huffman.decode: {stream.numel()} bytes and {runs.numel()} runs do not hold {count} codes")
    if count == 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    longest = int(lengths.max())
    # table[p] for any `longest`-bit pattern p: symbol | length << 8 of the code p starts with
    table = torch.zeros(1 << longest, dtype=torch.int64, device=device)
    rev = _reversed_codes(lengths)
    for s in torch.nonzero(lengths).flatten().tolist():
        n = int(lengths[s])
        table[int(rev[s]) + (torch.arange(1 << (longest - n), device=device) << n)] = s | n << 8
    data = torch.nn.functional.pad(stream.to(torch.int64), (0, 3))
    window = data[:-2] | data[1:-1] << 8 | data[2:] << 16  # 24 bits from each byte on
    pos = torch.cat([runs.new_zeros(1, dtype=torch.int64), runs.to(torch.int64).cumsum(0)[:-1]])
    last = window.numel() - 1
    mask = (1 << longest) - 1
    out = torch.empty(SYNC, pos.numel(), dtype=torch.int64, device=device)
    for step in range(SYNC):  # past a run's end (the last, short run) reads padding: cut below
        entry = table[(window[(pos >> 3).clamp(max=last)] >> (pos & 7)) & mask]
        out[step] = entry
        pos += entry >> 8
    return (out.t().flatten()[:count] & 0xFF)
