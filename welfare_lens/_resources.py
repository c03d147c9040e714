"""Reading the JSON files shipped in ``welfare_lens/data`` (or a user's replacement)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from welfare_lens.errors import DataError


def read_json(filename: str, path: str | Path | None, what: str, hint: str) -> Any:
    """Parse ``path``, or the shipped ``welfare_lens/data/<filename>`` when ``path`` is None.

    Raises:
        DataError: The file is missing, unreadable or not JSON (names ``what`` and ``hint``).
    """
    try:
        if path is None:
            text = (
                resources.files("welfare_lens")
                .joinpath("data")
                .joinpath(filename)
                .read_text("utf-8")
            )
        else:
            text = Path(path).read_text(encoding="utf-8")
        return json.loads(text)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"Cannot read {what} from {path or filename}: {err}", hint=hint) from err
