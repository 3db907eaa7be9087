"""How fast it runs: the compressed model on real kernels.

    kernels   a stored matrix on a kernel (int8, int4, CSR, 2:4, dense); several joined into one
    choosing  which kernel a stored matrix gets, and why
    probes    which kernels work on this machine
    tuning    each kernel timed against the dense product here: the faster one runs
    runtime   the runtime model built from a workspace's stored layers
    lean      the lean decode path: the Llama layouts' forward written out over the runtime's kernels
    anchor    llama.cpp timed on a GGUF file beside the runtime
    roofline  bounds from exact bytes and FLOPs, and this machine's bandwidth and matmul rate
    measure   what `python -m engine speed` measures and reports
    bench     the engine's own speed against the naive way (`python -m engine bench`)
"""
