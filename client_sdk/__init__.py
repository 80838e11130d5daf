"""FedTune client SDK: a typed HTTP client of the aggregator, local training, the participate
loop, and the federated model put to use (export, evaluate, predict).

The model-side functions import every model library, so they load on first use: a
command that only talks to the server (register, status) starts without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from client_sdk import _exceptions
from client_sdk._base_client import Download
from client_sdk._client import FedTuneClient
from client_sdk._exceptions import *  # noqa: F403  (the exception tree, listed once there)

if TYPE_CHECKING:
    from client_sdk.evaluate import (
        EvaluationReport,
        ImagePrediction,
        evaluate_model,
        predict_images,
        save_evaluation,
    )
    from client_sdk.export import ExportResult, export_model
    from client_sdk.inference import (
        FederatedModel,
        federated_model,
        fetch_federated_model,
        saved_final_model,
    )

_LAZY = {
    "EvaluationReport": "client_sdk.evaluate",
    "ImagePrediction": "client_sdk.evaluate",
    "evaluate_model": "client_sdk.evaluate",
    "predict_images": "client_sdk.evaluate",
    "save_evaluation": "client_sdk.evaluate",
    "ExportResult": "client_sdk.export",
    "export_model": "client_sdk.export",
    "FederatedModel": "client_sdk.inference",
    "federated_model": "client_sdk.inference",
    "fetch_federated_model": "client_sdk.inference",
    "saved_final_model": "client_sdk.inference",
}

__all__ = [
    "Download",
    "EvaluationReport",
    "ExportResult",
    "FedTuneClient",
    "FederatedModel",
    "ImagePrediction",
    "evaluate_model",
    "export_model",
    "federated_model",
    "fetch_federated_model",
    "predict_images",
    "save_evaluation",
    "saved_final_model",
]
__all__ += _exceptions.__all__


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'client_sdk' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
