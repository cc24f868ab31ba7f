"""Parameter and memory accounting: what trains, what it costs in GPU memory.

Works on any ``nn.Module``, including models built on the meta device (no memory allocated),
which is how the course counts the parameters of the Colab-size models offline.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pandas as pd
from torch import nn

BYTES_PER_PARAM = {
    "fp32": 4.0,
    "fp16": 2.0,
    "bf16": 2.0,
    "int8": 1.0,
    # NF4 stores 4 bits per weight plus one fp32 absmax per 64-weight block
    # (double quantisation shrinks that constant to ~8 bits + a small second level): ~4.13 bits.
    "4bit": 4.127 / 8,
}
GIB = 1024**3


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimiser should update (``requires_grad``), shared ones once."""
    return [p for p in _unique(model.parameters()) if p.requires_grad]


def _unique(params: Iterable[nn.Parameter], seen: set[int] | None = None) -> list[nn.Parameter]:
    seen = set() if seen is None else seen
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _components(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if callable(getattr(model, "components", None)):
        return list(model.components().items())  # type: ignore[operator]
    children = list(model.named_children())
    # A wrapper with a single child (peft, a Qwen2-VL model) is described by its grandchildren.
    while len(children) == 1 and list(children[0][1].named_children()):
        children = list(children[0][1].named_children())
    return children


def count_parameters(
    model: nn.Module, components: Mapping[str, nn.Module] | None = None
) -> pd.DataFrame:
    """Per-component parameter table: ``total``, ``trainable``, ``frozen``, ``trainable_%``.

    Components are ``components`` when given, else the model's own ``components()`` when it has
    one (Qwen2-VL: ``vision``, ``language_model``, ``lm_head``), else its direct children
    (``vision``, ``lm``, ``projector``, ``detection_head`` for ``RadiologyMultimodalModel``). A
    tied weight is counted once, in the first component that owns it; parameters outside every
    component form an ``(other)`` row. The last row, ``total``, counts the whole model.
    """
    seen: set[int] = set()
    rows = []
    parts = list(components.items()) if components is not None else _components(model)
    for name, child in parts:
        params = _unique(child.parameters(), seen)
        rows.append(_row(name, params))
    rest = _unique(model.parameters(), seen)
    if rest:
        rows.append(_row("(other)", rest))
    rows.append(_row("total", _unique(model.parameters())))
    return pd.DataFrame(rows).set_index("component")


def _row(name: str, params: Sequence[nn.Parameter]) -> dict[str, object]:
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {
        "component": name,
        "total": total,
        "trainable": trainable,
        "frozen": total - trainable,
        "trainable_%": 100.0 * trainable / total if total else 0.0,
    }


def memory_estimate(
    model: nn.Module,
    dtypes: str | Sequence[str] = ("fp32", "fp16", "int8", "4bit"),
    components: Mapping[str, nn.Module] | None = None,
) -> pd.DataFrame:
    """GiB needed to hold each component's weights in each precision, plus training state.

    Columns: ``params``, ``trainable``, one ``<dtype>_GiB`` weight column per dtype, and
    ``adamw_state_GiB``: fp32 gradient + two AdamW moments (12 bytes) per *trainable*
    parameter, which is what full fine-tuning adds on top of the weights (activations not
    included: they depend on batch size and sequence length).
    """
    if isinstance(dtypes, str):
        dtypes = (dtypes,)
    unknown = [d for d in dtypes if d not in BYTES_PER_PARAM]
    if unknown:
        raise ValueError(f"unknown dtype(s) {unknown}; choose from {sorted(BYTES_PER_PARAM)}")
    counts = count_parameters(model, components)
    table = pd.DataFrame(index=counts.index)
    table["params"] = counts["total"]
    table["trainable"] = counts["trainable"]
    for dtype in dtypes:
        table[f"{dtype}_GiB"] = counts["total"] * BYTES_PER_PARAM[dtype] / GIB
    table["adamw_state_GiB"] = counts["trainable"] * 12 / GIB
    return table


def parameter_bytes(model: nn.Module) -> int:
    """Bytes the model's parameters occupy now, in their current dtypes (shared ones once)."""
    return sum(p.numel() * p.element_size() for p in _unique(model.parameters()))
