"""Pictures researchers look at: segmentation overlays as one contact sheet."""
import numpy as np
from PIL import Image, ImageDraw

GREEN = np.array([0, 255, 0], np.uint8)
RED = np.array([255, 0, 0], np.uint8)
BLUE = np.array([0, 128, 255], np.uint8)


def to_grey_rgb(image: np.ndarray) -> np.ndarray:
    """(H,W,C) float image of any range -> (H,W,3) uint8, min-max scaled per image."""
    grey = image.mean(axis=-1)
    low, high = grey.min(), grey.max()
    scaled = (grey - low) / (high - low) if high > low else np.zeros_like(grey)
    return np.repeat((scaled * 255).astype(np.uint8)[..., None], 3, axis=-1)


def paint(rgb: np.ndarray, where: np.ndarray, colour: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    out = rgb.astype(np.float32)
    out[where] = (1 - alpha) * out[where] + alpha * colour
    return out.astype(np.uint8)


def overlay_row(image: np.ndarray, mask: np.ndarray | None, prediction: np.ndarray) -> np.ndarray:
    """image | ground truth (green) | prediction (green) | errors (red = false positive,
    blue = false negative, green = true positive). Without ground truth: image | prediction."""
    grey = to_grey_rgb(image)
    predicted = prediction[..., 0] > 0
    predicted_panel = paint(grey, predicted, GREEN)
    if mask is None:
        return np.concatenate([grey, predicted_panel], axis=1)
    truth = mask[..., 0] > 0
    errors = paint(paint(paint(grey, predicted & truth, GREEN), predicted & ~truth, RED),
                   ~predicted & truth, BLUE)
    return np.concatenate([grey, paint(grey, truth, GREEN), predicted_panel, errors], axis=1)


def caption_strip(text: str, width: int, height: int = 14) -> np.ndarray:
    """A white (height, width, 3) strip with `text` in black (PIL's built-in font)."""
    strip = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(strip).text((2, 1), text, fill="black")
    return np.asarray(strip)


def _pad_width(rgb: np.ndarray, width: int) -> np.ndarray:
    return np.pad(rgb, ((0, 0), (0, width - rgb.shape[1]), (0, 0)), constant_values=255)


def overlay_grid(images, masks, predictions, captions: list[str] | None = None,
                 gap: int = 2) -> np.ndarray:
    """One row per example (see `overlay_row`), each under its caption if given, rows separated
    by `gap` white pixels. `masks` is a sequence with None for unlabelled examples, or None."""
    rows = [overlay_row(images[i], None if masks is None else masks[i], predictions[i])
            for i in range(len(images))]
    width = max(row.shape[1] for row in rows)
    rows = [_pad_width(row, width) for row in rows]
    if captions is not None:
        rows = [np.concatenate([caption_strip(caption, width), row]) for caption, row in zip(captions, rows)]
    separator = np.full((gap, width, 3), 255, np.uint8)
    stacked = [part for row in rows for part in (row, separator)][:-1]
    return np.concatenate(stacked, axis=0)
