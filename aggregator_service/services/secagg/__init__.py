"""Secure aggregation's rounds on the service (SecAgg+, Bell et al. 2020; Bonawitz et al. 2017).

A secure round stays `open` while its protocol runs in four steps, each with its deadline
(spec.secure_aggregation): advertise keys (the cohort), share keys (U1: who shared), masked
input (U2: whose input counts), unmasking (the survivors' shares). The service routes the
encrypted shares it cannot read, and once the survivors have answered it rebuilds the
survivors' self-mask seeds and the dropped clients' mask keys (secagg/unmask.py),
moves the round to `aggregating` and the usual aggregation sums the unmasked inputs.

The service never sees one client's delta: it cannot check, clip or weigh one, and so it
cannot refuse a poisoned update. Masked inputs never enter `received` while the protocol
runs, so the round's usual quorum and deadline do not close a secure round; they are listed
as the round's updates when it starts aggregating.

One module per part of the protocol:

- `round`: a secure round's row (`Round`), the steps its clients took, the writes every phase
  makes (a new revision, an event, a restart) and the state a client reads;
- `steps`: the client steps sent as JSON (keys, shares, complaints, unmasking shares), each in
  one write transaction, and the shares handed to a client;
- `inputs`: the masked input (step 2), streamed through the upload path;
- `phases`: the phase transitions, from a client's step or from the sweeper;
- `unmask`: rebuilding the secrets, listing the masked inputs as the round's updates, and the
  unmasked mean the round's strategy aggregates.
"""
