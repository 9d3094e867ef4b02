"""Published (pretrained) backbones: reading state dicts without running code, timm/torchvision weights, offline hubs."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from tunnelscope.models.build import build_model, build_python_model
from tunnelscope.registry import IMAGENET_MEAN, IMAGENET_STD, parse_python_arch
from tunnelscope.study.preprocessing import own_preprocessing


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a PyTorch checkpoint, loaded without running code.

    Wrappers ``{"state_dict": ...}`` / ``{"model": ...}`` and DistributedDataParallel's
    ``module.`` prefix are unwrapped, as found in most released checkpoints.
    """
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types for unreadable files
        raise ValueError(f"{path}: not a readable safetensors file or PyTorch state dict ({exc})") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _classifier_prefix(model: nn.Module) -> str | None:
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] + "." if linears else None


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """Load ``state`` into ``model`` or say in one line why it does not fit.

    Only the classifier may be missing (self-supervised checkpoints have none); every other
    parameter and buffer must be present with the model's shape, and nothing may be left over.
    """
    own = model.state_dict()
    head = _classifier_prefix(model)
    missing = [k for k in own if k not in state and not (head and k.startswith(head))]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    problems = []
    if wrong:
        hint = " (num_classes must match the checkpoint's classifier)" if head and wrong[0].startswith(head) else ""
        problems.append(f"{len(wrong)} shape mismatches, first: {wrong[0]}{hint}")
    if missing:
        problems.append(f"{len(missing)} missing, first: {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected, first: {unexpected[0]}")
    if problems:
        raise ValueError(f"{source} does not fit {arch}: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)


def load_pretrained(spec: dict, resolution: int, key: str = "") -> nn.Module:
    """``spec['arch']`` with published weights: a local file, a local Hugging Face cache, or
    (only with ``download: true``) a download through timm or torchvision. A ``python:`` model
    is its function called with the entry's ``kwargs`` as they are, then given its weights file
    (``key``: the config key its build errors name)."""
    arch = spec["arch"]
    if spec.get("weights"):
        if parse_python_arch(arch) is not None:
            model = build_python_model(arch, spec.get("kwargs", {}), key)
        else:
            model = build_model(arch, spec["num_classes"], 1.0, resolution)
        state = {
            k: v
            for k, v in read_state_dict(spec["weights"]).items()
            if not k.startswith(tuple(spec.get("ignore_prefixes", ())))
        }
        load_weights(model, state, spec["weights"], arch)
        return model.eval()
    name = arch.split("/", 1)[1]
    if arch.startswith("timm/"):
        import timm

        def create(**size):
            return timm.create_model(
                name, pretrained=True, num_classes=spec["num_classes"], cache_dir=spec.get("hf_cache"), **size
            )

        try:
            with _hub_offline(not spec.get("download")):
                try:
                    return create(img_size=resolution).eval()  # transformers: positions for this size
                except TypeError:
                    return create().eval()
        except Exception as exc:  # hub and file errors come in many types
            where = spec.get("hf_cache") or "the default Hugging Face cache"
            raise ValueError(f"{arch}: no weights found in {where} ({type(exc).__name__}: {exc})") from exc
    import torchvision

    return torchvision.models.get_model(name, weights="DEFAULT").eval()


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Inside, Hugging Face hub requests fail at once and files come from the cache only.

    huggingface_hub reads this flag at call time, so unlike the HF_HUB_OFFLINE environment
    variable it holds even when the library was imported before.
    """
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def model_preprocessing(model: nn.Module, arch: str) -> dict:
    """The normalisation, interpolation, crop and input size a published model was evaluated
    with: timm's ``resolve_model_data_config`` of the loaded model, torchvision's DEFAULT weights'
    ``transforms()``. A ``python:`` model declares none: ImageNet's mean and std, and None for the
    rest."""
    if parse_python_arch(arch) is not None:
        return {
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "interpolation": None,
            "crop_pct": None,
            "resolution": None,
        }
    if arch.startswith("timm/"):
        from timm.data import resolve_model_data_config

        data = resolve_model_data_config(model)
        return {
            "mean": [float(v) for v in data["mean"]],
            "std": [float(v) for v in data["std"]],
            "interpolation": data["interpolation"],
            "crop_pct": round(float(data["crop_pct"]), 4),
            "resolution": int(data["input_size"][-1]),
        }
    own = own_preprocessing(arch)
    return {k: own[k] for k in ("mean", "std", "interpolation", "crop_pct", "resolution")}
