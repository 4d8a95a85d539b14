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


# The "jet" colour map (Grad-CAM's customary one): dark blue -> blue -> cyan -> yellow -> red ->
# dark red at these positions in [0, 1], linear in between.
JET_POSITIONS = np.array([0.0, 0.125, 0.375, 0.625, 0.875, 1.0])
JET_COLOURS = np.array([[0, 0, 128], [0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0],
                        [128, 0, 0]], np.float64)


def colour_map(values: np.ndarray) -> np.ndarray:
    """(H,W) values in [0, 1] (clipped) -> (H,W,3) uint8 jet colours."""
    clipped = np.clip(values, 0.0, 1.0)
    channels = [np.interp(clipped, JET_POSITIONS, JET_COLOURS[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=-1)).astype(np.uint8)


def heatmap_overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The (H,W,C) image in grey blended with the jet colours of the (H,W) heatmap in [0, 1]."""
    blended = (1 - alpha) * to_grey_rgb(image).astype(np.float32) + alpha * colour_map(heatmap)
    return np.round(blended).astype(np.uint8)


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """(H,W) bool: the pixels of `mask` with a 4-neighbour outside it (or on the image border)."""
    inside = np.pad(mask.astype(bool), 1)
    interior = (inside[1:-1, 1:-1] & inside[:-2, 1:-1] & inside[2:, 1:-1]
                & inside[1:-1, :-2] & inside[1:-1, 2:])
    return mask.astype(bool) & ~interior


def draw_outline(rgb: np.ndarray, mask: np.ndarray, colour: np.ndarray = GREEN) -> np.ndarray:
    """`rgb` with the outline of the (H,W) `mask` painted in `colour`."""
    out = rgb.copy()
    out[mask_outline(mask)] = colour
    return out


def enlarge(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Each pixel repeated `factor` x `factor` times (small images stay sharp and captions fit)."""
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def captioned(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """`rgb` under one caption strip per line of text."""
    return np.concatenate([*(caption_strip(line, rgb.shape[1]) for line in lines), rgb], axis=0)


def contact_sheet(panels: list[np.ndarray], columns: int = 4, gap: int = 4) -> np.ndarray:
    """The (H,W,3) uint8 panels in a grid, row by row, on white (cells sized to the largest)."""
    height = max(panel.shape[0] for panel in panels)
    width = max(panel.shape[1] for panel in panels)
    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    sheet = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
    for index, panel in enumerate(panels):
        top, left = (index // columns) * (height + gap), (index % columns) * (width + gap)
        sheet[top:top + panel.shape[0], left:left + panel.shape[1]] = panel
    return sheet


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


SERIES_COLOURS = [(0, 90, 200), (220, 60, 30), (30, 150, 60), (150, 60, 180), (200, 140, 0),
                  (0, 160, 170), (120, 120, 120)]


def _axis_range(values: np.ndarray) -> tuple[float, float]:
    """A plotting range around `values` (padded by 5%; a constant series gets +-0.5)."""
    low, high = float(np.min(values)), float(np.max(values))
    if high == low:
        return low - 0.5, high + 0.5
    pad = 0.05 * (high - low)
    return low - pad, high + pad


def series_plot(series: dict[str, tuple[np.ndarray, np.ndarray]], *, title: str, x_label: str,
                y_label: str, size: tuple[int, int] = (480, 320), margin: int = 48) -> np.ndarray:
    """Several named (x, y) lines on shared axes fitted to the data, with a legend: a uint8 RGB
    picture (PIL only). Lines with fewer than two points are drawn as dots."""
    width, height = size
    canvas = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(canvas)
    all_x = np.concatenate([np.asarray(x, np.float64) for x, _ in series.values()])
    all_y = np.concatenate([np.asarray(y, np.float64) for _, y in series.values()])
    (y_low, y_high) = _axis_range(all_y)
    x_low, x_high = float(all_x.min()), float(all_x.max())
    if x_high == x_low:
        x_low, x_high = x_low - 0.5, x_high + 0.5

    def point(u, v):
        return (margin + (u - x_low) / (x_high - x_low) * (width - 2 * margin),
                height - margin - (v - y_low) / (y_high - y_low) * (height - 2 * margin))

    for fraction in np.linspace(0.0, 1.0, 5):
        u, v = x_low + fraction * (x_high - x_low), y_low + fraction * (y_high - y_low)
        draw.line([point(u, y_low), point(u, y_high)], fill=(230, 230, 230))
        draw.line([point(x_low, v), point(x_high, v)], fill=(230, 230, 230))
        draw.text((point(u, y_low)[0] - 12, height - margin + 4), f"{u:.4g}", fill="black")
        draw.text((2, point(x_low, v)[1] - 6), f"{v:.3g}", fill="black")
    draw.rectangle([point(x_low, y_high), point(x_high, y_low)], outline="black")
    for index, (name, (x, y)) in enumerate(series.items()):
        colour = SERIES_COLOURS[index % len(SERIES_COLOURS)]
        points = [point(u, v) for u, v in zip(x, y)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for u, v in points if len(points) <= 20 else []:
            draw.ellipse([u - 2, v - 2, u + 2, v + 2], fill=colour)
        draw.text((margin + 96 * index, margin - 14), name[:15], fill=colour)
    draw.text((margin, 8), f"{title}  ({y_label})", fill="black")
    draw.text((width // 2 - 30, height - 16), x_label, fill="black")
    return np.asarray(canvas)


# Validation metrics a learning-curve plot shows, those the run logged (segmentation, then
# classification).
LEARNING_CURVE_METRICS = ("dice", "auc_roc", "auc_pr", "accuracy", "balanced_accuracy", "macro_f1",
                          "auc_ovr", "qwk")


def learning_curves(history: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray | None:
    """The run's training loss (left) and validation metrics in [0, 1] (right) against the step,
    from `history` {tag: (steps, values)} (io_utils.read_scalar_history); None without a
    `train/loss` series."""
    if "train/loss" not in history:
        return None
    panels = [series_plot({"train loss": history["train/loss"]}, title="training loss",
                          x_label="step", y_label="loss")]
    validation = {name: history[f"validation/{name}"] for name in LEARNING_CURVE_METRICS
                  if f"validation/{name}" in history}
    if validation:
        panels.append(series_plot(validation, title="validation", x_label="step", y_label="metric"))
    return np.concatenate(panels, axis=1)


def bar_chart(labels: list[str], means: list[float], stds: list[float | None], *, title: str,
              y_label: str, bar_width: int = 64, height: int = 320, margin: int = 48) -> np.ndarray:
    """Bars of `means` with +-std whiskers (None: no whisker) and the value above each bar. The
    value axis starts near the smallest bar, not at 0, so that small differences show: its
    lowest tick is printed."""
    whisker = [std or 0.0 for std in stds]
    low = min(mean - spread for mean, spread in zip(means, whisker))
    high = max(mean + spread for mean, spread in zip(means, whisker))
    pad = 0.15 * (high - low) if high > low else 0.05 * max(abs(high), 1e-3)
    y_low, y_high = low - pad, high + pad
    width = 2 * margin + bar_width * len(labels) * 3 // 2
    canvas = Image.new("RGB", (max(width, 240), height + 12), "white")
    draw = ImageDraw.Draw(canvas)

    def y_pixel(value):
        return height - margin - (value - y_low) / (y_high - y_low) * (height - 2 * margin)

    for fraction in np.linspace(0.0, 1.0, 5):
        value = y_low + fraction * (y_high - y_low)
        draw.line([(margin, y_pixel(value)), (width - margin // 2, y_pixel(value))], fill=(230, 230, 230))
        draw.text((2, y_pixel(value) - 6), f"{value:.3f}", fill="black")
    for index, (label, mean, spread) in enumerate(zip(labels, means, stds)):
        left = margin + index * bar_width * 3 // 2 + bar_width // 4
        colour = SERIES_COLOURS[index % len(SERIES_COLOURS)]
        draw.rectangle([left, y_pixel(mean), left + bar_width, y_pixel(y_low)], fill=colour)
        centre = left + bar_width // 2
        if spread:
            draw.line([(centre, y_pixel(mean - spread)), (centre, y_pixel(mean + spread))], fill="black", width=2)
            for value in (mean - spread, mean + spread):
                draw.line([(centre - 6, y_pixel(value)), (centre + 6, y_pixel(value))], fill="black", width=2)
        draw.text((left, y_pixel(mean + (spread or 0.0)) - 14), f"{mean:.4f}", fill="black")
        for line, text in enumerate([label[i:i + 10] for i in range(0, min(len(label), 30), 10)]):
            draw.text((left, height - margin + 6 + 12 * line), text, fill="black")
    draw.text((margin, 8), title, fill="black")
    draw.text((margin, 24), y_label, fill="black")
    return np.asarray(canvas)
