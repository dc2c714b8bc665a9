"""The command line both native builds share: build in place, `--clean`, `--optional`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def run(
    description: str,
    *,
    build: Callable[[], None],
    clean: Callable[[], None],
    what: str,
    fallback: str,
) -> None:
    """Build (or clean); with `--optional` a failed build warns and leaves `fallback` in use."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--clean", action="store_true", help=f"remove the compiled {what}")
    parser.add_argument(
        "--optional",
        action="store_true",
        help=f"on failure (no C compiler, say) warn and leave {fallback} in use",
    )
    args = parser.parse_args()
    if args.clean:
        clean()
        return
    try:
        build()
    except (Exception, SystemExit) as exc:
        if not args.optional:
            raise
        clean()
        print(
            f"warning: could not compile the {what} ({exc}); {fallback} is used instead, "
            "slower (install a C compiler and the Python headers, then `make build`)",
            file=sys.stderr,
        )
