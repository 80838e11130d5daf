"""Text a member writes that the admin later reads in a terminal, a log or the history: a
secure-aggregation complaint's reason with a control character is refused and changes nothing
(organisation names: test_enrollment.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.aggregator_service.conftest import AppPool, create_federation
from tests.aggregator_service.test_secagg_service import secure_orgs, secure_spec


@pytest.mark.parametrize(
    ("reason", "shown"),
    [
        ("tag mismatch\x1b[1A\x1b[2Kround closed", "U+001B"),
        ("tag mismatch\nWARNING forged log line", "U+000A"),
        ("tag mismatch\u202e", "U+202E"),
    ],
    ids=["esc", "lf", "bidi-override"],
)
def test_a_complaint_reason_with_a_control_character_is_refused(
    start_app: AppPool, tmp_path: Path, reason: str, shown: str
):
    fed = create_federation(start_app(), secure_spec(3), 3)
    accuser, accused, _ = secure_orgs(fed, tmp_path)
    complaints = f"/v1/federations/{fed.id}/rounds/1/secure-aggregation/complaints"
    body = {"attempt": 1, "accused": accused.cid, "reason": reason}

    with fed.as_client(accuser.cid) as c:
        r = c.post(complaints, json=body)

    assert r.status_code == 422 and r.json()["error"] == "validation_error"
    detail = r.json()["detail"]
    assert detail.startswith("reason: must not contain a control character") and shown in detail
    assert accuser.state().done == [] and accuser.state().events == []
