"""``python -m fastadam COMMAND``: ``bench``, ``precompile``, ``cache``."""

import sys

from .bench.cli import main as bench_main
from .precompile import cache_main
from .precompile import main as precompile_main

COMMANDS = {
    "bench": (bench_main, "time the fused step against naive NumPy, the memory limit and peers"),
    "precompile": (precompile_main, "compile the kernels into the on-disk cache ahead of time"),
    "cache": (cache_main, "show where the kernel cache is and what it holds (--clear)"),
}
USAGE = "usage: python -m fastadam {" + ",".join(COMMANDS) + "} [--help]\n\ncommands:\n" + "".join(
    f"  {name:<11} {text}\n" for name, (_, text) in COMMANDS.items())


def main(argv: list[str] | None = None) -> int:
    """Dispatch the subcommands of ``python -m fastadam``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, end="", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]][0](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
