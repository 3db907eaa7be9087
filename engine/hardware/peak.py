"""Peak memory of a piece of work, measured: CUDA's peak allocated bytes on a GPU, the process's
resident set high-water mark (Linux VmHWM, reset at the start through /proc/self/clear_refs) on
the CPU.

    with Peak(device) as peak:
        work.evaluate()
    peak.to_dict()  # {'measure': ..., 'start_bytes': ..., 'peak_bytes': ...}
"""
from __future__ import annotations

import torch


def _status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


class Peak:
    """A context manager measuring the peak memory of what runs inside it on `device`."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.start = self.peak = None
        self.measure = None

    def __enter__(self) -> "Peak":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            self.measure = "CUDA peak allocated bytes (torch.cuda.max_memory_allocated)"
        else:
            reset = _reset_rss_peak()
            self.start = _status("VmRSS")
            self.measure = ("process resident set peak (VmHWM)" if reset else
                            "process resident set peak since the process started (VmHWM; could not be reset)")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = _status("VmHWM")

    def to_dict(self) -> dict | None:
        """None where the platform reports no figure (the CPU outside Linux)."""
        if self.peak is None:
            return None
        return {"device": str(self.device), "measure": self.measure, "start_bytes": self.start,
                "peak_bytes": self.peak, "added_bytes": self.peak - self.start}
