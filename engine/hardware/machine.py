"""This machine: what it is, what it can do, and what the engine picks on it.

    describe()                 # CPU model, cores, threads, features, torch's build, kernels, GPUs
    header()                   # the same in one line, printed above every benchmark's figures
    native_bf16(device)        # whether bf16 matmuls run natively here
    runtime_dtype(device)      # the runtime's dtype: ("bf16" | "fp32", why)
    remembered(name, compute)  # a measurement of this machine, taken once and kept on disk
    forget()                   # drop those measurements (`speed --remeasure`)

Where a choice depends on the hardware (the runtime's dtype, a kernel, the threads) the engine
asks this module, and reports the answer with its reason. Features are read from the kernel
(/proc/cpuinfo's flags on x86-64, its Features on arm64) and from torch itself (its CPU
capability and oneDNN's bf16 check), so an emulated or limited ISA (`ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2`) is seen as the engine will run it. `EXPLORER_BF16=0` (or 1) overrides
the bf16 detection: a machine without native bf16 can be measured on one that has it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from pathlib import Path

import torch

# name -> the cpuinfo flags that show it (any of them)
FEATURES = {"AVX2": ("avx2",), "AVX-512": ("avx512f",), "AVX-512 BF16": ("avx512_bf16",),
            "AVX-512 VNNI": ("avx512_vnni",), "AVX-VNNI": ("avx_vnni",), "AMX": ("amx_bf16", "amx_tile"),
            "NEON": ("asimd", "neon"), "SVE": ("sve",), "arm BF16": ("bf16",)}


@functools.cache
def _cpuinfo() -> str:
    """/proc/cpuinfo, read once per process (the processor does not change under it)."""
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def cpu_model() -> str:
    """The processor's name as the kernel reports it ('Intel(R) Xeon(R) Processor', 'AMD EPYC
    7B13', ...), else platform's."""
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Hardware", "Model") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_features() -> list[str]:
    """The features of FEATURES this processor has, by name."""
    flags: set[str] = set()
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
            break
    return [name for name, any_of in FEATURES.items() if flags.intersection(any_of)]


def usable_cores() -> int:
    from engine.hardware.cores import usable_cores as cores

    return cores()


_THREADS_WHY = ["torch's default: the machine's cores"]


def threads_why() -> str:
    """Why torch runs the threads it runs (`pick_threads`, else torch's default)."""
    return _THREADS_WHY[0]


def pick_threads() -> str:
    """Set torch's threads to the cores this process may use (its CPU affinity and its container's
    quota: torch counts the machine's cores), unless OMP_NUM_THREADS says otherwise; says why."""
    if os.environ.get("OMP_NUM_THREADS"):
        why = "as OMP_NUM_THREADS asks"
    else:
        n = usable_cores()
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        why = "one per usable core"
    _THREADS_WHY[0] = why
    return why


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matmuls run natively: a CUDA GPU of compute capability 8.0 or more; on the
    CPU, what oneDNN reports (AVX-512 BF16, AMX or arm's BF16). `EXPLORER_BF16=0|1` overrides."""
    forced = os.environ.get("EXPLORER_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    mkldnn = getattr(torch.backends, "mkldnn", None)
    return bool(mkldnn and mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def runtime_dtype(device: torch.device | str = "cpu", asked: str = "auto") -> tuple[str, str]:
    """The dtype of the runtime's activations, 'bf16' or 'fp32', and why: `asked` when it is one of
    them; with 'auto', bf16 where it runs natively (half the bytes of fp32, at native speed), else
    fp32 (emulated bf16 is slower than fp32, and some kernels are slow with it)."""
    if asked in ("bf16", "fp32"):
        return asked, "asked for (--dtype)"
    device = torch.device(device)
    where = "this GPU" if device.type == "cuda" else "this CPU"
    if native_bf16(device):
        return "bf16", f"{where} has native bf16 matmuls"
    if os.environ.get("EXPLORER_BF16") == "0":
        return "fp32", "bf16 turned off (EXPLORER_BF16=0)"
    return "fp32", f"{where} has no native bf16 matmuls (bf16 would be emulated, slower than fp32)"


def gpus() -> list[dict]:
    if not torch.cuda.is_available():
        return []
    out = []
    for k in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(k)
        out.append({"index": k, "name": p.name, "memory_bytes": p.total_memory,
                    "compute_capability": f"{p.major}.{p.minor}", "bf16": torch.cuda.is_bf16_supported()})
    return out


def describe(device: torch.device | str | None = None) -> dict:
    """This machine, as `python -m engine info --json` prints it."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype, why = runtime_dtype(device)
    out = {"cpu": cpu_model(), "architecture": platform.machine(), "cores": os.cpu_count(),
           "usable_cores": usable_cores(), "threads": torch.get_num_threads(), "threads_why": threads_why(),
           "features": cpu_features(), "torch": torch.__version__,
           "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "cuda": torch.version.cuda, "native_bf16": native_bf16(device),
           "device": str(device), "runtime_dtype": dtype, "runtime_dtype_why": why, "gpus": gpus()}
    return out


def header(device: torch.device | str | None = None) -> str:
    """One line naming this machine, for the top of every benchmark's output."""
    d = describe(device)
    gpu = "; ".join(f"{g['name']} ({g['memory_bytes'] / 2**30:.0f} GiB)" for g in d["gpus"]) or "no GPU"
    return (f"machine: {d['cpu']} ({d['architecture']}), {d['usable_cores']} usable cores, {d['threads']} torch "
            f"threads; features {' '.join(d['features']) or 'none known'}; torch {d['torch']} "
            f"(CPU capability {d['torch_cpu_capability']}); native bf16: {'yes' if d['native_bf16'] else 'no'}; "
            f"{gpu}")


def fingerprint() -> str:
    """What a measurement of this machine depends on: the processor, its features as torch sees
    them, torch's version and the threads."""
    parts = [cpu_model(), ",".join(cpu_features()), torch.__version__, torch.backends.cpu.get_cpu_capability(),
             str(native_bf16("cpu")), str(torch.get_num_threads())]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _store() -> Path:
    """$EXPLORER_MACHINE_CACHE/<fingerprint>.json, else the cache folder's machine/."""
    root = os.environ.get("EXPLORER_MACHINE_CACHE")
    return (Path(root) if root else cache_dir() / "machine") / f"{fingerprint()}.json"


_KNOWN: dict[Path, dict] = {}  # the kept measurements, per store file, as read or written by this process


def forget() -> bool:
    """Drop what was measured of this machine (`remembered`), to measure it again: after a run on a
    busy machine, say. Whether there was anything to drop."""
    path = _store()
    _KNOWN.pop(path, None)
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def remembered(name: str, compute):
    """compute()'s result (JSON), measured once on this machine (its `fingerprint`) and kept in
    the cache folder (read once per process); a file that cannot be read or written is measured
    again, never an error."""
    path = _store()
    if path not in _KNOWN:
        try:
            _KNOWN[path] = json.loads(path.read_text())
        except (OSError, ValueError):
            _KNOWN[path] = {}
    known = _KNOWN[path]
    if name in known:
        return known[name]
    value = compute()
    known[name] = value
    try:
        try:  # what another process kept meanwhile, kept too
            known.update({k: v for k, v in json.loads(path.read_text()).items() if k not in known})
        except (OSError, ValueError):
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        tmp.replace(path)
    except OSError:
        pass
    return value


def cache_dir() -> Path:
    """This machine's cache folder (converted models, kept measurements): $COMPRESSION_EXPLORER_CACHE,
    else the XDG cache."""
    root = os.environ.get("COMPRESSION_EXPLORER_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "compression-explorer"
