"""A weight-sharing supernet: one set of weights that holds every per-layer design of a space.

A subnet is run as the very model `build_model(spec)` builds, with its parameters and
BatchNorm statistics cut out of the supernet's tensors (`torch.func.functional_call`). So a
subnet's outputs, parameter count and state_dict keys are the stand-alone model's by
construction, and `extract(spec)` is `build_model(spec)` carrying copies of those weights.
Gradients flow through the cuts into the shared tensors.

What is shared (each cut is a slice of the largest tensor of its kind):

- patch embedding, tokens, final norm, head; per block `norm1` and the attention: 3 or 4
  heads split the same qkv and proj weights (heads do not change their shapes);
- per block, one branch per FFN type (DeiT MLP, 1x1-conv FFN, locality FFN): gamma takes
  the leading hidden channels, SE the leading squeezed channels, a smaller depth-wise or
  ECA kernel the centre of the largest one;
- BatchNorm affine parameters and running statistics, sliced like their channels. The
  statistics then mix many subnets: `recalibrate_bn` a subnet before evaluating it.

The supernet works at its own geometry (width, depth, resolution, classes): the proxy
projection of a space's specs, which `proxy.supernet.space_supernet` makes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence, cast

import torch
from timm.layers import Mlp, PatchEmbed, trunc_normal_
from timm.models import named_apply
from timm.models.vision_transformer import Attention, init_weights_vit_timm
from torch import nn
from torch.func import functional_call

from .builder import build_model
from .layers import EfficientChannelAttention, SqueezeExcite, eca_kernel_size
from .spec import ArchSpec, LayerSpec

__all__ = ["BranchCaps", "Supernet", "recalibrate_bn"]

_GLOBAL_FIELDS = ("embed_dim", "depth", "img_size", "patch_size", "in_chans", "num_classes", "backbone")


@dataclass(frozen=True)
class BranchCaps:
    """The largest design one FFN branch of a block holds (at the supernet's width)."""

    hidden: int
    kernel: int | None = None       # depth-wise kernel (locality FFN only)
    se_width: int | None = None     # SE squeezed channels, when some design has SE
    eca_kernel: int | None = None   # ECA kernel, when some design has ECA

    @classmethod
    def of(cls, dim: int, layers: Iterable[LayerSpec]) -> BranchCaps:
        layers = list(layers)
        hidden = [x.hidden_dim(dim) for x in layers]
        se = [x.hidden_dim(dim) // x.se_ratio for x in layers if x.se_ratio is not None]  # the SE designs
        eca = [eca_kernel_size(x.hidden_dim(dim)) for x in layers if x.attn == "eca"]
        kernels = [x.kernel for x in layers if x.kernel is not None]
        return cls(max(hidden), max(kernels, default=None), max(se, default=None), max(eca, default=None))

    def why_not(self, dim: int, layer: LayerSpec) -> str | None:
        """None when the branch holds `layer`, else what it lacks."""
        hidden = layer.hidden_dim(dim)
        if hidden > self.hidden:
            return f"gamma={layer.gamma} needs {hidden} hidden channels, the supernet holds {self.hidden}"
        if layer.kernel is not None and layer.kernel > (self.kernel or 0):
            return f"kernel={layer.kernel} is larger than the supernet's {self.kernel}"
        if layer.se_ratio is not None and hidden // layer.se_ratio > (self.se_width or 0):
            return f"se_ratio={layer.se_ratio} needs {hidden // layer.se_ratio} SE channels, the supernet holds " \
                   f"{self.se_width or 0}"
        if layer.attn == "eca" and eca_kernel_size(hidden) > (self.eca_kernel or 0):
            return f"attn='eca' needs an ECA kernel of {eca_kernel_size(hidden)}, the supernet holds " \
                   f"{self.eca_kernel or 'none'}"
        return None


class _SharedSqueezeExcite(SqueezeExcite):
    """SE weights of `channels` x `squeezed` (the official module takes a ratio instead)."""

    def __init__(self, channels: int, squeezed: int) -> None:
        nn.Module.__init__(self)
        self.fc = nn.Sequential(
            nn.Linear(channels, squeezed), nn.ReLU(inplace=True), nn.Linear(squeezed, channels), nn.Hardsigmoid())


class _SharedECA(EfficientChannelAttention):
    """ECA weights with a given kernel (the official module derives it from the channels)."""

    def __init__(self, kernel: int) -> None:
        nn.Module.__init__(self)
        self.conv = nn.Conv1d(1, 1, kernel_size=kernel, padding=kernel // 2, bias=False)


class _SharedLocality(nn.Module):
    """The weights of a 2-D FFN branch (`conv` or `local`) at its largest design."""

    def __init__(self, dim: int, caps: BranchCaps) -> None:
        super().__init__()
        h = caps.hidden
        self.pw1, self.bn1 = nn.Conv2d(dim, h, 1, bias=False), nn.BatchNorm2d(h)
        if caps.kernel is not None:
            k = caps.kernel
            self.dw, self.bn2 = nn.Conv2d(h, h, k, padding=k // 2, groups=h, bias=False), nn.BatchNorm2d(h)
        if caps.se_width is not None:
            self.se = _SharedSqueezeExcite(h, caps.se_width)
        if caps.eca_kernel is not None:
            self.eca = _SharedECA(caps.eca_kernel)
        self.pw2, self.bn3 = nn.Conv2d(h, dim, 1, bias=False), nn.BatchNorm2d(dim)


class _SharedBlock(nn.Module):
    """One block's weights: `norm1` and `attn` shared by every design, one branch per FFN type.

    The `mlp` branch uses the stand-alone Block's names (`norm2`, `mlp.fc1`, `mlp.fc2`)."""

    def __init__(self, dim: int, num_heads: int, caps: dict[str, BranchCaps]) -> None:
        super().__init__()
        self.caps = caps
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        if "mlp" in caps:
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = Mlp(dim, caps["mlp"].hidden, act_layer=nn.GELU)
        for ffn in ("conv", "local"):
            if ffn in caps:
                self.add_module(ffn, _SharedLocality(dim, caps[ffn]))


#: A key of the locality FFN in a stand-alone model: block, index in its Sequential, the rest.
_LOCALITY_KEY = re.compile(r"blocks\.(\d+)\.conv\.conv\.(\d+)\.(.+)")
#: Tensors whose trailing dimensions are kernels: a smaller kernel is their centre.
_KERNEL_DIMS = {"dw.weight": (2, 3), "eca.conv.weight": (2,)}


def _cut(tensor: torch.Tensor, shape: torch.Size, kernel_dims: Sequence[int] = ()) -> torch.Tensor:
    """The leading channels of every dimension; the centre of kernel dimensions. A view."""
    index = []
    for d, size in enumerate(shape):
        start = (tensor.shape[d] - size) // 2 if d in kernel_dims else 0
        index.append(slice(start, start + size))
    return tensor[tuple(index)]


class Supernet(nn.Module):
    """Every design of `block_layers` on the ViT `base` (width, depth, geometry), in one set of weights.

    `block_layers[i]` are the designs block i must hold (at `base.embed_dim`); the supernet
    holds any spec of the base's geometry whose every layer fits the largest design of its
    FFN type there (`check`), with any head count dividing the width.
    """

    def __init__(self, base: ArchSpec, block_layers: Sequence[Iterable[LayerSpec]]) -> None:
        super().__init__()
        if base.backbone != "vit":
            raise ValueError(f"backbone={base.backbone!r} is invalid for a supernet; accepted: 'vit' "
                             f"(deit_tiny, deit_small); stage backbones are not supported yet")
        if len(block_layers) != base.depth:
            raise ValueError(f"block_layers has {len(block_layers)} entries; accepted: one per block ({base.depth})")
        self.base = base
        dim = base.embed_dim
        assert dim is not None and base.num_heads is not None and base.patch_size is not None  # set for `vit`
        self.patch_embed = PatchEmbed(base.img_size, base.patch_size, base.in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, dim))
        blocks = []
        for i, layers in enumerate(block_layers):
            by_ffn: dict[str, list[LayerSpec]] = {}
            for layer in layers:
                by_ffn.setdefault(layer.ffn, []).append(layer)
            if not by_ffn:
                raise ValueError(f"block_layers[{i}] is empty; accepted: at least one LayerSpec")
            caps = {ffn: BranchCaps.of(dim, group) for ffn, group in by_ffn.items()}
            blocks.append(_SharedBlock(dim, base.num_heads, caps))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, base.num_classes)
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        named_apply(init_weights_vit_timm, self)  # Linear layers as timm's ViT; convolutions keep torch's
        self._templates: dict[ArchSpec, nn.Module] = {}

    def no_weight_decay(self) -> set[str]:
        """As timm's ViT: no weight decay on the tokens."""
        return {"pos_embed", "cls_token"}

    # -- which specs it holds -------------------------------------------------------------
    def block_caps(self) -> list[dict[str, BranchCaps]]:
        """Per block, the largest design it holds of each FFN type."""
        return [cast(_SharedBlock, block).caps for block in self.blocks]

    @property
    def device(self) -> torch.device:
        """Where its weights are: the subnets it runs and extracts are put there too."""
        return next(self.parameters()).device

    def why_not(self, spec: ArchSpec) -> str | None:
        """None when the supernet holds `spec`, else the first reason it does not."""
        for name in _GLOBAL_FIELDS:
            if getattr(spec, name) != getattr(self.base, name):
                return f"{name}={getattr(spec, name)!r} differs from the supernet's {getattr(self.base, name)!r}"
        assert spec.embed_dim is not None  # as the supernet's
        for i, (layer, caps) in enumerate(zip(spec.layers, self.block_caps())):
            if layer.ffn not in caps:
                return f"layers[{i}].ffn={layer.ffn!r} is not held there (held: {', '.join(caps)})"
            reason = caps[layer.ffn].why_not(spec.embed_dim, layer)
            if reason:
                return f"layers[{i}]: {reason}"
        return None

    def check(self, spec: ArchSpec) -> ArchSpec:
        """`spec` when the supernet holds it, else ValueError saying why not."""
        reason = self.why_not(spec)
        if reason:
            raise ValueError(f"spec {spec.id} is not held by the supernet: {reason}; accepted: a spec of its space "
                             f"at its geometry (the proxy projection)")
        return spec

    # -- running a subnet -----------------------------------------------------------------
    def _source(self, key: str, layer: LayerSpec, roles: dict[int, str]) -> tuple[str, tuple[int, ...]]:
        """The supernet tensor a stand-alone key is cut from, and its kernel dimensions."""
        match = _LOCALITY_KEY.fullmatch(key)
        if not match:
            return key, ()
        block, index, rest = match.groups()
        local_key = f"{roles[int(index)]}.{rest}"
        return f"blocks.{block}.{layer.ffn}.{local_key}", _KERNEL_DIMS.get(local_key, ())

    def subnet_state(self, spec: ArchSpec) -> dict[str, torch.Tensor]:
        """The state_dict of `build_model(spec)` as views of the supernet's tensors."""
        spec = self.check(spec)
        return self._state(spec, self._template(spec))

    def _state(self, spec: ArchSpec, template: nn.Module) -> dict[str, torch.Tensor]:
        own: dict[str, torch.Tensor] = dict(self.named_parameters())
        own.update(self.named_buffers())
        state = {}
        for i, block in enumerate(template.get_submodule("blocks").children()):
            roles = _locality_roles(block.get_submodule("conv.conv")) if hasattr(block, "conv") else {}
            prefix = f"blocks.{i}."
            for name, tensor in block.state_dict(keep_vars=True).items():
                source, kernel_dims = self._source(prefix + name, spec.layers[i], roles)
                state[prefix + name] = _cut(own[source], tensor.shape, kernel_dims)
        for name, tensor in template.state_dict(keep_vars=True).items():
            if not name.startswith("blocks."):
                state[name] = _cut(own[name], tensor.shape)
        return state

    def _template(self, spec: ArchSpec) -> nn.Module:
        """The stand-alone module structure of `spec` (its own weights are never used; its buffers that
        no state_dict holds are, so it lives on the supernet's device); a few are kept."""
        template = self._templates.pop(spec, None)
        if template is None or next(template.parameters()).device != self.device:
            template = build_model(spec).to(self.device)
        self._templates[spec] = template  # most recent last
        while len(self._templates) > 8:
            self._templates.pop(next(iter(self._templates)))
        template.train(self.training)
        return template

    def forward(self, x: torch.Tensor, spec: ArchSpec) -> torch.Tensor:
        """The subnet `spec` on `x` (train or eval mode as the supernet; BatchNorm in train mode
        updates the supernet's running statistics)."""
        spec = self.check(spec)
        template = self._template(spec)
        return functional_call(template, self._state(spec, template), (x,), strict=True)

    def extract(self, spec: ArchSpec) -> nn.Module:
        """`build_model(spec)` carrying copies of the subnet's weights and statistics, in eval mode, on
        the supernet's device."""
        model = build_model(self.check(spec)).to(self.device)
        state = self._state(spec, model)  # the model is its own template
        model.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
        return model.eval()


def _locality_roles(sequence: nn.Module) -> dict[int, str]:
    """Index in a stand-alone locality FFN -> name in the shared branch (activations have no weights).

    Convolutions in order are pw1, [dw,] pw2; each BatchNorm follows its convolution."""
    children = list(sequence.children())
    convs = [j for j, m in enumerate(children) if isinstance(m, nn.Conv2d)]
    conv_roles = dict(zip(convs, ["pw1", "dw", "pw2"] if len(convs) == 3 else ["pw1", "pw2"]))
    bn_of = {"pw1": "bn1", "dw": "bn2", "pw2": "bn3"}
    roles = {}
    for j, module in enumerate(children):
        if j in conv_roles:
            roles[j] = conv_roles[j]
        elif isinstance(module, nn.BatchNorm2d):
            roles[j] = bn_of[conv_roles[j - 1]]
        elif isinstance(module, SqueezeExcite):
            roles[j] = "se"
        elif isinstance(module, EfficientChannelAttention):
            roles[j] = "eca"
    return roles


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Re-estimate every BatchNorm's statistics as the plain mean over `batches` (train-mode
    forward passes, no gradient), then put the model in eval mode. A subnet cut from a supernet
    carries statistics mixed over many subnets; these are its own."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for x in batches:
        model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()
