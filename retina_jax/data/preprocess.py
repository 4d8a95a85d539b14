"""Preprocessing shared by training, evaluation and inference (one function, used everywhere).

Examples are dicts of tensors: `image` (H,W,C) uint8, for segmentation `mask` (H,W,1) uint8 in
{0,1}, for classification an integer `label`, an optional boolean `labelled` and, for fundus
photographs, an optional field-of-view mask `fov` (H,W,1).
Output: `image` float32 normalised, `mask` float32 in {0,1}, `label` int32, `labelled` float32
scalar (1, or 0 for an example without ground truth: losses and metrics skip it) and `fov`
float32 in {0,1}; all resized to `config.resize` (height, width) when it is set.

The image steps, in order, each a pure function of tensors (usable eagerly and in tf.data):
  fundus_channel   all channels, the green one or the luminance   (grey levels, float 0..255)
  clahe            contrast-limited adaptive histogram equalisation (optional)
  adjust_gamma     255 * (x / 255) ** gamma                        (optional)
  normalize_image  (x / 255 - mean) / std with dataset statistics, or
  standardize      per image: zero mean, unit variance over the field of view
  denoise          3x3 median (optional)
"""
import tensorflow as tf

DENOISERS = ("none", "median3")
CHANNELS = ("all", "green", "luminance")
STANDARDIZATIONS = ("dataset", "image")
# ITU-R BT.601 weights, as PIL's and OpenCV's RGB -> grey conversions use.
LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)
GREY_LEVELS = 256


def normalize_image(image: tf.Tensor, mean: float, std: float) -> tf.Tensor:
    """Grey levels (uint8, or float in [0, 255]) -> float32 (image / 255 - mean) / std."""
    return (tf.cast(image, tf.float32) / 255.0 - mean) / std


def black_level(mean: float, std: float) -> float:
    """What a black (0) pixel becomes after `normalize_image`: the fill for regions outside an image."""
    return -mean / std


def fundus_channel(image: tf.Tensor, channel: str) -> tf.Tensor:
    """(H,W,C) uint8 -> float32 grey levels in [0, 255]: every channel ("all", (H,W,C)), or one
    (H,W,1): "green" (where vessels contrast best in colour fundus photographs) or "luminance".

    A grey image (C = 1) is its own green channel and luminance.
    """
    if channel not in CHANNELS:
        raise ValueError(f"config.input.channel must be one of {CHANNELS}, got {channel!r}.")
    image = tf.cast(image, tf.float32)
    if channel == "all" or image.shape[-1] == 1:
        return image
    if image.shape[-1] != 3:
        raise ValueError(f"config.input.channel={channel!r} needs RGB images; got {image.shape[-1]} channels.")
    if channel == "green":
        return image[..., 1:2]
    return tf.reduce_sum(image * tf.constant(LUMINANCE_WEIGHTS), axis=-1, keepdims=True)


def clahe(image: tf.Tensor, *, clip_limit: float, grid: int = 8) -> tf.Tensor:
    """Contrast-limited adaptive histogram equalisation of (H,W,C) grey levels in [0, 255],
    each channel equalised on its own (colour input: the R, G and B planes separately).

    OpenCV's algorithm (cv2.createCLAHE(clipLimit, (grid, grid))): the image (rounded to 256
    levels) is cut into grid x grid tiles (bottom/right edges mirrored up to a whole tile); each
    tile's histogram is clipped at `clip_limit` x its mean bin count (at least 1), the clipped
    excess is spread evenly over all bins, and the cumulative histogram becomes the tile's
    mapping; each pixel blends the mappings of its 4 nearest tile centres bilinearly. Unlike
    OpenCV the result is not rounded back to integers. Returns float32 in [0, 255].
    Needs H, W >= grid.
    """
    if clip_limit <= 0:
        raise ValueError(f"CLAHE clip limit must be > 0, got {clip_limit}.")
    if image.shape[-1] is None:
        raise ValueError("CLAHE equalises each channel: the image's channel count must be known "
                         f"when the graph is built, got shape {image.shape}.")
    height, width = image.shape[0], image.shape[1]
    if height is not None and width is not None and min(height, width) < grid:
        raise ValueError(f"CLAHE with a {grid}x{grid} grid needs images of at least {grid}x{grid} "
                         f"pixels, got {height}x{width}.")
    return tf.concat([_clahe_plane(image[..., channel], clip_limit, grid)
                      for channel in range(image.shape[-1])], axis=-1)


def _clahe_plane(plane: tf.Tensor, clip_limit: float, grid: int) -> tf.Tensor:
    """`clahe` of one (H,W) plane -> (H,W,1)."""
    height, width = tf.shape(plane)[0], tf.shape(plane)[1]
    levels = tf.cast(tf.round(tf.clip_by_value(plane, 0.0, 255.0)), tf.int32)
    tile_height, tile_width = -(-height // grid), -(-width // grid)
    padded = tf.pad(levels, [[0, grid * tile_height - height], [0, grid * tile_width - width]],
                    mode="SYMMETRIC")
    tiles = tf.reshape(tf.transpose(tf.reshape(padded, [grid, tile_height, grid, tile_width]),
                                    [0, 2, 1, 3]), [grid * grid, tile_height * tile_width])
    histograms = tf.math.bincount(tiles, minlength=GREY_LEVELS, maxlength=GREY_LEVELS, axis=-1,
                                  dtype=tf.float32)
    tile_pixels = tf.cast(tile_height * tile_width, tf.float32)
    limit = tf.maximum(clip_limit * tile_pixels / GREY_LEVELS, 1.0)
    excess = tf.reduce_sum(tf.nn.relu(histograms - limit), axis=-1, keepdims=True)
    histograms = tf.minimum(histograms, limit) + excess / GREY_LEVELS
    mappings = tf.reshape(tf.cumsum(histograms, axis=-1) / tile_pixels, [-1])  # (grid * grid * 256,)

    def neighbours(length, tile_length):
        # OpenCV's tile coordinate of each pixel: position / tile size - 0.5 (tile centres).
        position = tf.cast(tf.range(length), tf.float32) / tf.cast(tile_length, tf.float32) - 0.5
        low = tf.floor(position)
        weight = position - low
        low = tf.cast(low, tf.int32)
        return tf.clip_by_value(low, 0, grid - 1), tf.clip_by_value(low + 1, 0, grid - 1), weight

    top, bottom, row_weight = neighbours(height, tile_height)
    left, right, col_weight = neighbours(width, tile_width)

    def mapped(tile_rows, tile_cols):
        tile = tile_rows[:, None] * grid + tile_cols[None, :]
        return tf.gather(mappings, tile * GREY_LEVELS + levels)

    row_weight, col_weight = row_weight[:, None], col_weight[None, :]
    blended = ((1 - row_weight) * ((1 - col_weight) * mapped(top, left) + col_weight * mapped(top, right))
               + row_weight * ((1 - col_weight) * mapped(bottom, left) + col_weight * mapped(bottom, right)))
    return 255.0 * blended[..., None]


def adjust_gamma(image: tf.Tensor, gamma: float) -> tf.Tensor:
    """Grey levels in [0, 255] -> 255 * (image / 255) ** gamma: gamma < 1 lifts the dark levels,
    gamma > 1 pushes them down (retina-unet's "gamma 1.2" is gamma = 1 / 1.2 here)."""
    return 255.0 * tf.pow(tf.clip_by_value(image, 0.0, 255.0) / 255.0, gamma)


def standardize(image: tf.Tensor, region: tf.Tensor | None = None) -> tf.Tensor:
    """(image - mean) / std per image and channel, the statistics taken over `region` (H,W,1)
    > 0.5 (e.g. the field of view: the black surround would otherwise dominate them), or over
    every pixel when `region` is None. A constant region gives std 0: the result is then 0."""
    image = tf.cast(image, tf.float32)
    weights = (tf.ones_like(image[..., :1]) if region is None
               else tf.cast(tf.cast(region, tf.float32) > 0.5, tf.float32))
    count = tf.maximum(tf.reduce_sum(weights), 1.0)
    mean = tf.reduce_sum(image * weights, axis=[0, 1]) / count
    variance = tf.reduce_sum(tf.square(image - mean) * weights, axis=[0, 1]) / count
    std = tf.sqrt(variance)
    return tf.math.divide_no_nan(image - mean, std)


def median3(image: tf.Tensor) -> tf.Tensor:
    """3x3 median filter per channel (edges see zero padding): removes OCT speckle, keeps edges.

    (H,W,C) float -> (H,W,C). Sorting 9 neighbours is exact, so the result does not
    depend on how TensorFlow schedules it.
    """
    channels = tf.shape(image)[-1]
    planes = tf.transpose(image, [2, 0, 1])[..., None]  # (C,H,W,1): patches of one channel each
    patches = tf.image.extract_patches(planes, sizes=[1, 3, 3, 1], strides=[1, 1, 1, 1],
                                       rates=[1, 1, 1, 1], padding="SAME")
    median = tf.sort(patches, axis=-1)[..., 4]
    return tf.reshape(tf.transpose(median, [1, 2, 0]), tf.concat([tf.shape(image)[:2], [channels]], 0))


def denoise(image: tf.Tensor, method: str) -> tf.Tensor:
    if method == "none":
        return image
    if method == "median3":
        return median3(image)
    raise ValueError(f"config.input.denoise must be one of {DENOISERS}, got {method!r}.")


# The masks `resize_example` resizes: the label, the FOV, and a second observer's annotation,
# which evaluation keeps beside the preprocessed example (pipeline.SECOND_OBSERVER_KEYS).
RESIZED_MASK_KEYS = ("mask", "fov", "mask2")


def preprocess_example(example: dict, config) -> dict:
    """The model's view of one example; `config` is the config's `input` block."""
    if config.standardize not in STANDARDIZATIONS:
        raise ValueError(f"config.input.standardize must be one of {STANDARDIZATIONS}, "
                         f"got {config.standardize!r}.")
    labelled = tf.cast(example["labelled"], tf.float32) if "labelled" in example else tf.constant(1.0)
    fov = tf.cast(example["fov"] > 0, tf.float32) if "fov" in example else None
    image = fundus_channel(example["image"], config.channel)
    if config.clahe_clip > 0:
        image = clahe(image, clip_limit=config.clahe_clip, grid=config.clahe_grid)
    if config.gamma != 1.0:
        image = adjust_gamma(image, config.gamma)
    if config.standardize == "image":
        image = standardize(image, fov)
    else:
        image = normalize_image(image, config.mean, config.std)
    processed = {"image": denoise(image, config.denoise), "labelled": labelled}
    if "mask" in example:
        processed["mask"] = tf.cast(example["mask"] > 0, tf.float32)
    if fov is not None:
        processed["fov"] = fov
    if "label" in example:
        processed["label"] = tf.cast(example["label"], tf.int32)
    return resize_example(processed, config.resize) if config.resize else processed


def resize_example(example: dict, size) -> dict:
    """Every spatial key resized to `size` (height, width): the image bilinearly, the masks
    (`RESIZED_MASK_KEYS`) by nearest neighbour (they keep their values). The aspect ratio is not
    kept."""
    resized = {}
    for key, value in example.items():
        if key == "image":
            resized[key] = tf.image.resize(value, size, method="bilinear")
        elif key in RESIZED_MASK_KEYS:
            resized[key] = tf.image.resize(value, size, method="nearest")
        else:
            resized[key] = value
    return resized
