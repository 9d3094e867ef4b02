"""Run torch code on the ``meta`` device as if it were an accelerator: CUDA's device checks
without a GPU.

meta tensors have shapes and no data. Their kernels take a CPU generator and some of them mix
devices (``torch.mm(meta, cpu)`` runs), where CUDA refuses both ("Expected a 'cuda' device type
for generator"); and reading one back (``float``, ``item``, ``.cpu()``) raises. ``MetaAsAccelerator``
is a dispatch mode that refuses the first two as CUDA does and answers host reads of meta tensors
with placeholders (scalars 1, copies zeros), counting them, so a solver runs to its end on meta:
its numbers mean nothing, its device handling is checked op by op.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
# Ops that move data between devices: mixing devices is their purpose.
_COPIES = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default, aten._copy_from_and_resize.default}


def _devices(args, kwargs) -> set[str]:
    """Device types of an op's tensors and of its ``device`` argument; a 0-dim CPU tensor is left
    out, as CUDA takes it as a scalar beside device tensors."""
    tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    found = {t.device.type for t in tensors if t.dim() > 0 or t.device.type != "cpu"}
    if kwargs.get("device") is not None:
        found.add(torch.device(kwargs["device"]).type)
    return found


class MetaAsAccelerator(TorchDispatchMode):
    """``reads``: the host reads of meta tensors so far, by kind ("scalar": item/float/bool,
    "copy": a copy to the CPU)."""

    def __init__(self):
        super().__init__()
        self.reads = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = _devices(args, kwargs) or {"cpu"}  # CPU scalars, or a factory without device=
        generator = kwargs.get("generator")
        if generator is not None and devices != {generator.device.type}:
            device = sorted(devices - {generator.device.type})[0]
            raise RuntimeError(f"Expected a '{device}' device type for generator but found '{generator.device.type}'")
        if func not in _COPIES and len(devices) > 1:
            raise RuntimeError(f"{func}: expected all tensors to be on the same device, found {sorted(devices)}")
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if source is not None and source.device.type == "meta":
            if func is aten._local_scalar_dense.default:
                self.reads["scalar"] += 1
                return True if source.dtype == torch.bool else 1 if not source.dtype.is_floating_point else 1.0
            if func is aten._to_copy.default and torch.device(kwargs.get("device") or "meta").type == "cpu":
                self.reads["copy"] += 1
                return torch.zeros(source.shape, dtype=kwargs.get("dtype") or source.dtype)
        return func(*args, **kwargs)
