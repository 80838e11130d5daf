"""FedTune client SDK: a typed HTTP client of the aggregator, local training, the participate
loop, and the federated model put to use (export, evaluate, predict)."""

from client_sdk import _exceptions
from client_sdk._base_client import Download
from client_sdk._client import FedTuneClient
from client_sdk._exceptions import *  # noqa: F403  (the exception tree, listed once there)
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
    UsageError,
    federated_model,
    fetch_federated_model,
)

__all__ = [
    "Download",
    "EvaluationReport",
    "ExportResult",
    "FedTuneClient",
    "FederatedModel",
    "ImagePrediction",
    "UsageError",
    "evaluate_model",
    "export_model",
    "federated_model",
    "fetch_federated_model",
    "predict_images",
    "save_evaluation",
]
__all__ += _exceptions.__all__
