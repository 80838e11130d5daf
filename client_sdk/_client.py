"""`FedTuneClient`: one typed method per REST v1 operation.

Every method returns the pydantic models of `shared.api` (never dicts) and
raises the exceptions of `client_sdk._exceptions`.

    client = FedTuneClient("https://agg.example.org", api_key="ftk_...", ca_cert="ca.pem")
    status = client.current_round(fid, wait_s=30, revision=status.revision)
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from client_sdk import _constants as C
from client_sdk._base_client import BaseClient, Download, _decode_json
from client_sdk._exceptions import APIResponseValidationError
from shared.api import (
    API_PREFIX,
    ClientInfo,
    ClientKeyRotated,
    ClientRegistered,
    ClientRegistration,
    EnrollmentToken,
    EnrollmentTokenInfo,
    EnrollmentTokenRequest,
    Evaluation,
    EvaluationReport,
    FederationInfo,
    FederationSummary,
    Health,
    RoundRecord,
    RoundStatus,
    UpdateReceipt,
)
from shared.spec import FederationSpec
from shared.validation import format_validation_error

__all__ = ["Download", "FedTuneClient"]

M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], data: Any, what: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise APIResponseValidationError(
            f"{what}: unexpected response body: {format_validation_error(exc)}"
        ) from None


def _parse_list(model: type[M], data: Any, what: str) -> list[M]:
    try:
        return TypeAdapter(list[model]).validate_python(data)  # type: ignore[valid-type]
    except ValidationError as exc:
        raise APIResponseValidationError(
            f"{what}: unexpected response body: {format_validation_error(exc)}"
        ) from None


class FedTuneClient(BaseClient):
    """Typed client of the FedTune aggregator's REST API v1.

    `api_key` is a client's `ftk_…` key or the admin token. TLS verification is
    always on; `ca_cert` trusts a private CA; plain `http://` needs `allow_http=True`.
    A failed call is retried for `retry_for_s` seconds from its first failure.
    """

    # -- federations (admin creates; its clients read) --------------------------

    def create_federation(self, spec: FederationSpec) -> FederationInfo:
        return self._post(f"{API_PREFIX}/federations", spec, FederationInfo, "create federation")

    def get_federation(self, federation_id: str) -> FederationInfo:
        data = self._request_json("GET", f"{API_PREFIX}/federations/{federation_id}")
        return _parse(FederationInfo, data, "get federation")

    def list_federations(self) -> list[FederationSummary]:
        """Every federation (admin), oldest first."""
        data = self._request_json("GET", f"{API_PREFIX}/federations")
        return _parse_list(FederationSummary, data, "list federations")

    def pause_federation(self, federation_id: str) -> FederationInfo:
        """Pause (admin): uploads are refused and deadlines stand still until it resumes."""
        return self._lifecycle(federation_id, "pause")

    def resume_federation(self, federation_id: str) -> FederationInfo:
        """Resume a paused federation (admin); the open round's deadline restarts."""
        return self._lifecycle(federation_id, "resume")

    def cancel_federation(self, federation_id: str) -> FederationInfo:
        """Cancel (admin), for good: no more updates or rounds; clients stop."""
        return self._lifecycle(federation_id, "cancel")

    def _lifecycle(self, federation_id: str, action: str) -> FederationInfo:
        data = self._request_json("POST", f"{API_PREFIX}/federations/{federation_id}/{action}")
        return _parse(FederationInfo, data, f"{action} federation")

    def create_enrollment_token(
        self, federation_id: str, *, uses: int = 1, expires_in_s: int | None = None
    ) -> EnrollmentToken:
        extra = {} if expires_in_s is None else {"expires_in_s": expires_in_s}
        body = EnrollmentTokenRequest(uses=uses, **extra)
        return self._post(
            f"{API_PREFIX}/federations/{federation_id}/enrollment-tokens",
            body,
            EnrollmentToken,
            "create enrollment token",
        )

    def list_enrollment_tokens(self, federation_id: str) -> list[EnrollmentTokenInfo]:
        """The federation's enrollment tokens (admin), without the secrets."""
        data = self._request_json(
            "GET", f"{API_PREFIX}/federations/{federation_id}/enrollment-tokens"
        )
        return _parse_list(EnrollmentTokenInfo, data, "list enrollment tokens")

    def revoke_enrollment_token(self, federation_id: str, token_id: str) -> EnrollmentTokenInfo:
        """Revoke the enrollment token with this `id` (admin); registering with it is refused."""
        data = self._request_json(
            "DELETE", f"{API_PREFIX}/federations/{federation_id}/enrollment-tokens/{token_id}"
        )
        return _parse(EnrollmentTokenInfo, data, "revoke enrollment token")

    # -- clients ----------------------------------------------------------------

    def register_client(self, enrollment_token: str, name: str) -> ClientRegistered:
        body = ClientRegistration(enrollment_token=enrollment_token, name=name)
        return self._post(f"{API_PREFIX}/clients", body, ClientRegistered, "register client")

    def list_clients(self, federation_id: str | None = None) -> list[ClientInfo]:
        params = {"federation_id": federation_id} if federation_id else None
        data = self._request_json("GET", f"{API_PREFIX}/clients", params=params)
        return _parse_list(ClientInfo, data, "list clients")

    def revoke_client(self, client_id: str) -> ClientInfo:
        data = self._request_json("DELETE", f"{API_PREFIX}/clients/{client_id}")
        return _parse(ClientInfo, data, "revoke client")

    def rotate_key(self, client_id: str, *, idempotency_key: str | None = None) -> ClientKeyRotated:
        """A new API key for `client_id` (this client's own, or any as the admin).

        A client's old key keeps working until the new one is first used, so pass an
        `idempotency_key` saved before the call: a retry with the old key and that key, even
        from another process after a crash, gets the same new key. This client switches to
        the new key only for a client's own rotation, once the answer arrived.
        """
        path = f"{API_PREFIX}/clients/{client_id}/key"
        key = idempotency_key or uuid.uuid4().hex

        def attempt() -> Any:
            request = self._http.build_request("POST", path, headers=self._headers(None, key))
            with self._send(request) as response:
                body = response.read()
            return _decode_json(body, f"POST {path}")

        rotated = _parse(ClientKeyRotated, self._retrying(f"POST {path}", attempt), "rotate key")
        if rotated.previous_key_valid_until is not None:
            self.api_key = rotated.api_key
        return rotated

    # -- rounds -----------------------------------------------------------------

    def current_round(
        self,
        federation_id: str,
        *,
        wait_s: float = 0,
        revision: int | None = None,
        after_round: int | None = None,
    ) -> RoundStatus:
        """The open round; with `wait_s` > 0, long-polls until its `revision` changes, or with
        `after_round` until a later round opens or the federation completes."""
        wait = max(0, min(int(wait_s), C.MAX_WAIT_S))
        params: dict[str, Any] = {"wait_s": wait}
        if revision is not None:
            params["revision"] = revision
        if after_round is not None:
            params["after_round"] = after_round
        data = self._request_json(
            "GET",
            f"{API_PREFIX}/federations/{federation_id}/rounds/current",
            params=params,
            timeout=wait + C.LONG_POLL_MARGIN_S if wait else None,
        )
        return _parse(RoundStatus, data, "current round")

    def list_rounds(self, federation_id: str) -> list[RoundRecord]:
        data = self._request_json("GET", f"{API_PREFIX}/federations/{federation_id}/rounds")
        return _parse_list(RoundRecord, data, "list rounds")

    def get_round(self, federation_id: str, round: int) -> RoundRecord:
        """One round's record (a client sees the aggregates and its own participation)."""
        data = self._request_json("GET", f"{API_PREFIX}/federations/{federation_id}/rounds/{round}")
        return _parse(RoundRecord, data, "get round")

    def report_evaluation(
        self, federation_id: str, version: str, val_accuracy: float, val_examples: int
    ) -> Evaluation:
        """Report this client's accuracy of global `version` on its validation split."""
        body = EvaluationReport(
            version=version, val_accuracy=val_accuracy, val_examples=val_examples
        )
        return self._post(
            f"{API_PREFIX}/federations/{federation_id}/evaluations",
            body,
            Evaluation,
            "report evaluation",
        )

    def list_evaluations(self, federation_id: str) -> list[Evaluation]:
        data = self._request_json("GET", f"{API_PREFIX}/federations/{federation_id}/evaluations")
        return _parse_list(Evaluation, data, "list evaluations")

    def upload_update(
        self, federation_id: str, round: int, delta_path: str | Path, *, progress: bool = False
    ) -> UpdateReceipt:
        """PUT a delta file. Retries send the same bytes; the server answers 200 duplicate."""
        data = self._upload(
            f"{API_PREFIX}/federations/{federation_id}/rounds/{round}/update",
            Path(delta_path),
            progress=progress,
            label=f"upload round {round}",
        )
        return _parse(UpdateReceipt, data, "upload update")

    # -- blobs ------------------------------------------------------------------

    def download_state(
        self,
        federation_id: str,
        dest: str | Path,
        *,
        version: str | int | None = None,
        if_none_match: str | None = None,
        progress: bool = False,
    ) -> Download:
        """Stream the global trainable state (or a past `version`) to `dest`.

        With `if_none_match` set to the sha256 the caller already holds, an
        unchanged state is not re-sent (`Download.not_modified`).
        """
        params = {"version": str(version)} if version is not None else None
        return self._download(
            f"{API_PREFIX}/federations/{federation_id}/state",
            Path(dest),
            params=params,
            if_none_match=if_none_match,
            progress=progress,
            label="global state",
        )

    def download_base(
        self, federation_id: str, dest: str | Path, *, progress: bool = False
    ) -> Download:
        """Stream the frozen base weights to `dest` (404 when the base is loaded locally)."""
        return self._download(
            f"{API_PREFIX}/federations/{federation_id}/base",
            Path(dest),
            progress=progress,
            label="base model",
        )

    def download_model(
        self, federation_id: str, dest: str | Path, *, progress: bool = False
    ) -> Download:
        """Stream the final trainable state of a completed federation to `dest`
        (`ConflictError` with code `not_completed` before it completed)."""
        return self._download(
            f"{API_PREFIX}/federations/{federation_id}/model",
            Path(dest),
            progress=progress,
            label="final model",
        )

    # -- service ----------------------------------------------------------------

    def health(self) -> Health:
        return _parse(Health, self._request_json("GET", "/healthz"), "health")

    def ready(self) -> Health:
        return _parse(Health, self._request_json("GET", "/readyz"), "ready")

    def _post(self, path: str, body: BaseModel, model: type[M], what: str) -> M:
        """POST `body` as JSON and parse the answer as `model`."""
        data = self._request_json("POST", path, json_body=body.model_dump(mode="json"))
        return _parse(model, data, what)
