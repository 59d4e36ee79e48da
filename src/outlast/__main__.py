"""`outlast` and `python -m outlast`: the command line, which needs the `standard` extra."""

from __future__ import annotations

import sys

NEEDS_STANDARD = frozenset({"click", "rich", "uvicorn", "httptools"})


def main() -> None:
    try:
        from outlast.cli import main as cli
    except ModuleNotFoundError as exc:
        if exc.name not in NEEDS_STANDARD:
            raise
        sys.exit(f"outlast's command line needs {exc.name}: pip install 'outlast[standard]'")
    cli()


if __name__ == "__main__":
    main()
