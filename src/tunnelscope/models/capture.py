"""Hooks on the probe points that pool each captured map on the device during a forward pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunnelscope.models.points import ProbePoint
from tunnelscope.registry import POOLINGS


def pool(t: torch.Tensor, pooling: str, prefix_tokens: int = 0) -> torch.Tensor:
    """Pool one captured tensor to a vector per sample.

    CNN maps (N, C, H, W): ``avgKxK`` = adaptive average to KxK then flatten (maps already at
    most KxK are flattened as they are, as in the paper); ``token_mean`` = global average.
    Token sequences (N, T, D): ``cls`` = the first (class) token; any other pooling = mean over
    the patch tokens (prefix tokens excluded).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; known: {', '.join(POOLINGS)}")
    if t.ndim == 4:
        if pooling == "cls":
            raise ValueError("pooling 'cls' needs a token sequence, got a feature map")
        k = 1 if pooling == "token_mean" else int(pooling[3])
        if t.shape[-2] <= k and t.shape[-1] <= k:
            return t.flatten(1)
        return F.adaptive_avg_pool2d(t, k).flatten(1)
    if t.ndim == 3:
        if pooling == "cls":
            if prefix_tokens < 1:
                raise ValueError("pooling 'cls' needs a model with a class token")
            return t[:, 0]
        return t[:, prefix_tokens:].mean(dim=1)
    if t.ndim == 2:
        return t
    raise ValueError(f"cannot pool a tensor of shape {tuple(t.shape)}")


class LayerCapture:
    """Context manager: hooks on the probe points collect pooled tensors of each forward.

    ``batch`` maps (probe index, pooling) to the pooled tensor; with ``poolings=()`` the raw
    tensors are kept instead (shape inspection).
    """

    def __init__(self, model: torch.nn.Module, points: list[ProbePoint], poolings=("avg2x2",)):
        self.model, self.points, self.poolings = model, points, tuple(poolings)
        self.batch: dict = {}
        self._fired: set[tuple[str, str]] = set()  # (module, side) already captured this forward
        self._handles = []

    def __enter__(self):
        modules = dict(self.model.named_modules())
        by_module: dict[str, dict[str, ProbePoint]] = {}
        for point in self.points:
            for name in (point.name, point.post):
                if name and name not in modules:
                    raise KeyError(f"probe point {point.index}: {name!r} is not a module of the model")
            by_module.setdefault(point.name, {})[point.side] = point
        # One hook per module and side; a module that runs several times per forward (a reused
        # module; no built-in or enumerated probe point is one) is captured at its first call.
        for name, wanted in by_module.items():
            module = modules[name]
            for side in wanted:
                if side == "output":
                    hook = module.register_forward_hook(
                        lambda m, args, out, n=name, w=wanted: self._on_call(n, w, "output", out)
                    )
                else:
                    hook = module.register_forward_pre_hook(
                        lambda m, args, n=name, w=wanted: self._on_call(n, w, "input", args[0])
                    )
                self._handles.append(hook)
        self._post = {p.post: modules[p.post] for p in self.points if p.post}
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _on_call(self, name: str, wanted: dict, side: str, tensor):
        if (name, side) not in self._fired:
            self._fired.add((name, side))
            self._store(wanted[side], tensor)

    def _store(self, point: ProbePoint, tensor: torch.Tensor):
        if isinstance(tensor, (tuple, list)):
            tensor = tensor[0]
        tensor = tensor.detach()
        if point.post:
            tensor = self._post[point.post](tensor)
        if not self.poolings:
            self.batch[(point.index, None)] = tensor.clone()
        # Pool (and so copy) at once: a later in-place op cannot change what was captured.
        for pooling in self.poolings:
            self.batch[(point.index, pooling)] = pool(tensor, pooling, point.prefix_tokens).float()

    def take(self) -> dict:
        fired = {index for index, _ in self.batch}
        missing = [p.index for p in self.points if p.index not in fired]
        if missing:
            raise RuntimeError(f"probe points {missing} did not run in the forward pass")
        out, self.batch = self.batch, {}
        self._fired.clear()
        return out


@torch.no_grad()
def layer_shapes(model: torch.nn.Module, points: list[ProbePoint], resolution: int) -> dict[int, tuple]:
    """Per probe index, the captured tensor's shape for one image (no batch dim)."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with LayerCapture(model, points, poolings=()) as capture:
            model(torch.zeros(1, 3, resolution, resolution, device=device))
            return {index: tuple(t.shape[1:]) for (index, _), t in capture.take().items()}
    finally:
        model.train(was_training)


def pooled_dims(shapes: dict[int, tuple], points: list[ProbePoint], pooling: str) -> list[int]:
    """Per probe point, the length of its vector under ``pooling``, from ``layer_shapes``."""
    return [int(pool(torch.zeros((1, *shapes[p.index])), pooling, p.prefix_tokens).shape[1]) for p in points]


@torch.no_grad()
def _trace(model: torch.nn.Module, names: list[str], resolution: int) -> dict[str, list]:
    """One eval-mode forward of a blank image with a hook on each module ``names``: ``{name:
    [calls, output shape of its first call]}`` for the modules that ran, in the order they first
    ran (shape without the batch dim; the first tensor of a tuple output; None for no tensor)."""
    ran: dict[str, list] = {}

    def record(name, output):
        if isinstance(output, (tuple, list)) and output:
            output = output[0]
        entry = ran.setdefault(name, [0, tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None])
        entry[0] += 1

    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda m, args, out, n=n: record(n, out)) for n in names]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, resolution, resolution, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return ran


def module_output_shapes(model: torch.nn.Module, resolution: int) -> dict[str, tuple | None]:
    """Every named module (``named_modules()`` order) with its output's shape for one image, None
    for a module the forward does not run. What ``tunnelscope layers --all-modules`` lists: any of
    these names may be a probe point."""
    names = [name for name, _ in model.named_modules() if name]
    ran = _trace(model, names, resolution)
    return {name: ran[name][1] if name in ran else None for name in names}


def forward_order(model: torch.nn.Module, names: list[str], resolution: int) -> tuple[list[str], dict[str, int]]:
    """``names`` (modules of ``model``) in the order a forward pass first runs them (modules that
    do not run are left out), and how many times each ran."""
    ran = _trace(model, names, resolution)
    return list(ran), {name: ran[name][0] if name in ran else 0 for name in names}
