"""Pictures researchers look at: segmentation overlays as one contact sheet, curves, confusion
matrices (PIL only: no plotting library needed)."""
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


def probability_map(probability: np.ndarray) -> np.ndarray:
    """(H,W,1) probabilities in [0, 1] -> (H,W) uint8 grey levels (255 = certain vessel)."""
    return np.round(np.clip(probability[..., 0], 0.0, 1.0) * 255).astype(np.uint8)


def curve_plot(x: np.ndarray, y: np.ndarray, *, title: str, x_label: str, y_label: str,
               diagonal: bool = False, size: int = 360, margin: int = 40) -> np.ndarray:
    """A (size, size, 3) uint8 line plot of y against x, both in [0, 1], with a frame, grid lines
    every 0.2, axis labels and a title (PIL only: no plotting library needed); `diagonal` adds
    the y = x line (a chance-level ROC curve)."""
    canvas = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(canvas)
    extent = size - 2 * margin

    def point(u, v):
        return margin + u * extent, size - margin - v * extent

    for tick in np.linspace(0.0, 1.0, 6):
        draw.line([point(tick, 0.0), point(tick, 1.0)], fill=(225, 225, 225))
        draw.line([point(0.0, tick), point(1.0, tick)], fill=(225, 225, 225))
        draw.text((point(tick, 0.0)[0] - 8, size - margin + 4), f"{tick:.1f}", fill="black")
        draw.text((4, point(0.0, tick)[1] - 6), f"{tick:.1f}", fill="black")
    draw.rectangle([point(0.0, 1.0), point(1.0, 0.0)], outline="black")
    if diagonal:
        draw.line([point(0.0, 0.0), point(1.0, 1.0)], fill=(160, 160, 160))
    draw.line([point(u, v) for u, v in zip(np.clip(x, 0, 1), np.clip(y, 0, 1))], fill=tuple(BLUE), width=2)
    draw.text((margin, 8), title, fill="black")
    draw.text((size // 2 - 40, size - 16), x_label, fill="black")
    draw.text((4, 24), y_label, fill="black")
    return np.asarray(canvas)


def confusion_matrix_image(matrix: np.ndarray, class_names: list[str], *, title: str = "",
                           cell: int = 56, label_width: int = 90) -> np.ndarray:
    """The confusion matrix (rows = true class, columns = predicted) as a uint8 RGB picture: each
    cell shows its count and is shaded by its share of the true class (its row)."""
    num_classes = len(class_names)
    row_totals = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    shares = matrix / row_totals
    width = label_width + num_classes * cell + 10
    height = 40 + label_width // 3 + num_classes * cell + 10
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill="black")
    draw.text((label_width, 20), "predicted ->", fill="black")
    top = 40 + label_width // 3
    for k, name in enumerate(class_names):
        draw.text((label_width + k * cell + 4, top - 14), name[:8], fill="black")
        draw.text((4, top + k * cell + cell // 2 - 6), f"true {name}"[:14], fill="black")
    for row in range(num_classes):
        for column in range(num_classes):
            shade = int(255 - 200 * shares[row, column])
            box = [label_width + column * cell, top + row * cell,
                   label_width + (column + 1) * cell - 1, top + (row + 1) * cell - 1]
            draw.rectangle(box, fill=(shade, shade, 255), outline=(200, 200, 200))
            draw.text((box[0] + 6, box[1] + cell // 2 - 6), str(int(matrix[row, column])),
                      fill="black" if shade > 120 else "white")
    return np.asarray(canvas)
