"""Writing result files atomically: a reader never sees a half-written file."""
import csv
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def _process_umask() -> int:
    """The umask (read once at import: os.umask can only be read by setting it)."""
    current = os.umask(0o022)
    os.umask(current)
    return current


_UMASK = _process_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
    # NamedTemporaryFile creates the file private (0600); give it the mode `open` would have.
    os.chmod(tmp.name, 0o666 & ~_UMASK)
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


def read_scalar_history(workdir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar a run logged to TensorBoard in `workdir` (clu's writer): {tag: (steps,
    values)} sorted by step. A step logged twice (a resumed run repeats the steps after its last
    checkpoint) keeps the later file's value."""
    import tensorflow as tf  # the event-file reader; imported here so io_utils stays light
    from tensorflow.core.util import event_pb2

    by_tag: dict[str, dict[int, float]] = {}
    for event_file in sorted(Path(workdir).glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        for record in tf.data.TFRecordDataset(str(event_file)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.HasField("tensor") and value.tensor.dtype in (tf.float32.as_datatype_enum,
                                                                       tf.float64.as_datatype_enum):
                    scalar = tf.make_ndarray(value.tensor)
                elif value.HasField("simple_value"):
                    scalar = value.simple_value
                else:
                    continue
                if np.ndim(scalar) == 0:
                    by_tag.setdefault(value.tag, {})[int(event.step)] = float(scalar)
    return {tag: (np.array(sorted(points)), np.array([points[step] for step in sorted(points)]))
            for tag, points in by_tag.items()}
