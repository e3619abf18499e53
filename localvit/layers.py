"""Building blocks shared by every LocalViT backbone.

Module and parameter names follow the official LocalViT code (`conv.{j}`, SE `fc.0`/`fc.2`,
ECA `conv`) so that official checkpoints load with `strict=True`.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from timm.layers import Mlp
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .spec import LayerSpec


class Hardswish(nn.Hardswish):
    """h-swish that overwrites its input when no gradient is recorded.

    Inside the locality FFN its input is always a fresh conv output, and skipping a new
    hidden-size buffer per activation is most of what inference speed there depends on
    on CPU (with the in-place SE gate and residual: about 40% of the FFN's time).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardswish(x, inplace=self.inplace or not torch.is_grad_enabled())


class ReLU6(nn.ReLU6):
    """ReLU6 that overwrites its input when no gradient is recorded (see `Hardswish`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x, inplace=self.inplace or not torch.is_grad_enabled())


_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu6": ReLU6, "hswish": Hardswish, "gelu": nn.GELU}


def make_activation(name: str) -> nn.Module:
    """`hswish` is the official `x * relu6(x + 3) / 6`, which torch implements natively."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"act={name!r} is invalid; accepted: {', '.join(_ACTIVATIONS)}") from None


class SqueezeExcite(nn.Module):
    """SE of LocalViT: the reduction ratio divides the hidden width, the gate is h-sigmoid.

    Without autograd the input (a fresh activation inside the FFN) is scaled in place.
    """

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        squeezed = channels // reduction
        if squeezed < 1:
            raise ValueError(f"se_ratio={reduction} is invalid; accepted: at most the hidden width {channels}")
        self.fc = nn.Sequential(
            nn.Linear(channels, squeezed), nn.ReLU(inplace=True), nn.Linear(squeezed, channels), nn.Hardsigmoid())

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x) if torch.is_grad_enabled() else x.mul_(self.gate(x))


def eca_kernel_size(channels: int) -> int:
    """ECA-Net's adaptive kernel: |(log2 C + 1) / 2| rounded down, then up to the next odd size."""
    t = int(abs((math.log(channels, 2) + 1) / 2))
    return t if t % 2 else t + 1


class EfficientChannelAttention(nn.Module):
    """ECA: a 1-D convolution across the pooled channels, sigmoid gate (in place without autograd, as SE)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = eca_kernel_size(channels)
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=k // 2, bias=False)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.adaptive_avg_pool2d(x, 1).flatten(1)[:, None, :]).sigmoid()[:, 0, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x) if torch.is_grad_enabled() else x.mul_(self.gate(x))


class LocalityFeedForward(nn.Module):
    """The locality FFN: an inverted residual on the 2-D token grid, residual inside.

    1x1 conv -> BN -> act, [k x k depth-wise conv -> BN -> act], [SE | ECA], 1x1 conv -> BN.
    Without the depth-wise conv (`ffn='conv'`) it is the paper's 1x1-conv FFN of Table I.
    """

    def __init__(self, dim: int, layer: LayerSpec) -> None:
        super().__init__()
        if layer.ffn == "mlp":
            raise ValueError("ffn='mlp' is invalid for LocalityFeedForward; accepted: 'conv', 'local'")
        hidden = layer.hidden_dim(dim)
        assert layer.act is not None  # LayerSpec resolves the default
        layers: list[nn.Module] = [
            nn.Conv2d(dim, hidden, 1, bias=False), nn.BatchNorm2d(hidden), make_activation(layer.act)]
        if layer.ffn == "local":
            k = layer.kernel
            assert k is not None  # LayerSpec resolves the default
            layers += [nn.Conv2d(hidden, hidden, k, padding=k // 2, groups=hidden, bias=False),
                       nn.BatchNorm2d(hidden), make_activation(layer.act)]
        if layer.attn == "se":
            assert layer.se_ratio is not None  # LayerSpec requires it with SE
            layers.append(SqueezeExcite(hidden, layer.se_ratio))
        elif layer.attn == "eca":
            layers.append(EfficientChannelAttention(hidden))
        layers += [nn.Conv2d(hidden, dim, 1, bias=False), nn.BatchNorm2d(dim)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if torch.is_grad_enabled() else y.add_(x)  # the conv output is fresh: reuse it

    def forward_tokens(self, x: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        """Run on the image tokens of `x` (B, prefix + H*W, C) on their grid; prefix tokens bypass it.

        The (B, N, C) -> (B, C, H, W) view is channels-last in memory, so no copy is made. Without
        autograd the residual sum is written straight into the output instead of concatenating
        the prefix tokens to it afterwards (a strided concatenation costs as much as two adds).
        """
        prefix, tokens = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
        batch, num_tokens, channels = tokens.shape
        height, width = grid
        if num_tokens != height * width:
            raise ValueError(f"{num_tokens} image tokens do not fit the {height}x{width} grid this block was built for")
        on_grid = tokens.transpose(1, 2).reshape(batch, channels, height, width)
        if torch.is_grad_enabled() or not num_prefix_tokens:
            y = self(on_grid).flatten(2).transpose(1, 2)
            return torch.cat([prefix, y], dim=1) if num_prefix_tokens else y
        out = torch.empty_like(x)
        out[:, :num_prefix_tokens] = prefix
        torch.add(tokens, self.conv(on_grid).flatten(2).transpose(1, 2), out=out[:, num_prefix_tokens:])
        return out


class FeedForwardBlock(nn.Module):
    """Base of the stage backbones' blocks: the second half is the spec's feed-forward design.

    `mlp`: pre-norm `norm2` + timm's `Mlp` (`fc1`/`fc2`) with DropPath; `conv`/`local`: the
    locality FFN `conv` on the image tokens of the block's grid, prefix tokens bypassing it,
    no norm and no DropPath (the official LocalViT blocks). Subclasses build their attention
    half and call `_build_feed_forward` and `_feed_forward`.
    """

    def _build_feed_forward(self, dim: int, layer: LayerSpec, norm_layer: Callable[[int], nn.Module],
                            grid_size: tuple[int, int], num_prefix_tokens: int = 0) -> None:
        self.grid_size = grid_size
        self.num_prefix_tokens = num_prefix_tokens
        if layer.ffn == "mlp":
            self.norm2 = norm_layer(dim)
            self.mlp = Mlp(dim, layer.hidden_dim(dim), act_layer=nn.GELU)
            self.conv = None
        else:
            self.conv = LocalityFeedForward(dim, layer)

    def _feed_forward(self, x: torch.Tensor, drop_path: nn.Module) -> torch.Tensor:
        if self.conv is None:
            return x + drop_path(self.mlp(self.norm2(x)))
        return self.conv.forward_tokens(x, self.grid_size, self.num_prefix_tokens)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution in a `Sequential` into it.

    Exact in eval mode (up to float rounding); the model is changed in place and put in
    eval mode, since folded statistics can no longer be updated by training.
    """
    model.eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                fused = fuse_conv_bn_eval(conv, bn)
                conv.weight, conv.bias = fused.weight, fused.bias
                setattr(module, bn_name, nn.Identity())
    return model


def _onednn_fusion_available() -> bool:
    """oneDNN convolutions with a fused activation: x86 builds of torch (the op inductor uses)."""
    try:
        return torch.backends.mkldnn.is_available() and not torch.ops.mkldnn._is_mkldnn_acl_supported() and bool(
            torch.ops.mkldnn._convolution_pointwise.default)
    except (AttributeError, RuntimeError):
        return False


_ONEDNN_FUSION = _onednn_fusion_available()

#: oneDNN post-op name, scalars and algorithm of each activation a convolution can be fused with.
_ONEDNN_ACTIVATIONS: dict[type[nn.Module], tuple[str, list[float], str]] = {
    Hardswish: ("hardswish", [], ""), ReLU6: ("hardtanh", [0.0, 6.0], ""), nn.GELU: ("gelu", [], "none")}


class ConvActivation(nn.Module):
    """A convolution and the activation after it; on CPU in fp32 without autograd one oneDNN
    kernel applies both, which saves a pass over the FFN's widest tensor. Elsewhere: conv, then act."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.act = conv, act
        self._post_op = _ONEDNN_ACTIVATIONS[type(act)]

    def _fusable(self, x: torch.Tensor) -> bool:
        return (_ONEDNN_FUSION and x.device.type == "cpu" and x.dtype == torch.float32
                and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fusable(x):
            return self.act(self.conv(x))
        conv = self.conv
        name, scalars, algorithm = self._post_op
        return torch.ops.mkldnn._convolution_pointwise(
            x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
            name, scalars, algorithm)


@torch.no_grad()
def optimize_for_inference(model: nn.Module) -> nn.Module:
    """The inference mode: `fold_batchnorm`, then each convolution and the activation that
    follows it in a `Sequential` become one `ConvActivation`. Exact up to float rounding."""
    fold_batchnorm(model)
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = [(name, child) for name, child in module.named_children() if not isinstance(child, nn.Identity)]
        for (conv_name, conv), (act_name, act) in zip(children, children[1:]):
            if (isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
                    and type(act) in _ONEDNN_ACTIVATIONS):
                setattr(module, conv_name, ConvActivation(conv, act))
                setattr(module, act_name, nn.Identity())
    return model
