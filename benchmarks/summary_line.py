"""The last line of a benchmark: its summary as one JSON object, also written to a file if asked."""

from __future__ import annotations

import json


def emit(summary: dict, path: str | None) -> None:
    """Print ``summary`` as one JSON line and, if ``path`` is given, write the same line there."""
    line = json.dumps(summary)
    print(line)
    if path:
        with open(path, "w") as f:
            f.write(line + "\n")
