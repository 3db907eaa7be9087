"""This machine: what it is, what it can do, and what it has measured.

    machine   CPU model and features, native bf16, the runtime dtype and threads they lead to,
              the GPUs, the cache folder, measurements kept per machine (`python -m engine info`)
    cores     the cores this process may use (affinity and container quota)
    peak      the peak memory of a piece of work, measured
"""
