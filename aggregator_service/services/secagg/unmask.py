"""Secure aggregation's last step on the service: rebuild the secrets from the survivors'
shares, then remove the masks from the sum of the masked inputs (Bonawitz et al. 2017, Fig. 4,
round 4; Bell et al. 2020 for the neighbour graph).

For each survivor i the service rebuilds b_i from the shares its neighbours sent and removes
PRG(b_i); for each client d that shared keys but whose input does not count, it rebuilds
s_sk_d and removes the pairwise masks d's surviving neighbours added. With more shares than the
threshold the shares are checked against each other and a holder whose share disagrees is
named in the round's events. The sum, divided by the survivors' total weight, is handed to the
round's strategy as one averaged delta (services/rounds.py).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np
import torch
from sqlalchemy import Connection, insert, update

from aggregator_service.aggregation import UpdateInput
from aggregator_service.services.context import Core
from aggregator_service.services.rounds import federation_status, the_round
from aggregator_service.services.secagg.round import (
    Round,
    accused,
    add_event,
    as_read,
    bump,
    load_round,
    restart,
    steps,
)
from aggregator_service.services.uploads import _manifest
from aggregator_service.storage.tables import rounds, secagg_rounds, updates
from shared.blobs import Blob, encode_state
from shared.secagg.keys import mask_seed, public_from_hex
from shared.secagg.masking import FixedPoint, prg, sign
from shared.secagg.protocol import SECRET_BYTES, holder_index, pair_context
from shared.secagg.shamir import ShamirError, reconstruct, share_from_bytes

__all__ = ["finish", "insert_updates", "list_updates", "secure_inputs"]

log = logging.getLogger("fedtune.server")


def finish(
    conn: Connection,
    rnd: Round,
    unmask: dict[str, Any],
    accused: dict[str, str],
    t: float,
) -> bool:
    """Rebuild the secrets from the unmasking shares (in the caller's transaction) and start
    the aggregation; on failure restart the protocol. True when the round is aggregating;
    nothing changes unless the round is still in the attempt and phase `rnd` was read in."""
    try:
        secrets, events = rebuild_secrets(rnd, unmask)
    except ShamirError as exc:
        restart(conn, rnd, f"the secrets could not be rebuilt: {exc}")
        return False
    done = conn.execute(
        update(secagg_rounds)
        .where(*as_read(rnd))
        .values(phase="done", secrets=json.dumps(secrets, sort_keys=True))
    )
    if done.rowcount != 1:
        return False
    for event in events:
        log.warning("federation %s round %d: %s", rnd.fid, rnd.number, event)
        add_event(conn, rnd, event)
    nbytes = insert_updates(conn, rnd, t)
    fed_status = federation_status(conn, rnd.fid)  # paused since the step: the round stays open
    complete = set(unmask) >= set(rnd.u2) and not accused
    moved = conn.execute(
        update(rounds)
        .where(the_round(rnd.fid, rnd.number, "open"))
        .values(
            status="aggregating" if fed_status == "running" else "open",
            closed_by="quorum" if complete else "deadline",
            aggregation_started_at=t,
            received=len(rnd.u2),
            bytes_in=rounds.c.bytes_in + nbytes,
        )
    )
    bump(conn, rnd)
    log.info(
        "federation %s round %d: secure aggregation of %d masked inputs (%d dropped)",
        rnd.fid,
        rnd.number,
        len(rnd.u2),
        len(rnd.u1) - len(rnd.u2),
    )
    return moved.rowcount == 1 and fed_status == "running"


def rebuild_secrets(
    rnd: Round, unmask: dict[str, Any]
) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The survivors' self-mask seeds ("b") and the mask keys of the dropped clients some
    survivor masked with ("s"), each rebuilt from the holders' unmasking shares, and an event
    naming each holder whose share disagrees with the others. `ShamirError` when a secret
    cannot be rebuilt."""
    graph = rnd.graph
    survivors = set(rnd.u2)
    secrets: dict[str, dict[str, str]] = {"b": {}, "s": {}}
    events: list[str] = []
    for owner in rnd.u1:
        kind = "b" if owner in survivors else "s"
        if kind == "s" and not set(graph[owner]) & survivors:
            continue  # no survivor masked with it: nothing to remove
        shares = {
            holder_index(rnd.cohort, holder): share_from_bytes(bytes.fromhex(s["share"]))
            for holder, sent in unmask.items()
            for s in sent
            if s["owner"] == owner and s["kind"] == kind
        }
        secret, off = reconstruct(shares, rnd.threshold(owner), SECRET_BYTES)
        for x in off:
            holder = sorted(rnd.cohort)[x - 1]
            events.append(
                f"attempt {rnd.attempt}: {holder}'s share of {owner}'s "
                f"{'b' if kind == 'b' else 's_sk'} is inconsistent with the other "
                f"{len(shares) - 1} shares; it was left out of the reconstruction"
            )
        secrets[kind][owner] = secret.hex()
    return secrets, events


def secure_inputs(core: Core, fid: str, number: int) -> tuple[list[UpdateInput], dict[str, str]]:
    """The unmasked average delta of a secure round as the one input of its strategy, and the
    clients left out (client id -> why) for the round's history.

    The round's aggregation spec applies to it unchanged: one input weighs all; every client
    clipped its delta to clip_norm, so their mean is within it too."""
    spec = core.spec(fid)
    sa = spec.secure_aggregation
    assert sa is not None
    with core.db.read() as conn:
        rnd = load_round(conn, spec, fid, number)
        if rnd is None or rnd.phase != "done":
            raise RuntimeError(f"round {number} of {fid} has no finished secure aggregation")
        inputs = list_updates(conn, rnd)
        keys = steps(conn, rnd, "keys")
        manifest = _manifest(conn, fid)
        accusations = accused(conn, rnd)
    fp = FixedPoint(sa.scale_bits, sa.modulus_bits)
    names = sorted(manifest)
    sizes = [math.prod(manifest[n].shape) for n in names]
    total = np.zeros(sum(sizes), dtype=np.uint64)
    for cid in sorted(inputs):  # addition mod 2^bits: exact, so any order gives the same sum
        blob = Blob.open(core.blobs.path(inputs[cid]["sha256"]))
        try:
            flat = np.concatenate([blob.tensor(n).reshape(-1).numpy() for n in names])
        finally:
            blob.close()
        total = fp.add(total, fp.from_wire(flat))
    total = remove_masks(total, fp, rnd, keys)
    weight = sum(
        inputs[c]["num_examples"] if spec.aggregation.weighting == "num_examples" else 1
        for c in inputs
    )
    mean = fp.decode(total) / weight
    state: dict[str, torch.Tensor] = {}
    offset = 0
    for name, size in zip(names, sizes, strict=True):
        state[name] = torch.from_numpy(
            mean[offset : offset + size].astype(np.float32).reshape(manifest[name].shape)
        )
        offset += size
    digest = core.blobs.put_bytes(encode_state(state, {"format": "fedtune-secure-mean/1"}))
    left_out = {
        c: accusations.get(c, "shared keys but sent no masked input in time (dropped out)")
        for c in rnd.u1
        if c not in rnd.u2
    }
    one = UpdateInput("secure-aggregate", core.blobs.path(digest), 1, f"secure\0{digest}")
    return [one], left_out


def remove_masks(total: np.ndarray, fp: FixedPoint, rnd: Round, keys: dict[str, Any]) -> np.ndarray:
    """The sum of the survivors' masked inputs less their self-masks (from the rebuilt seeds)
    and less the pairwise masks they share with dropped clients (from the rebuilt mask keys
    and the survivors' public keys): the sum of their encoded inputs."""
    for _owner, b_hex in sorted(rnd.secrets["b"].items()):
        total = fp.add(total, prg(bytes.fromhex(b_hex), total.size), -1)
    survivors = set(rnd.u2)
    for dropped, s_hex in sorted(rnd.secrets["s"].items()):
        s_sk = bytes.fromhex(s_hex)
        for peer in rnd.graph[dropped]:
            if peer not in survivors:
                continue
            seed = mask_seed(
                s_sk, public_from_hex(keys[peer]["s_pk"]), pair_context(rnd.context, peer, dropped)
            )
            total = fp.add(total, prg(seed, total.size), -sign(peer, dropped))
    return total


def list_updates(conn: Connection, rnd: Round) -> dict[str, Any]:
    """The masked inputs of the survivors (client id -> sha256, bytes, num_examples, metrics)."""
    inputs = steps(conn, rnd, "input")
    return {c: inputs[c] for c in rnd.u2}


def insert_updates(conn: Connection, rnd: Round, t: float) -> int:
    """List the survivors' masked inputs as the round's updates; their total bytes."""
    total = 0
    for cid, p in sorted(list_updates(conn, rnd).items()):
        conn.execute(
            insert(updates).values(
                federation_id=rnd.fid,
                round=rnd.number,
                client_id=cid,
                sha256=p["sha256"],
                bytes=p["bytes"],
                num_examples=p["num_examples"],
                metrics=json.dumps(p["metrics"], sort_keys=True),
                received_at=t,
            )
        )
        total += int(p["bytes"])
    return total
