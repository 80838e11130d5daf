"""Tuning methods and the models they apply to (see DESIGN.md, "Tuning methods").

`build(spec)` returns a `BuiltModel`; `method_reports(spec)` tells what each
method would send per round. Importing this package registers every method and
FedTune's model configs.
"""

from shared.tuning import adapter, bias, full, head, lora, text_prompt, vpt  # noqa: F401  (registers)
from shared.tuning.build import build
from shared.tuning.built import BuiltModel, fingerprint
from shared.tuning.registry import TuningMethod, get_method, method_names, register_method
from shared.tuning.report import MethodReport, format_method_table, method_reports

__all__ = [
    "BuiltModel",
    "MethodReport",
    "TuningMethod",
    "build",
    "fingerprint",
    "format_method_table",
    "get_method",
    "method_names",
    "method_reports",
    "register_method",
]
