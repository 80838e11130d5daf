"""REST API v1 schemas: the request and response bodies both sides agree on.

The service uses these as FastAPI request/response models (so they appear in
the OpenAPI document with their examples); the client SDK parses responses
into them. No FastAPI or httpx here.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from shared.spec import FederationSpec

__all__ = [
    "API_PREFIX",
    "CONTROL_CHARACTER",
    "ClientInfo",
    "ClientKeyRotated",
    "ClientRegistered",
    "ClientRegistration",
    "EnrollmentToken",
    "EnrollmentTokenInfo",
    "EnrollmentTokenRequest",
    "ErrorBody",
    "Evaluation",
    "EvaluationReport",
    "FederationInfo",
    "FederationStatus",
    "FederationSummary",
    "Health",
    "ParticipantRecord",
    "PlainText",
    "RoundRecord",
    "RoundState",
    "RoundStatus",
    "SafeId",
    "SecaggComplaint",
    "SecaggIncomingShare",
    "SecaggKeys",
    "SecaggPeer",
    "SecaggPhase",
    "SecaggReceipt",
    "SecaggShare",
    "SecaggShares",
    "SecaggState",
    "SecaggUnmask",
    "SecaggUnmaskShare",
    "Sha256Hex",
    "TensorInfo",
    "UpdateReceipt",
]

API_PREFIX = "/v1"

RoundState = Literal["open", "aggregating", "closed"]
FederationStatus = Literal["running", "paused", "completed", "cancelled"]
"""`running` accepts updates; `paused` accepts none and its deadlines stand still until it
resumes; `completed` (after the last round) and `cancelled` (by the admin) are final."""

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
"""A lowercase sha256 hex digest: global versions, fingerprints, blob digests."""

SafeId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
"""A client or federation id: a plain name, safe as one path component."""

_SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

# Characters that move the cursor, break a line or reorder text where it is shown (a terminal,
# a log line, a page): C0 and C1 controls (Unicode Cc: NUL, TAB, LF, CR, ESC, DEL, ...), the
# line and paragraph separators, and the bidirectional formatting characters. Other format
# characters (ZWJ, ZWNJ) stay allowed: names in several scripts need them.
_CONTROLS = r"\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
CONTROL_CHARACTER = re.compile(f"[{_CONTROLS}]")


def _no_control_character(text: str) -> str:
    found = CONTROL_CHARACTER.search(text)
    if found is not None:
        raise ValueError(
            "must not contain a control character (NUL, tab, line break, ESC, bidi override, "
            f"...): found U+{ord(found.group()):04X} at position {found.start()}"
        )
    return text


PlainText = Annotated[
    str,
    AfterValidator(_no_control_character),
    Field(json_schema_extra={"pattern": f"^[^{_CONTROLS}]*$"}),
]
"""Text a member writes that others read in a terminal or a log: no control character."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TensorInfo(_Model):
    shape: list[int] = Field(description="Tensor shape.", examples=[[768]])
    dtype: str = Field(description="torch dtype name.", examples=["float32"])


class ErrorBody(_Model):
    """Every 4xx/5xx body. `round` is set when the refusal depends on the current round."""

    error: str = Field(description="Machine-readable code.", examples=["stale_base_version"])
    detail: str = Field(
        description="What went wrong and what to do.",
        examples=[
            "update was built on global version 1a2b…; download the current state and retrain"
        ],
    )
    round: RoundStatus | None = Field(default=None, description="The current round, when relevant.")


class FederationInfo(_Model):
    id: SafeId = Field(description="Federation id.", examples=["fed_3k9x2m"])
    name: str = Field(examples=["cifar10-clip-bias"])
    spec: FederationSpec
    status: FederationStatus = Field(examples=["running"])
    current_round: int = Field(
        description="Round now open (or the last one when completed).", examples=[1]
    )
    global_version: Sha256Hex = Field(
        description="sha256 of the current global trainable state.", examples=[_SHA]
    )
    manifest: dict[str, TensorInfo] = Field(
        description="Trainable tensors: name -> shape and dtype.",
        examples=[
            {
                "visual.transformer.resblocks.0.attn.in_proj_bias": {
                    "shape": [2304],
                    "dtype": "float32",
                }
            }
        ],
    )
    base_fingerprint: Sha256Hex = Field(
        description="sha256 over the frozen tensors in name order.", examples=[_SHA]
    )
    base_available: bool = Field(
        description="Whether GET /base serves the frozen base.", examples=[True]
    )
    trainable_params: int = Field(examples=[102912])
    total_params: int = Field(examples=[86389248])
    created_at: datetime
    completed_reason: Literal["rounds", "privacy_budget"] | None = Field(
        default=None,
        description="Why a completed federation completed: rounds (its last round closed) or "
        "privacy_budget (the next round would have taken ε past privacy.max_epsilon); null "
        "until it completes.",
        examples=[None],
    )


class FederationSummary(_Model):
    """One federation in the admin's list."""

    id: SafeId = Field(description="Federation id.", examples=["fed_3k9x2m"])
    name: str = Field(examples=["cifar10-clip-bias"])
    status: FederationStatus = Field(examples=["running"])
    current_round: int = Field(
        description="Round now open (or the last one when completed).", examples=[3]
    )
    total_rounds: int = Field(examples=[50])
    created_at: datetime


class EnrollmentTokenRequest(_Model):
    uses: int = Field(
        default=1, ge=1, le=10_000, description="How many registrations it allows.", examples=[1]
    )
    expires_in_s: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        le=365 * 24 * 3600,
        description="Lifetime in seconds.",
        examples=[86400],
    )


EnrollmentTokenId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
"""An enrollment token's id: the first 16 hex digits of its sha256, never the token."""


class EnrollmentToken(_Model):
    token: str = Field(
        description="Give this to one organisation; shown once.", examples=["fte_Zx81..."]
    )
    id: EnrollmentTokenId = Field(
        description="Names the token in the list and to revoke it (not a secret).",
        examples=["3f9a0c1e5b7d2a64"],
    )
    federation_id: SafeId = Field(examples=["fed_3k9x2m"])
    uses: int = Field(examples=[1])
    expires_at: datetime


class EnrollmentTokenInfo(_Model):
    """An issued enrollment token, without its secret."""

    id: EnrollmentTokenId = Field(examples=["3f9a0c1e5b7d2a64"])
    federation_id: SafeId = Field(examples=["fed_3k9x2m"])
    uses_left: int = Field(description="Registrations it still allows.", examples=[1])
    expires_at: datetime
    created_at: datetime
    revoked: bool = Field(description="Revoked by the admin: it allows none.", examples=[False])


class ClientRegistration(_Model):
    enrollment_token: str = Field(min_length=1, examples=["fte_Zx81..."])
    name: PlainText = Field(
        min_length=1,
        max_length=128,
        description="Organisation name, without control characters (line breaks, ESC, bidi "
        "overrides); need not be unique.",
        examples=["st-marys-hospital"],
    )


class ClientRegistered(_Model):
    client_id: SafeId = Field(examples=["cli_7h2k"])
    api_key: str = Field(
        description="Bearer token for this client; shown only once.", examples=["ftk_..."]
    )
    federation_id: SafeId = Field(examples=["fed_3k9x2m"])
    name: str = Field(examples=["st-marys-hospital"])


class ClientKeyRotated(_Model):
    """A client's new API key, shown only here (and to a retry with the same Idempotency-Key)."""

    client_id: SafeId = Field(examples=["cli_7h2k"])
    federation_id: SafeId = Field(examples=["fed_3k9x2m"])
    api_key: str = Field(description="The new bearer token of this client.", examples=["ftk_..."])
    previous_key_valid_until: datetime | None = Field(
        description="A client rotating its own key: the key it called with stays valid until "
        "the new one is first used, or this time at the latest. Null when the admin rotated: "
        "the old key stopped working at once."
    )


class ClientInfo(_Model):
    client_id: SafeId = Field(examples=["cli_7h2k"])
    name: str = Field(examples=["st-marys-hospital"])
    federation_id: SafeId = Field(examples=["fed_3k9x2m"])
    created_at: datetime
    revoked: bool = Field(examples=[False])
    updates: int = Field(default=0, description="Updates accepted from this client.", examples=[12])


class RoundStatus(_Model):
    federation_id: SafeId = Field(examples=["fed_3k9x2m"])
    federation_status: FederationStatus = Field(examples=["running"])
    round: int = Field(description="Current round number, 1-based.", examples=[3])
    total_rounds: int = Field(examples=[50])
    status: RoundState = Field(examples=["open"])
    global_version: Sha256Hex = Field(
        description="sha256 of the state this round trains from.", examples=[_SHA]
    )
    quorum: int = Field(examples=[3])
    min_updates: int = Field(examples=[2])
    received: int = Field(description="Updates accepted so far this round.", examples=[1])
    submitted: bool = Field(
        description="Whether the calling client already submitted.", examples=[False]
    )
    deadline_at: datetime | None = Field(description="When the round may close on min_updates.")
    revision: int = Field(
        description="Counter that changes whenever anything in this object changes; pass it "
        "back as ?revision= to long-poll for the next change.",
        examples=[17],
    )


class UpdateReceipt(_Model):
    federation_id: SafeId = Field(examples=["fed_3k9x2m"])
    round: int = Field(examples=[3])
    client_id: SafeId = Field(examples=["cli_7h2k"])
    sha256: Sha256Hex = Field(examples=[_SHA])
    bytes: int = Field(examples=[411648])
    num_examples: int = Field(examples=[5000])
    duplicate: bool = Field(
        description="True when these exact bytes had already been accepted.", examples=[False]
    )
    received: int = Field(examples=[2])
    quorum: int = Field(examples=[3])
    round_status: RoundState = Field(examples=["open"])


class ParticipantRecord(_Model):
    client_id: SafeId = Field(examples=["cli_7h2k"])
    name: str = Field(examples=["st-marys-hospital"])
    num_examples: int = Field(examples=[5000])
    bytes: int = Field(examples=[411648])
    sha256: Sha256Hex = Field(examples=[_SHA])
    metrics: dict[str, float] = Field(examples=[{"train_loss": 0.41, "val_accuracy": 0.87}])
    received_at: datetime


class AggregationAttempt(_Model):
    number: int = Field(description="1 for the first attempt at the round.", examples=[1])
    started_at: datetime
    ended_at: datetime | None = None
    outcome: Literal["closed", "failed", "reopened", "superseded"] | None = Field(
        default=None,
        description="null while it runs (or when its replica died: a later attempt took over).",
        examples=["closed"],
    )
    error: str | None = Field(
        default=None, description="Why it failed (the admin sees it; clients see null)."
    )


class RoundRecord(_Model):
    round: int = Field(examples=[3])
    status: RoundState = Field(examples=["closed"])
    base_version: Sha256Hex = Field(
        description="Global version the round trained from.", examples=[_SHA]
    )
    result_version: Sha256Hex | None = Field(
        description="Global version it produced, once closed.", examples=[_SHA]
    )
    participants: list[ParticipantRecord] = Field(
        description="Every participant for the admin; a client sees only its own entry."
    )
    participant_count: int = Field(
        default=0, description="How many updates the round accepted.", examples=[3]
    )
    bytes_in: int = Field(description="Update bytes accepted this round.", examples=[1234944])
    bytes_out: int = Field(
        description="State and base bytes served while the round was open.", examples=[822000]
    )
    metrics: dict[str, float] = Field(
        description="Example-weighted means of the participants' metrics.",
        examples=[{"train_loss": 0.39, "val_accuracy": 0.88}],
    )
    closed_by: Literal["quorum", "deadline"] | None = Field(examples=["quorum"])
    opened_at: datetime
    aggregation_started_at: datetime | None = None
    closed_at: datetime | None = None
    aggregation_seconds: float | None = Field(default=None, examples=[0.12])
    attempts: list[AggregationAttempt] = Field(
        default_factory=list,
        description="Every aggregation attempt (retries after a failure, takeovers after a "
        "replica died); `aggregation_started_at` stays the first one's start.",
    )
    excluded: dict[str, str] = Field(
        default_factory=dict,
        description="Updates left out of the aggregate (client id -> why): their values "
        "made it non-finite. A client sees only its own entry.",
        examples=[{"c_3f9a": "largest update norm (3.4e+38) while the aggregate was non-finite"}],
    )
    epsilon: float | None = Field(
        default=None,
        description="With central privacy: the federation's ε (at privacy.delta) once this "
        "round closed, from the accountant; null without privacy or while the round is open.",
        examples=[1.92],
    )


class Health(_Model):
    status: Literal["ok", "unavailable"] = Field(examples=["ok"])
    detail: dict[str, Any] = Field(default_factory=dict)


ErrorBody.model_rebuild()


class EvaluationReport(_Model):
    """A client's accuracy of one global version on its local validation split."""

    model_config = ConfigDict(extra="forbid")

    version: Sha256Hex = Field(description="The global version evaluated.", examples=[_SHA])
    val_accuracy: float = Field(ge=0, le=1, allow_inf_nan=False, examples=[0.91])
    val_examples: int = Field(ge=1, le=2**62, description="Validation examples.", examples=[500])


class Evaluation(EvaluationReport):
    model_config = ConfigDict(extra="ignore")

    client_id: SafeId = Field(examples=["cli_7h2k"])
    name: str = Field(description="The client's registered name.", examples=["st-marys-hospital"])
    round: int = Field(
        description="The round that produced the version (0 = initial state).", examples=[3]
    )
    final: bool = Field(description="True when the version is the federation's final one.")
    received_at: datetime


# -- secure aggregation (SecAgg+) --------------------------------------------------------------

SecaggPhase = Literal["advertise", "share", "input", "unmask", "done"]
"""advertise: clients send two X25519 public keys; share: each sends its encrypted Shamir
shares for its neighbours; input: each sends its masked input; unmask: the survivors send the
shares that remove the masks; done: the service aggregates the unmasked sum."""

_PK = "5f1c3a2b" * 8
HexKey = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
"""An X25519 public key, 32 bytes in lowercase hex."""


class SecaggKeys(_Model):
    """Step 0, advertise keys: the client's two X25519 public keys for this attempt."""

    attempt: int = Field(ge=1, description="The attempt the keys are for.", examples=[1])
    c_pk: HexKey = Field(description="Key agreement for the share encryption.", examples=[_PK])
    s_pk: HexKey = Field(description="Key agreement for the pairwise masks.", examples=[_PK])


class SecaggShare(_Model):
    recipient: SafeId = Field(examples=["cli_9q2w"])
    ciphertext: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{56,1024}$")] = Field(
        description="Hex of nonce (12 bytes) || AES-256-GCM ciphertext of the recipient's "
        "shares of the sender's b and s_sk.",
        examples=["00" * 160],
    )


class SecaggShares(_Model):
    """Step 1, share keys: one encrypted share per neighbour, for the service to route."""

    attempt: int = Field(ge=1, examples=[1])
    shares: list[SecaggShare] = Field(max_length=1024)


class SecaggIncomingShare(_Model):
    sender: SafeId = Field(examples=["cli_7h2k"])
    ciphertext: str = Field(examples=["00" * 160])


class SecaggComplaint(_Model):
    """A share that failed AES-GCM authentication at its recipient: the sender is named and
    left out of the round (its masks are removed as a dropped client's)."""

    attempt: int = Field(ge=1, examples=[1])
    accused: SafeId = Field(description="The sender of the share.", examples=["cli_7h2k"])
    reason: PlainText = Field(
        max_length=300,
        description="Why, in a line without control characters.",
        examples=["AES-GCM authentication failed"],
    )


class SecaggUnmaskShare(_Model):
    owner: SafeId = Field(description="Whose secret this is a share of.", examples=["cli_7h2k"])
    kind: Literal["b", "s"] = Field(
        description="b: the self-mask seed of a survivor; s: the mask key of a dropped client.",
        examples=["b"],
    )
    share: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{132}$")] = Field(
        description="The field element, 66 bytes in hex.", examples=["00" * 66]
    )


class SecaggUnmask(_Model):
    """Step 3, unmasking: for each neighbour that shared keys, its share of b if it sent a
    masked input, of s_sk if it did not (never both)."""

    attempt: int = Field(ge=1, examples=[1])
    shares: list[SecaggUnmaskShare] = Field(max_length=2048)


class SecaggPeer(_Model):
    client_id: SafeId = Field(examples=["cli_9q2w"])
    c_pk: HexKey = Field(examples=[_PK])
    s_pk: HexKey = Field(examples=[_PK])


class SecaggState(_Model):
    """One secure round as the calling client needs it."""

    federation_id: SafeId = Field(examples=["fed_3k9x2m"])
    round: int = Field(examples=[3])
    attempt: int = Field(description="Grows when the protocol restarts.", examples=[1])
    phase: SecaggPhase = Field(examples=["share"])
    deadline_at: datetime
    threshold: int | None = Field(
        description="Shares needed to rebuild one of the caller's secrets (from phase share).",
        examples=[3],
    )
    neighbours: list[SecaggPeer] = Field(
        default_factory=list,
        description="The caller's neighbours and their keys (from phase share; empty when the "
        "caller is not in the cohort).",
    )
    in_cohort: bool = Field(examples=[True])
    cohort: list[SafeId] = Field(
        default_factory=list,
        description="Who advertised keys (from phase share); a client's place in it, from 1, "
        "is its x coordinate in every Shamir sharing of the attempt.",
    )
    shared: list[SafeId] = Field(
        default_factory=list, description="Who shared keys (U1, from phase input)."
    )
    survivors: list[SafeId] = Field(
        default_factory=list, description="Whose masked input counts (U2, from phase unmask)."
    )
    done: list[str] = Field(
        default_factory=list,
        description="The caller's steps of this attempt that the service holds.",
        examples=[["keys", "shares"]],
    )
    events: list[str] = Field(
        default_factory=list,
        description="What went wrong in this round: tampered shares and who sent them, "
        "inconsistent shares and who held them, restarts.",
    )


class SecaggReceipt(_Model):
    step: Literal["keys", "shares", "input", "unmask", "complaint"] = Field(examples=["keys"])
    attempt: int = Field(examples=[1])
    duplicate: bool = Field(
        description="True when this exact body had already been accepted.", examples=[False]
    )
    phase: SecaggPhase = Field(description="The round's phase after this step.", examples=["share"])
