"""The shipped list of hardware (assets/hardware.json): published memory bandwidth and bf16 matmul
throughput of GPUs, CPUs, phones, boards and laptops, each with its source; for the small devices
their memory and, where published, llama.cpp's measured decode there."""
from __future__ import annotations

import json
from pathlib import Path

HARDWARE_FILE = Path(__file__).resolve().parents[2] / "assets" / "hardware.json"


def devices() -> list[dict]:
    """Each device: name, kind, bandwidth_bytes_per_s, bf16_flops_per_s (None for CPUs), source; a
    phone, board or laptop also memory_bytes and, where published, anchor (llama.cpp measured there)."""
    return json.loads(HARDWARE_FILE.read_text())["devices"]


def small_devices() -> list[dict]:
    """The devices that carry their memory: phones, boards and laptops."""
    return [d for d in devices() if "memory_bytes" in d]
