"""Tuning methods applied to the models of a spec: one module per method, one registry.

Each method's name, options, families and head rule are declared in
`shared.methods`; its module here registers the wiring (`apply`). `build(spec)`
returns a `BuiltModel`: the same names, shapes and initial values on every
machine, split into the trainable state that travels each round and the
frozen base. `method_reports(spec)` tells what each method would send per
round. `plain_state(built, method)` merges a trained model into the family's
plain weights, for export. Importing this package registers every method and
FedTune's model configs.
"""

from shared.tuning import adapter, bias, full, head, lora, text_prompt, vpt  # noqa: F401  (registers)
from shared.tuning.build import build
from shared.tuning.built import BuiltModel, fingerprint, train_mode
from shared.tuning.merge import NotMergeableError, mergeable_methods, plain_state
from shared.tuning.registry import TuningMethod, get_method, register_method
from shared.tuning.report import MethodReport, format_method_table, method_reports

__all__ = [
    "BuiltModel",
    "MethodReport",
    "NotMergeableError",
    "TuningMethod",
    "build",
    "fingerprint",
    "format_method_table",
    "get_method",
    "mergeable_methods",
    "method_reports",
    "plain_state",
    "register_method",
    "train_mode",
]
