"""Shared by the benchmark scripts: write the JSON payload (with its ``ratios``) and echo them."""

from __future__ import annotations

import json
import os
from typing import Any


def finish(payload: dict[str, Any], json_path: str | None) -> None:
    """Print the ratios line and write ``payload`` to ``json_path`` when given."""
    print("\nratios:", json.dumps(payload["ratios"]))
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as fh:
            json.dump(payload, fh, indent=2, default=float)
