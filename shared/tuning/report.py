"""What each method would cost for a spec: parameters trained and bytes per update.

Counts come from building the model on the `meta` device (shapes only, no
memory, no weights), so full-size architectures are reported offline in
seconds. `trainable_params` is what the method itself trains (the number
papers quote, e.g. BitFit's 0.12 % of ViT-B/16); `head_params` is the
classifier trained alongside it (always for hf_vit's new head, for CLIP when
`train_head` is set); `bytes_per_update` covers both, since both travel.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.blobs import torch_dtype
from shared.methods import METHODS, method_names
from shared.spec import FederationSpec
from shared.tuning.build import build_for_counting

__all__ = ["MethodReport", "format_method_table", "method_reports"]


class MethodReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    method: str = Field(description="Tuning method name.")
    variant: str = Field(
        default="",
        description="Options changed from the method's reported options (`freeze_a=true`); "
        "empty on the method's first row.",
    )
    trainable_params: int = Field(description="Parameters the method itself trains.")
    head_params: int = Field(description="Classifier parameters trained alongside the method.")
    total_params: int = Field(description="All parameters of the classifier model.")
    fraction: float = Field(description="trainable_params / total_params.")
    bytes_per_update: int = Field(
        description="(trainable_params + head_params) x item size of the transport dtype."
    )


def method_reports(spec: FederationSpec) -> list[MethodReport]:
    """Reports per method applicable to the spec's family: its options, then its variants.

    A method's first row has its default options; the spec's own method is
    reported with the spec's options. Then one row for each value a declared
    variant option (`MethodInfo.variants`, e.g. lora `freeze_a`, adapter
    `style`) can take besides that row's, on top of the same options.
    `train_head` applies to every method that accepts it.
    """
    reports = []
    for name in method_names(spec.model.family):
        info = METHODS[name]
        options = dict(spec.method.options) if name == spec.method.name else {}
        reports.append(_report(spec, name, options, ""))
        current = info.check(spec.model.family, False, options)
        for field, values in info.variants:
            for value in values:
                if value != getattr(current, field):
                    label = f"{field}={_option_text(value)}"
                    reports.append(_report(spec, name, {**options, field: value}, label))
    return reports


def _report(spec: FederationSpec, name: str, options: dict[str, Any], variant: str) -> MethodReport:
    train_head = spec.method.train_head and METHODS[name].accepts_train_head
    variant_spec = spec.model_copy(
        update={
            "method": spec.method.model_copy(
                update={"name": name, "options": options, "train_head": train_head}
            )
        }
    )
    built = build_for_counting(variant_spec)
    params = dict(built.model.named_parameters())
    own = sum(params[n].numel() for n in built.method_params)
    head = sum(params[n].numel() for n in built.head_params)
    total = built.num_total
    return MethodReport(
        method=name,
        variant=variant,
        trainable_params=own,
        head_params=head,
        total_params=total,
        fraction=own / total if total else 0.0,
        bytes_per_update=(own + head) * torch_dtype(spec.transport.dtype).itemsize,
    )


def format_method_table(reports: list[MethodReport]) -> str:
    """Aligned text table, one row per report (a variant's row names its options)."""
    header = ("method", "trainable", "head", "total", "fraction", "bytes/update")
    rows = [
        (
            f"{r.method} {r.variant}" if r.variant else r.method,
            f"{r.trainable_params:,}",
            f"{r.head_params:,}",
            f"{r.total_params:,}",
            f"{r.fraction * 100:.3f} %",
            _human_bytes(r.bytes_per_update),
        )
        for r in reports
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _option_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
