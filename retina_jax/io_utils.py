"""Writing result files atomically: a reader never sees a half-written file."""
import csv
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


def write_json(path: str | Path, payload: dict) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def write_csv(path: str | Path, rows: list[dict], columns: list[str]) -> None:
    """One line per row, `columns` in order; a key a row lacks is an empty cell."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())


def plain_value(value):
    """A numpy scalar or bytes feature value as a plain Python value (for CSV and JSON rows)."""
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value
