"""How many pytest-xdist workers `make test` starts: one per usable core (engine.hardware.cores: affinity and
container quota), at most one per 4 GiB of memory (a worker holds minilm, smollm2 and the app's
caches at once: about 3 GiB at its peak), at least one.

    python3 tests/workers.py      # prints the count (2 on a 2-core, 24 GiB machine)
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.hardware.cores import usable_cores  # noqa: E402  (standard library only: no torch needed)

GIB_PER_WORKER = 4


def workers() -> int:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(usable_cores(), memory // (GIB_PER_WORKER * 2**30)))


if __name__ == "__main__":
    print(workers())
