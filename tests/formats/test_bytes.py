from engine.formats.bytes import LayerBytes, TensorBytes, quant_groups, tensor_bytes


def test_dense_fp16():
    assert tensor_bytes(10, 20, kept=200) == TensorBytes(400, 0, 0, "dense")


def test_quantized_dense_per_group_symmetric_and_asymmetric():
    # 256 x 300 at 4 bits, groups of 128 along the input: ceil(300/128) = 3 groups per row
    b = tensor_bytes(256, 300, kept=256 * 300, bits=4, group_size=128)
    assert b == TensorBytes(256 * 300 // 2, 2 * 256 * 3, 0, "dense")
    # asymmetric adds one 4-bit zero-point per group: 768 groups * 4 bits = 384 bytes
    b = tensor_bytes(256, 300, kept=256 * 300, bits=4, group_size=128, symmetric=False)
    assert b.scales == 1536 + 384
    # 3 bits packed across the whole tensor: 7 * 3 = 21 bits -> 3 bytes
    assert tensor_bytes(1, 7, kept=7, bits=3, granularity="tensor") == TensorBytes(3, 2, 0, "dense")
    assert quant_groups(8, 16, "channel", 128) == 8 and quant_groups(8, 16, "tensor", 4) == 1
    assert quant_groups(8, 16, "group", 128) == 8  # a group never exceeds the row


def test_sparse_formats_pick_the_cheapest():
    # 100 x 100 fp16 with 10% kept: CSR = 1000*2 + 1000*4 + 101*4 = 6404 < bitmask 1250 + 2000 = 3250?
    b = tensor_bytes(100, 100, kept=1000)
    assert b == TensorBytes(2000, 0, 1250, "bitmask")  # bitmask 3250 beats CSR 6404 and dense 20000
    # very sparse: 1% kept -> CSR 200 + 400 + 404 = 1004 beats bitmask 1250 + 200
    b = tensor_bytes(100, 100, kept=100)
    assert b == TensorBytes(200, 0, 404 + 400, "csr") and b.total == 1004
    # barely sparse at 4 bits: dense 5000 + scales beats bitmask 1250 + 4500
    b = tensor_bytes(100, 100, kept=9000, bits=4, granularity="channel")
    assert b == TensorBytes(5000, 200, 0, "dense")


def test_nm_metadata():
    # 2:4 on 64 x 64 fp16: 2048 kept values * 2 B + 2048 * 2 bits = 4096 + 512
    b = tensor_bytes(64, 64, kept=2048, nm=(2, 4))
    assert b == TensorBytes(4096, 0, 512, "2:4")
    # 1:8 at 8 bits: 512 kept * 1 B + 512 * 3 bits = 512 + 192
    b = tensor_bytes(64, 64, kept=512, bits=8, granularity="tensor", nm=(1, 8))
    assert b == TensorBytes(512, 2, 192, "1:8")


def test_low_rank_layer_totals_and_break_even():
    a = tensor_bytes(300, 50, kept=300 * 50)
    b = tensor_bytes(50, 200, kept=50 * 200)
    layer = LayerBytes("x", (300, 200), 50, (a, b))
    assert layer.original_bytes == 120_000
    assert layer.compressed_bytes == 2 * (300 * 50 + 50 * 200) == 50_000
    assert not layer.factors_exceed_dense
    assert LayerBytes("x", (300, 200), 121, (a, b)).factors_exceed_dense  # 121 * 500 > 60000
    assert not LayerBytes("x", (300, 200), 120, (a, b)).factors_exceed_dense  # exactly break-even
    assert layer.format == "low-rank(dense)"


def test_peak_measures_memory_allocated_inside():
    import mmap

    from engine.hardware.peak import Peak

    size = 64 * 2**20
    with Peak("cpu") as peak:
        # fresh pages from the kernel, each written so it is resident (a malloc of this size could
        # reuse pages the long-running test process already holds)
        block = mmap.mmap(-1, size)
        for i in range(0, size, mmap.PAGESIZE):
            block[i] = 1
        block.close()
    assert peak.to_dict()["added_bytes"] >= 60 * 2**20
    with Peak("cpu") as after:  # the 64 MiB are unmapped; the high-water mark is reset at the start
        pass
    assert after.to_dict()["added_bytes"] < 60 * 2**20
