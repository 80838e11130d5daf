"""FedTune client SDK: a typed HTTP client of the aggregator, local training, the participate loop."""

from client_sdk import _exceptions
from client_sdk._base_client import Download
from client_sdk._client import FedTuneClient
from client_sdk._exceptions import *  # noqa: F403  (the exception tree, listed once there)

__all__ = ["Download", "FedTuneClient"]
__all__ += _exceptions.__all__
