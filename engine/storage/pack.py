"""b-bit integers packed into bytes, and back: the stored form of codes, indices and masks.

Values are written least significant bit first into a continuous bit stream, so n values of
b bits take exactly ceil(n * b / 8) bytes, whatever b (3, 5 and 7 bits cross byte boundaries);
the last byte is padded with zero bits. Packing and unpacking stay on their input's device.

>>> pack_bits(torch.tensor([1, 2, 3]), 2)  # 01, 10, 11 -> 0b00111001
tensor([57], dtype=torch.uint8)
"""
from __future__ import annotations

import torch

CHUNK = 1 << 20  # values per pass (a multiple of 8, so each pass fills whole bytes): a bounded buffer


def packed_size(count: int, bits: int) -> int:
    return -(-count * bits // 8)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers in [0, 2^bits) -> uint8 tensor of ceil(n * bits / 8) bytes (LSB first)."""
    codes = codes.flatten().to(torch.int64)
    if codes.numel() and (codes.min() < 0 or codes.max() >= 1 << bits):
        raise ValueError(f"pack_bits: values outside [0, {1 << bits}) for {bits} bits")
    out = torch.zeros(packed_size(codes.numel(), bits), dtype=torch.uint8, device=codes.device)
    shifts = torch.arange(bits, device=codes.device)
    weights = 1 << torch.arange(8, device=codes.device)
    for start in range(0, codes.numel(), CHUNK):
        part = codes[start:start + CHUNK]
        stream = ((part[:, None] >> shifts) & 1).flatten()  # (n * bits,) bits
        stream = torch.nn.functional.pad(stream, (0, (-stream.numel()) % 8))
        packed = (stream.view(-1, 8) * weights).sum(1).to(torch.uint8)
        first = start * bits // 8
        out[first:first + packed.numel()] = packed
    return out


def unpack_bits(data: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The inverse of pack_bits: `count` integers of `bits` bits (int64)."""
    if data.numel() != packed_size(count, bits):
        raise ValueError(f"unpack_bits: {data.numel()} bytes, expected {packed_size(count, bits)} "
                         f"for {count} values of {bits} bits")
    out = torch.empty(count, dtype=torch.int64, device=data.device)
    shifts = torch.arange(bits, device=data.device)
    places = torch.arange(8, device=data.device)
    for start in range(0, count, CHUNK):
        n = min(CHUNK, count - start)
        first = start * bits // 8
        raw = data[first:first + packed_size(n, bits)].to(torch.int64)
        stream = ((raw[:, None] >> places) & 1).flatten()[: n * bits].view(n, bits)
        out[start:start + n] = (stream << shifts).sum(1)
    return out
