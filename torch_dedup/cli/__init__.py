"""``torch-dedup``: the command line (layer 5; the only module besides the demo that writes to stdout).

Subcommands, one module each, each registering its parser with ``set_defaults(func=...)``
where ``func(args, out) -> exit code`` and ``out(line)`` prints unless ``--quiet``:

- ``hash``, ``scan``, ``sweep`` (:mod:`._inspect`): hash a TARGET, summarise its duplicates,
  kept counts at every threshold.
- ``leak`` (:mod:`._leak`): train/test near-duplicate pairs, a CI gate, a clean training split.
- ``report`` (:mod:`._report`): HTML gallery and PNG contact sheet of the duplicate groups.
- ``demo`` (:mod:`._demo`): the README's CE-Dedup demo.
- ``wds``: webdataset shards, registered by :mod:`torch_dedup.cli._wds` when present.

Exit codes: 0 success; 1 an unexpected internal error (traceback: please report it);
2 a usage error or bad input (one clean line on stderr, no traceback); 3 the leak gate
(``leak --max-leak-pct``) was exceeded.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import DedupError
from . import _demo, _inspect, _leak, _report
from ._options import EXIT_USAGE, cli_words

__all__ = ["build_parser", "main"]


def _register_wds(sub) -> None:
    try:
        from ._wds import register
    except ImportError as exc:  # the wds extra's module missing or broken: the rest still works
        logging.getLogger(__name__).debug("no 'wds' subcommand: %s", exc)
        return
    register(sub)


def build_parser() -> argparse.ArgumentParser:
    """The ``torch-dedup`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="torch-dedup", description="Near-duplicate image removal for PyTorch.",
                                     epilog="exit codes: 0 ok, 1 internal error, 2 usage or input error, "
                                            "3 leak gate exceeded")
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO messages to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (_inspect, _leak, _report, _demo):
        module.register(sub)
    _register_wds(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``torch-dedup`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    out = (lambda line: None) if getattr(args, "quiet", False) else print
    try:
        return int(args.func(args, out))
    except (DedupError, ValueError, OSError) as exc:
        print(f"torch-dedup {args.command}: error: {cli_words(str(exc), args)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"torch-dedup {args.command}: interrupted", file=sys.stderr)
        return 130
