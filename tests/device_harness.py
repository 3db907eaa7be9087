"""A pretend GPU for the tests: every op on it runs on the CPU, and mixing devices is refused.

A tensor on `fakegpu` (OnDevice) says it lives on device fakegpu:0 and keeps its values in an
ordinary CPU tensor, so every op computes real values. DeviceCheck, a dispatch mode, sees every
op and refuses one whose tensors live on more than one device, naming it, as CUDA would; what
CUDA allows passes (0-dim CPU tensors, copies between devices, CPU indices into a device
tensor). `on_device()` gives the device with the check on (tests/speed/test_device.py).
"""
import contextlib
import functools

import torch
from torch.utils._python_dispatch import TorchDispatchMode, return_and_correct_aliasing
from torch.utils._pytree import tree_flatten

FAKE = "fakegpu"

aten = torch.ops.aten
COPIES = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default, aten._copy_from_and_resize.default}
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


class DeviceMixing(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------
# The pretend device and the check
# ---------------------------------------------------------------------------------------


class OnDevice(torch.Tensor):
    """A tensor on the pretend device: its values are `host`, a CPU tensor."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, host):
        return torch.Tensor._make_wrapper_subclass(cls, host.shape, strides=host.stride(),
                                                   storage_offset=host.storage_offset(), dtype=host.dtype,
                                                   device=torch.device(FAKE, 0), requires_grad=host.requires_grad)

    def __init__(self, host):
        self.host = host

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})

    def tolist(self):  # a copy to the host, as from a GPU
        return self.host.tolist()

    def untyped_storage(self):  # its memory, which its views share, as a GPU tensor's: the host's
        return self.host.untyped_storage()

    def numpy(self, *, force=False):  # as from a GPU: refused
        raise TypeError(f"can't convert {self.device} device type tensor to numpy; copy it to the CPU first")

    def __repr__(self):
        return f"OnDevice({self.host!r})"


def _leaves(x) -> list:
    """The leaves of an op's arguments or results (nested lists, tuples and dicts)."""
    if isinstance(x, (list, tuple)):
        return [y for z in x for y in _leaves(z)]
    if isinstance(x, dict):
        return [y for z in x.values() for y in _leaves(z)]
    return [x]


def _map(fn, x):
    if isinstance(x, (list, tuple)):
        return type(x)(_map(fn, y) for y in x)
    if isinstance(x, dict):
        return {k: _map(fn, y) for k, y in x.items()}
    return fn(x)


@functools.cache
def _op(func) -> tuple[bool, bool, bool]:
    """(whether it decomposes into other ops, whether it returns an alias of an input, a view)."""
    composite = torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd")
    aliases = [r.alias_info for r in func._schema.returns if r.alias_info is not None]
    return composite, bool(aliases), any(not a.is_write for a in aliases)


def _devices(func, args, kwargs, tensors) -> set[str]:
    """The devices of an op's tensors that must agree: not CPU scalars, nor CPU indices."""
    if func in INDEXING:
        indices = {id(t) for t in _leaves(args[1]) if isinstance(t, torch.Tensor) and t.device.type == "cpu"}
        tensors = [t for t in tensors if id(t) not in indices]
    devices = {_name(t.device) for t in tensors if t.dim() or t.device.type != "cpu"}
    if kwargs.get("generator") is not None:  # a random op draws from a generator on its own device
        devices |= {_name(kwargs["generator"].device), _name(kwargs.get("device") or next(iter(devices), "cpu"))}
    return devices


def _name(device) -> str:
    d = torch.device(device)
    return "cpu" if d.type == "cpu" else f"{d.type}:{d.index or 0}"


def _host(t):
    return t.host if isinstance(t, OnDevice) else t


def _run(func, args, kwargs):
    composite, aliases, view = _op(func)
    if composite:
        with DeviceCheck():  # e.g. aten.to: check what it is made of
            return func.decompose(*args, **kwargs)
    tensors = [t for t in _leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    devices = _devices(func, args, kwargs, tensors)
    if len(devices) > 1 and func not in COPIES:
        raise DeviceMixing(f"{func} mixes devices: {', '.join(sorted(devices))}")
    if _real[0]:  # on the GPU: checked, then run as it is
        return func(*args, **kwargs)
    to = kwargs.get("device")
    if func is aten.copy_.default:
        fake = isinstance(args[0], OnDevice)
    elif to is not None:
        fake = torch.device(to).type == FAKE
    else:
        fake = any(isinstance(t, OnDevice) for t in tensors)
    if to is not None and fake:
        kwargs = {**kwargs, "device": torch.device("cpu")}
    out = func(*_map(_host, args), **_map(_host, kwargs))
    if not fake:
        return out
    # a view made in inference mode of a normal tensor is a normal tensor (it shares the
    # base's version counter); anything else made in inference mode is an inference tensor
    normal = view and isinstance(args[0], torch.Tensor) and not args[0].is_inference()
    with torch.inference_mode(False) if normal else contextlib.nullcontext():
        out = _map(lambda t: OnDevice(t) if isinstance(t, torch.Tensor) else t, out)
    return return_and_correct_aliasing(func, args, kwargs, out) if aliases else out


class DeviceCheck(TorchDispatchMode):
    """Refuses any op whose tensors live on more than one device; runs ops on the pretend device."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


_active = [False]  # inside on_device(FAKE): the pretend device is available
_real = [False]  # inside on_device("cuda"): ops run as they are, after the check


def _register_fake_device():
    """Make FAKE torch's PrivateUse1 device (once per process; a Python device guard, hooks and
    module). It reports itself available only inside `on_device`: outside, torch sees no
    accelerator."""
    if torch._C._get_privateuse1_backend_name() == FAKE:
        return
    from torch.utils import backend_registration as br

    class Hooks(br._DummyPrivateUse1Hook):
        def is_available(self):
            return _active[0]

    class Module(br._DummyBackendModule):
        def is_available(self):
            return _active[0]

        def device_count(self):
            return int(_active[0])

    br._setup_privateuseone_for_python_backend(FAKE, Module(), Hooks())


@contextlib.contextmanager
def threads(n: int):
    """torch on `n` threads, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def on_device(where: str = FAKE, n_threads: int = 1):
    """The device to run on, with the check on: the pretend one (FAKE; its ops on `n_threads` CPU
    threads, one by default: they are small and many, a thread pool would only add waiting) or
    the GPU ("cuda")."""
    if where == "cuda":
        _real[0] = True
        try:
            with DeviceCheck():
                yield torch.device("cuda", 0)
        finally:
            _real[0] = False
        return
    _register_fake_device()
    lift = torch._C._only_lift_cpu_tensors()
    torch._C._set_only_lift_cpu_tensors(True)  # torch.tensor(data, device=...) goes through .to(): seen
    _active[0] = True
    try:
        with threads(n_threads), DeviceCheck():
            yield torch.device(FAKE, 0)
    finally:
        _active[0] = False
        torch._C._set_only_lift_cpu_tensors(lift)


def _exact(device) -> bool:
    """The pretend device computes on the CPU: the same values as the CPU's, bit for bit."""
    return device.type == FAKE


def _same(out, ref, device):
    """`out` (computed on `device`) is there and, on the pretend device, equals `ref` (from the CPU)."""
    outs, refs = tree_flatten(out)[0], tree_flatten(ref)[0]
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        if isinstance(o, torch.Tensor):
            assert o.device == device, f"a result is on {o.device}, not {device}"
            assert not _exact(device) or (o.dtype == r.dtype and torch.equal(o.cpu(), r))
        else:
            assert not _exact(device) or o == r
