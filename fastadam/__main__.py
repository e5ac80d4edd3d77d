"""``python -m fastadam bench [options]``: see ``fastadam.bench``."""

import sys

from .bench.cli import main as bench_main


def main(argv: list[str] | None = None) -> int:
    """Dispatch the subcommands of ``python -m fastadam``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "bench":
        print("usage: python -m fastadam bench [--help]", file=sys.stderr)
        return 2
    return bench_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
