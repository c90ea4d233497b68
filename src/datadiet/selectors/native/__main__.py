"""``python -m datadiet.selectors.native build``: compile the C hashing kernels (install time)."""

from __future__ import annotations

import sys

from datadiet.selectors.native import build


def main(argv: list[str]) -> int:
    if argv != ["build"]:
        print("usage: python -m datadiet.selectors.native build", file=sys.stderr)
        return 2
    try:
        build()
    except RuntimeError as exc:
        print(f"datadiet: C kernels not built ({exc}); the NumPy fallback will run", file=sys.stderr)
        return 0  # optional: everything works without them, only slower
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
