"""`fedtune-study`: run the FedTune study and build the self-made pre-trained bases.

    fedtune-study run --preset quick --out results/quick
    fedtune-study run --grid my-grid.yaml --out results/mine
    fedtune-study build-base --arch fedtune-synth-clip --tag fedtune-synth-v1
    fedtune-study bases

Every error is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from lab.bases import cli as bases_cli
from lab.study import cli as study_cli

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fedtune-study",
        description="Repeat the FedTune study on your data, and build FedTune's self-made bases.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    study_cli.add_commands(commands)
    bases_cli.add_commands(commands)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
