"""Zero-cost scores: what a candidate's untrained network says of it, in a second of CPU.

Each is computed at initialisation (seeded as proxy training is) on the proxy model of the
design, on one batch of the proxy's training images, as its paper defines it:

* ``grad_norm`` (Abdelfattah et al., ICLR 2021): the sum over layers of the Frobenius norm
  of the cross-entropy loss's gradient with respect to the layer's weight;
* ``snip`` (Lee et al., ICLR 2019; as a proxy: Abdelfattah et al.): the sum of
  |dL/dW * W| over every weight;
* ``synflow`` (Tanaka et al., NeurIPS 2020; Abdelfattah et al.'s recipe): with every
  parameter and buffer made absolute, BatchNorm taken out, in float64 and on one all-ones
  input, R = sum of the outputs and the score the sum of |dR/dW * W|;
* ``naswot`` (Mellor et al., ICML 2021): binary codes of the ReLU units (an input is 1 where a
  unit's input is positive) for a batch of images, the kernel K = C C^T + (1 - C)(1 - C)^T
  (the number of units minus the Hamming distance of two codes) and the score log|det K|.
  It is defined only for designs with ReLU-family units (ReLU, ReLU6): h-swish and GELU have
  none, and the score says so instead of a value; and only where K has full rank: with fewer
  units than images (an h-swish design whose only ReLUs are its SE bottlenecks) K is singular
  and its log-determinant rounding noise, so the score is undefined there too;
* ``dss`` (Zhou et al., TF-TAS, CVPR 2022), the one made for transformers: the synaptic
  diversity of the attention weights, sum of ||dR/dW||_nuc * ||W||_nuc over each attention
  module's qkv and projection, plus the synaptic saliency of the feed-forward weights, sum of
  |dR/dW * W|, with R the synflow objective as TF-TAS's code computes it. TF-TAS's released
  code scores its qkv and classifier weights as 0 and leaves the feed-forward weights signed
  (the weights it reads are copies that `abs_` misses); those are artefacts of the code and
  are not reproduced: here every attention and feed-forward weight counts, made absolute.

"Weights" are those of the convolution and linear layers (Conv1d/2d, Linear), the convention
of the zero-cost proxies' reference code; biases and norms do not count. BatchNorm runs in
train mode (batch statistics) for grad_norm, snip and naswot, as the reference code leaves a
fresh network.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from localvit.builder import build_model
from localvit.host import cpu_threads
from localvit.spec import ArchSpec
from space.references import ReferenceSet

from .data import ProxyData, get_proxy_data
from .protocol import ProxyProtocol, proxy_of
from .training import seed_everything

#: The zero-cost scores, in the order reports list them.
ZERO_COST = ("grad_norm", "snip", "synflow", "naswot", "dss")
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
WeightedLayer = nn.Linear | nn.Conv1d | nn.Conv2d
RELU_FAMILY = (nn.ReLU, nn.ReLU6)
#: Images of the batch a score is computed on (NASWOT's paper uses 128).
BATCH = 128


@dataclass(frozen=True)
class ZeroCostScore:
    """A score, or None with the reason it is undefined for the design; CPU seconds it took."""

    value: float | None
    cpu_s: float
    undefined: str = ""


def _weighted(model: nn.Module) -> list[tuple[str, WeightedLayer]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, WEIGHTED)]


def _loss_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Sum over the weighted layers of ||dL/dW||_F, L the cross-entropy on (x, y)."""
    _loss_gradients(model, x, y)
    return float(sum(m.weight.grad.norm() for _, m in _weighted(model) if m.weight.grad is not None))


def snip(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Sum of |dL/dW * W| over every weight of the weighted layers."""
    _loss_gradients(model, x, y)
    return float(sum((m.weight.grad * m.weight.detach()).abs().sum() for _, m in _weighted(model)
                     if m.weight.grad is not None))


def _synflow_network(model: nn.Module) -> nn.Module:
    """A float64 copy with every parameter and buffer made absolute and BatchNorm taken out."""
    net = copy.deepcopy(model).double().eval()
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, name, nn.Identity())
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.abs_()
    return net


def _synflow_backward(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    net = _synflow_network(model)
    net.zero_grad(set_to_none=True)
    net(torch.ones((1, *input_shape), dtype=torch.float64)).sum().backward()
    return net


def synflow(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Sum of |dR/dW * W| over the weighted layers, R the summed output of the linearised network
    (`_synflow_network`) on one all-ones input of `input_shape` (C, H, W)."""
    net = _synflow_backward(model, input_shape)
    return float(sum((m.weight.grad * m.weight.detach()).abs().sum() for _, m in _weighted(net)
                     if m.weight.grad is not None))


def naswot(model: nn.Module, x: torch.Tensor) -> float | None:
    """log|det K| of the ReLU activation-pattern kernel on the batch `x`; None when the network
    has no ReLU-family unit (raises ValueError when K is singular)."""
    codes: list[torch.Tensor] = []

    def record(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        codes.append((inputs[0].detach().reshape(len(inputs[0]), -1) > 0).double())

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, RELU_FAMILY)]
    if not hooks:
        return None
    try:
        model.train()
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    c = torch.cat(codes, dim=1)
    kernel = c @ c.T + (1 - c) @ (1 - c).T
    rank = int(torch.linalg.matrix_rank(kernel))
    if rank < len(kernel):  # slogdet of a singular K is rounding noise, rarely an exact 0
        raise ValueError(f"the activation-pattern kernel is singular (rank {rank} of {len(kernel)}: "
                         f"{c.shape[1]} ReLU units)")
    return float(torch.linalg.slogdet(kernel)[1])


def _ffn_and_attention(model: nn.Module) -> tuple[list[WeightedLayer], list[WeightedLayer]]:
    """The weighted layers inside attention modules, and those inside feed-forward modules (a
    timm MLP, a locality FFN with its SE or ECA: the feed-forward side decides first, since ECA's
    class is named an attention)."""
    attention, ffn = [], []
    owners = {name: type(m).__name__ for name, m in model.named_modules()}
    for name, m in _weighted(model):
        parents = [owners[".".join(name.split(".")[:k])] for k in range(1, name.count(".") + 1)]
        if any(p in ("Mlp", "LocalityFeedForward") for p in parents):
            ffn.append(m)
        elif any("Attention" in p for p in parents):
            attention.append(m)
    return attention, ffn


def dss(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """TF-TAS's DSS-indicator: sum of ||dR/dW||_nuc * ||W||_nuc over the attention weights plus
    sum of |dR/dW * W| over the feed-forward weights, R the synflow objective."""
    net = _synflow_backward(model, input_shape)
    attention, ffn = _ffn_and_attention(net)
    diversity = sum(torch.linalg.matrix_norm(m.weight.grad, "nuc") * torch.linalg.matrix_norm(m.weight.detach(), "nuc")
                    for m in attention if m.weight.grad is not None and m.weight.ndim == 2)
    saliency = sum((m.weight.grad * m.weight.detach()).abs().sum() for m in ffn if m.weight.grad is not None)
    return float(diversity + saliency)


def _timed(score: Callable[[], float | None], undefined: str) -> ZeroCostScore:
    started = time.process_time()
    try:
        value = score()
    except ValueError as err:
        return ZeroCostScore(None, time.process_time() - started, str(err))
    if value is not None and not math.isfinite(value):
        return ZeroCostScore(None, time.process_time() - started, f"not finite ({value})")
    return ZeroCostScore(value, time.process_time() - started, "" if value is not None else undefined)


def zero_cost_scores(spec: ArchSpec, protocol: ProxyProtocol, data: ProxyData, images: int = BATCH
                     ) -> dict[str, ZeroCostScore]:
    """Every zero-cost score of a target `spec`'s proxy model at initialisation (seeded by the
    protocol's seed), on the first `images` training images of the seeded order."""
    proxy = proxy_of(spec, protocol, (data.in_chans, data.num_classes))
    x, y = next(iter(data.batches("train", images, epoch=0, seed=protocol.seed)))
    shape = tuple(x.shape[1:])
    with cpu_threads(protocol.threads):
        seed_everything(protocol.seed)
        model = build_model(proxy)  # no score changes its weights; each clears the gradients it reads
        return {
            "grad_norm": _timed(lambda: grad_norm(model, x, y), ""),
            "snip": _timed(lambda: snip(model, x, y), ""),
            "synflow": _timed(lambda: synflow(model, shape), ""),
            "naswot": _timed(lambda: naswot(model, x),
                             "no ReLU-family activation (NASWOT's codes come from ReLU units)"),
            "dss": _timed(lambda: dss(model, shape), ""),
        }


def zero_cost_of(references: ReferenceSet, protocol: ProxyProtocol) -> dict[str, dict[str, ZeroCostScore]]:
    """The zero-cost scores of every reference design at the protocol's proxy (seconds each), by spec id."""
    data = get_proxy_data(protocol.data_config())
    return {row.spec.id: zero_cost_scores(row.spec, protocol, data) for row in references.rows}


__all__ = ["BATCH", "ZERO_COST", "ZeroCostScore", "dss", "grad_norm", "naswot", "snip", "synflow", "zero_cost_of",
           "zero_cost_scores"]
