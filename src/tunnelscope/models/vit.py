"""The paper's ViT-T/-T+ (patch 8, width 192, no class token, sin-cos positions); probe = each block output through the final LayerNorm."""

from __future__ import annotations

from functools import partial

from torch import nn

from tunnelscope.models.points import ProbePoint

_VIT_DEPTH = {"vit-t": 12, "vit-t-plus": 18}


def _paper_vit(depth: int, num_classes: int, resolution: int, width: float = 1.0, drop_path: float = 0.1) -> nn.Module:
    from timm.layers import build_sincos2d_pos_embed
    from timm.models.vision_transformer import VisionTransformer

    heads = 3
    dim = heads * max(1, round(64 * width))  # width scales the head dim, keeping 3 heads
    if resolution % 8:
        raise ValueError(f"ViT with patch 8 needs a resolution divisible by 8, got {resolution}")
    model = VisionTransformer(
        img_size=resolution,
        patch_size=8,
        num_classes=num_classes,
        global_pool="avg",
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        class_token=False,
        fc_norm=False,  # final LayerNorm on every token, then the mean, as the papers' ViTs
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        drop_path_rate=drop_path,
    )
    # Fixed 2-D sin-cos positions: a buffer, so it is neither trained nor counted as a parameter.
    grid = resolution // 8
    del model.pos_embed
    model.register_buffer("pos_embed", build_sincos2d_pos_embed([grid, grid], dim).unsqueeze(0), persistent=False)
    return model


def _vit_probe_points(model: nn.Module) -> list[ProbePoint]:
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    return [
        ProbePoint(i + 1, f"blocks.{i}", "output", post="norm", prefix_tokens=prefix) for i in range(len(model.blocks))
    ]


def _build(arch: str):
    def build(num_classes: int, width: float, resolution: int, drop_path: float) -> nn.Module:
        model = _paper_vit(_VIT_DEPTH[arch], num_classes, resolution, width, drop_path)
        model.tunnelscope_arch = arch  # a timm VisionTransformer: probe_points recognises it by this
        return model

    return build


# arch name -> builder(num_classes, width, resolution, drop_path); models.build collects these.
BUILDERS = {arch: _build(arch) for arch in _VIT_DEPTH}
