"""FedTune's lab: tooling around the product, not what an organisation installs.

The study (`fedtune-study run`), the demo (`make demo`), local federations of
real processes, and the builder of self-made pre-trained bases. It imports the
client SDK and `shared/`, and starts the aggregator as a process; nothing in the
product imports the lab. Its extra dependencies come with `pip install
'fedtune[lab]'`.
"""
