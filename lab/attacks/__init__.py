"""Poisoning attacks on a real federation, for measuring what the aggregation strategies do.

Lab tooling, never part of the product: an attacking organisation trains like
any other through the SDK's `Participant`, then replaces the delta it wrote
with a poisoned one before the upload (`participant`); what it sends is one
of the transforms in `transforms`. `federation` runs a whole federation on a
real `fedtune-server serve` process with some organisations attacking.
"""

from lab.attacks.federation import PoisonedRun, run_poisoned
from lab.attacks.participant import HarnessParticipant
from lab.attacks.transforms import ATTACK_NAMES, Attack

__all__ = ["ATTACK_NAMES", "Attack", "HarnessParticipant", "PoisonedRun", "run_poisoned"]
