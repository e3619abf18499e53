"""T2T-ViT-7 and LocalViT-T2T, re-implemented on timm 1.0 with per-block designs.

T2T-ViT ("Tokens-to-Token ViT", Yuan et al., ICCV 2021) re-tokenises the image with three
soft splits (unfolds 7/4, 3/2, 3/2); after each of the first two a one-head performer
block (linear attention through positive random features) mixes the tokens. Then a plain
ViT encoder with a fixed sinusoid position embedding. LocalViT-T2T puts the locality FFN in
the encoder blocks and in both performer blocks ("locality also in the tokens-to-token
module"). Keys are the official ones (`tokens_to_token.attention{1,2}`, `blocks.{i}`); the
performer's random projection `w` and the sinusoid `pos_embed` are frozen parameters there,
so they are here too. The official LocalViT-T2T splits off a hard-coded 196 tokens and only
runs at 224; here every block knows its grid.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import Attention
from torch import nn

from .backbones import STAGE_PAPER_SPECS
from .layers import FeedForwardBlock, LocalityFeedForward
from .spec import ArchSpec, LayerSpec
from .stages import StageBackbone, drop_path_rates, stage_cfg

__all__ = ["T2TBlock", "TokenPerformer", "TokensToToken", "TokensToTokenViT", "sinusoid_position_embedding"]

KERNEL_RATIO = 0.5  # random features per performer channel
SPLITS = ((7, 4, 2), (3, 2, 1), (3, 2, 1))  # (kernel, stride, padding) of the three soft splits


def sinusoid_position_embedding(num_positions: int, dim: int) -> torch.Tensor:
    """(1, positions, dim) table: sin on even channels, cos on odd, wavelengths 10000^(2i/dim)."""
    positions = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponents = 2 * torch.div(torch.arange(dim), 2, rounding_mode="floor") / dim
    angles = positions / torch.pow(10000.0, exponents.to(torch.float64))[None, :]
    table = torch.where(torch.arange(dim) % 2 == 0, torch.sin(angles), torch.cos(angles))
    return table.float()[None]


class TokenPerformer(nn.Module):
    """One-head performer block of the T2T module; its FFN is the spec's design.

    Attention is linear in the token count: softmax(q k^T) is approximated by
    phi(q) phi(k)^T with positive random features phi(x) = exp(w x - |x|^2 / 2) / sqrt(m).
    Its values skip over the attention (the T2T residual), since the width changes. An
    `mlp` FFN is pre-norm Linear-GELU-Linear (`norm2`, `mlp.0`, `mlp.2`); a locality FFN runs
    on the token grid without a norm, `norm2` staying as an unused parameter as officially.
    """

    def __init__(self, in_dim: int, dim: int, layer: LayerSpec, grid_size: tuple[int, int]) -> None:
        super().__init__()
        self.dim = dim
        self.grid_size = grid_size
        self.kqv = nn.Linear(in_dim, 3 * dim)
        self.dp = nn.Dropout(0.1)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(in_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.epsilon = 1e-8
        if layer.ffn == "mlp":
            hidden = layer.hidden_dim(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(0.1))
            self.conv = None
        else:
            self.conv = LocalityFeedForward(dim, layer)
        self.num_features = int(dim * KERNEL_RATIO)
        self.w = nn.Parameter(nn.init.orthogonal_(torch.empty(self.num_features, dim)) * math.sqrt(self.num_features),
                              requires_grad=False)

    def random_features(self, x: torch.Tensor) -> torch.Tensor:
        half_sq_norm = (x * x).sum(dim=-1, keepdim=True) / 2
        projected = torch.einsum("bti,mi->btm", x.float(), self.w)
        return torch.exp(projected - half_sq_norm) / math.sqrt(self.num_features)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = torch.split(self.kqv(x), self.dim, dim=-1)
        k_features, q_features = self.random_features(k), self.random_features(q)
        normaliser = torch.einsum("bti,bi->bt", q_features, k_features.sum(dim=1)).unsqueeze(2)
        kv = torch.einsum("bin,bim->bnm", v.float(), k_features)
        y = torch.einsum("bti,bni->btn", q_features, kv) / (normaliser + self.epsilon)
        return v + self.dp(self.proj(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(self.norm1(x))
        if self.conv is None:
            return x + self.mlp(self.norm2(x))
        return self.conv.forward_tokens(x, self.grid_size, num_prefix_tokens=0)


class TokensToToken(nn.Module):
    """Soft split, performer, re-grid; twice; a last soft split and a linear projection."""

    soft_split0: nn.Unfold
    soft_split1: nn.Unfold
    soft_split2: nn.Unfold

    def __init__(self, in_chans: int, token_dim: int, embed_dim: int, layers: tuple[LayerSpec, LayerSpec],
                 sides: tuple[int, int, int]) -> None:
        super().__init__()
        self.sides = sides
        for i, (kernel, stride, padding) in enumerate(SPLITS):
            self.add_module(f"soft_split{i}", nn.Unfold(kernel, stride=stride, padding=padding))
        self.attention1 = TokenPerformer(in_chans * 7 * 7, token_dim, layers[0], (sides[0], sides[0]))
        self.attention2 = TokenPerformer(token_dim * 3 * 3, token_dim, layers[1], (sides[1], sides[1]))
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention1(self.soft_split0(x).transpose(1, 2))
        x = self.soft_split1(x.transpose(1, 2).unflatten(2, (self.sides[0], self.sides[0]))).transpose(1, 2)
        x = self.attention2(x)
        x = self.soft_split2(x.transpose(1, 2).unflatten(2, (self.sides[1], self.sides[1]))).transpose(1, 2)
        return self.project(x)


class T2TBlock(FeedForwardBlock):
    """Encoder block: pre-norm attention (no qkv bias), then the spec's FFN; the class token bypasses locality."""

    def __init__(self, dim: int, num_heads: int, layer: LayerSpec, grid_size: tuple[int, int],
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self._build_feed_forward(dim, layer, nn.LayerNorm, grid_size, num_prefix_tokens=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return self._feed_forward(x, self.drop_path)


class TokensToTokenViT(StageBackbone):
    """T2T-ViT whose token blocks and encoder blocks follow the `LayerSpec`s of a `t2t_*` spec."""

    family = "t2t"

    def __init__(self, spec: ArchSpec | dict | str, **kwargs: Any) -> None:
        super().__init__(spec, kwargs)
        preset, spec = self.preset, self.spec
        token_dim, dim, heads = preset.dims[0], preset.dims[2], preset.num_heads[2]
        sides = (self.geometry[0].grid, self.geometry[1].grid, self.geometry[2].grid)
        self.tokens_to_token = TokensToToken(spec.in_chans, token_dim, dim, (spec.layers[0], spec.layers[1]), sides)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(sinusoid_position_embedding(sides[2] ** 2 + 1, dim), requires_grad=False)
        rates = drop_path_rates(spec)[2:]
        self.blocks = nn.ModuleList([T2TBlock(dim, heads, layer, (sides[2], sides[2]), rate)
                                     for layer, rate in zip(spec.layers[2:], rates)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, spec.num_classes) if spec.num_classes > 0 else nn.Identity()
        trunc_normal_(self.cls_token, std=0.02)
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokens_to_token(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def _create(variant: str, spec: ArchSpec, pretrained: bool = False, **kwargs: Any) -> TokensToTokenViT:
    return build_model_with_cfg(TokensToTokenViT, variant, pretrained, spec=spec, **kwargs)


default_cfgs = generate_default_cfgs({
    f"{name}.untrained": stage_cfg("tokens_to_token.project") for name in ("t2t_vit_7", "localvit_T2t_conv7")})


@register_model
def t2t_vit_7(pretrained: bool = False, **kwargs: Any) -> TokensToTokenViT:
    """T2T-ViT-7 (performer tokens-to-token), official keys. 4.31M params (frozen w and pos_embed included)."""
    return _create("t2t_vit_7", STAGE_PAPER_SPECS["t2t_vit_7"], pretrained, **kwargs)


@register_model
def localvit_T2t_conv7(pretrained: bool = False, **kwargs: Any) -> TokensToTokenViT:  # noqa: N802 (official name)
    """LocalViT-T2T: locality FFN in the encoder (h-swish, SE r=128) and T2T blocks. 4.39M params."""
    return _create("localvit_T2t_conv7", STAGE_PAPER_SPECS["localvit_T2t_conv7"], pretrained, **kwargs)
