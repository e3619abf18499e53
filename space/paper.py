"""The paper's study as data: every row of Tables I-IV (and the Table V models that fit the
DeiT base) as a named spec with the figures the paper prints, so a search can start from
them and a user can re-run the ablation (`--space paper --sampler grid`).

Rows are at 224x224, 1000 classes, DeiT-T base (192 dim, 12 layers). Locality models use 4
heads, DeiT MLP models 3 (the official code); neither changes params or FLOPs.
"""
from __future__ import annotations

from dataclasses import dataclass

from localvit.spec import ArchSpec, LayerSpec

DEPTH = 12
MLP = LayerSpec("mlp")
#: The block design of LocalViT-T: h-swish, SE keeping 4 channels of 768 (r=192), gamma 4.
LOCALVIT_T_LAYER = LayerSpec("local", "hswish", "se", se_ratio=192)


@dataclass(frozen=True)
class PaperRow:
    """One row of a table of the paper: the spec and the figures printed next to it."""

    table: str
    name: str
    spec: ArchSpec
    params_m: float
    flops_g: float | None = None

    @property
    def decimals(self) -> tuple[int, int | None]:
        """Decimals the paper prints for (params, FLOPs): rows are compared at that precision."""
        def places(x: float) -> int:
            return len(repr(x).split(".")[1])
        return places(self.params_m), None if self.flops_g is None else places(self.flops_g)


def tiny(layers: LayerSpec | tuple[LayerSpec, ...], heads: int | None = None) -> ArchSpec:
    layers = layers if isinstance(layers, tuple) else (layers,) * DEPTH
    if heads is None:
        heads = 3 if all(layer.ffn == "mlp" for layer in layers) else 4
    return ArchSpec(layers=layers, embed_dim=192, num_heads=heads)


def _placed(first: int, last: int) -> ArchSpec:
    """Locality (LocalViT-T's block) in layers first..last (1-based), the DeiT MLP elsewhere."""
    return tiny(tuple(LOCALVIT_T_LAYER if first <= i + 1 <= last else MLP for i in range(DEPTH)), heads=4)


def _gamma_row(gamma: int, se: bool, params_m: float, flops_g: float) -> PaperRow:
    se_ratio = 48 * gamma  # keeps 4 SE channels: hidden 192 * gamma / (48 * gamma)
    layer = LayerSpec("local", "hswish", "se" if se else "none", se_ratio=se_ratio if se else None, gamma=gamma)
    return PaperRow("IV", f"gamma{gamma}" + ("-se4" if se else ""), tiny(layer), params_m, flops_g)


PAPER_ROWS: tuple[PaperRow, ...] = (
    # Table I: feed-forward type (ReLU6 for the convolutional ones), gamma 4 and 6.
    PaperRow("I", "deit-mlp-g4", tiny(MLP), 5.7),
    PaperRow("I", "conv1x1-relu6-g4", tiny(LayerSpec("conv", "relu6")), 5.7),
    PaperRow("I", "local-relu6-g4", tiny(LayerSpec("local", "relu6")), 5.8),
    PaperRow("I", "deit-mlp-g6", tiny(LayerSpec("mlp", gamma=6)), 7.5),
    PaperRow("I", "conv1x1-relu6-g6", tiny(LayerSpec("conv", "relu6", gamma=6)), 7.5),
    PaperRow("I", "local-relu6-g6", tiny(LayerSpec("local", "relu6", gamma=6)), 7.7),
    # Table II: activation and channel attention of the locality FFN, gamma 4.
    PaperRow("II", "relu6", tiny(LayerSpec("local", "relu6")), 5.8),
    PaperRow("II", "hswish", tiny(LayerSpec("local", "hswish")), 5.8),
    PaperRow("II", "hswish-eca", tiny(LayerSpec("local", "hswish", "eca")), 5.8),
    *(PaperRow("II", f"hswish-se{r}", tiny(LayerSpec("local", "hswish", "se", se_ratio=r)), p)
      for r, p in ((192, 5.9), (96, 6.0), (48, 6.1), (4, 9.4))),
    # Table III: placement of locality; the other layers keep the DeiT MLP.
    PaperRow("III", "local-1-4", _placed(1, 4), 5.78, 1.26),
    PaperRow("III", "local-5-8", _placed(5, 8), 5.78, 1.26),
    PaperRow("III", "local-9-12", _placed(9, 12), 5.78, 1.26),
    PaperRow("III", "local-1-8", _placed(1, 8), 5.84, 1.27),
    PaperRow("III", "local-1-12", _placed(1, 12), 5.91, 1.28),
    # Table IV: expansion ratio gamma, without and with SE (4 SE channels kept).
    *(_gamma_row(g, se, p, f) for g, p_no, p_se, f in ((1, 3.1, 3.1, 0.7), (2, 4.0, 4.0, 0.9),
                                                        (3, 4.9, 5.0, 1.1), (4, 5.8, 5.9, 1.3))
      for se, p in ((False, p_no), (True, p_se))),
    # Table V: the models on the DeiT-T base.
    PaperRow("V", "DeiT-T", tiny(MLP), 5.72),
    PaperRow("V", "LocalViT-T", tiny(LOCALVIT_T_LAYER), 5.91),
    PaperRow("V", "LocalViT-T-SE4", tiny(LayerSpec("local", "hswish", "se", se_ratio=4)), 9.38),
)

#: Named specs of the paper, by "<table>/<name>" (e.g. "III/local-1-4").
PAPER_NAMED_SPECS: dict[str, ArchSpec] = {f"{row.table}/{row.name}": row.spec for row in PAPER_ROWS}
