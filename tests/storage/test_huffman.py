"""Huffman coding of packed codes: exact round trips, sizes within Shannon's bounds, the length limit."""
import math

import pytest
import torch

from engine.storage import huffman


def _kraft(lengths):
    return sum(2.0 ** -int(n) for n in lengths.tolist() if n)


def _entropy_bits(counts):
    p = counts[counts > 0].double() / counts.sum()
    return float(-(p * p.log2()).sum())


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [0, 1, 5, huffman.SYNC - 1, huffman.SYNC, huffman.SYNC + 1, 30_000])
def test_round_trip_and_size_within_shannon_bounds(bits, count):
    g = torch.Generator().manual_seed(bits * 100_003 + count)
    # the shape of quantized weights: a bell around the middle code
    codes = (torch.randn(count, generator=g) * (1 << bits) / 6 + (1 << (bits - 1))).round()
    codes = codes.clamp(0, (1 << bits) - 1).long()
    counts = torch.bincount(codes, minlength=1 << bits)
    lengths = huffman.code_lengths(counts)
    stream, runs = huffman.encode(codes, lengths)
    assert torch.equal(huffman.decode(stream, lengths, runs, count), codes)
    assert runs.numel() == math.ceil(count / huffman.SYNC) and stream.numel() == math.ceil(int(runs.sum()) / 8)
    if count == 0:
        return
    used = int((counts > 0).sum())
    assert (lengths > 0).sum() == used and _kraft(lengths) == (1.0 if used > 1 else 0.5)  # a complete prefix code
    coded = int(runs.sum())  # bits of codes
    h = _entropy_bits(counts)
    assert count * h - 1e-6 <= coded <= count * (h + 1)  # Huffman: H <= mean length < H + 1
    if used > 1:  # and it is optimal: no better than the entropy, no worse than fixed width
        assert coded <= count * math.ceil(math.log2(used))


def test_code_lengths_by_hand():
    # counts 5, 2, 1, 1: merge 1+1 -> 2, then 2+2 -> 4, then 4+5: lengths 1, 2, 3, 3
    assert huffman.code_lengths(torch.tensor([5, 2, 1, 1])).tolist() == [1, 2, 3, 3]
    assert huffman.code_lengths(torch.tensor([0, 7, 0])).tolist() == [0, 1, 0]  # one symbol: one bit


def test_the_length_limit_holds_and_the_code_stays_decodable():
    # Fibonacci counts give the deepest Huffman tree: 40 symbols would need 39-bit codes
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    counts = torch.tensor(fib)
    assert max(huffman._huffman_lengths(fib)) == 39
    lengths = huffman.code_lengths(counts)
    assert int(lengths.max()) <= huffman.LIMIT and _kraft(lengths) <= 1.0
    codes = torch.repeat_interleave(torch.arange(40), torch.tensor([min(c, 50) for c in fib]))
    codes = codes[torch.randperm(codes.numel(), generator=torch.Generator().manual_seed(0))]
    stream, runs = huffman.encode(codes, lengths)
    assert torch.equal(huffman.decode(stream, lengths, runs, codes.numel()), codes)


def test_bit_order_by_hand():
    # lengths 1, 2, 2 -> canonical codes 0, 10, 11; written first bit first, LSB first:
    # symbols 1, 0, 2 -> bits 1,0 | 0 | 1,1 -> 0b11001 = 25
    stream, runs = huffman.encode(torch.tensor([1, 0, 2]), torch.tensor([1, 2, 2], dtype=torch.uint8))
    assert stream.tolist() == [25] and runs.tolist() == [5]


def test_bad_input_is_refused():
    lengths = torch.tensor([1, 1, 0], dtype=torch.uint8)
    with pytest.raises(ValueError, match="without a code"):
        huffman.encode(torch.tensor([0, 2]), lengths)
    stream, runs = huffman.encode(torch.tensor([0, 1, 1]), lengths)
    with pytest.raises(ValueError, match="do not hold"):
        huffman.decode(stream[:0], lengths, runs, 3)
