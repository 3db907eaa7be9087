"""Bit packing: every width from 1 (masks) to 8, including widths that do not divide 8."""
import pytest
import torch

from engine.formats.bytes import _packed
from engine.storage import pack


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 1000, pack.CHUNK + 13])
def test_round_trip_and_exact_size(bits, count):
    g = torch.Generator().manual_seed(bits * 1000 + count)
    codes = torch.randint(0, 1 << bits, (count,), generator=g)
    data = pack.pack_bits(codes, bits)
    assert data.dtype == torch.uint8 and data.numel() == _packed(count, bits)  # the byte rule of the memory count
    assert torch.equal(pack.unpack_bits(data, bits, count), codes)


def test_bit_order_by_hand():
    # 3-bit values 5 (101), 3 (011), 7 (111): stream LSB first 1,0,1, 1,1,0, 1,1,1 -> bytes 0b11011101, 0b1
    assert pack.pack_bits(torch.tensor([5, 3, 7]), 3).tolist() == [0b11011101, 0b1]


def test_out_of_range_and_wrong_length_are_refused():
    with pytest.raises(ValueError, match="outside"):
        pack.pack_bits(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="expected 2"):
        pack.unpack_bits(torch.zeros(3, dtype=torch.uint8), 4, 4)
