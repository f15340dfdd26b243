"""What the bench scripts share: a Markdown table on stdout, and the measurements as JSON."""

from __future__ import annotations

import json
import os


def print_table(header: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> None:
    """Print a Markdown table; columns whose index is in ``right`` are right-aligned (numbers)."""
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def write_json(path: str, data) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    print(f"\n(written to {path})")
