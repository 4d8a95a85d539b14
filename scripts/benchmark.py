"""Times the project's own jitted train step and inference for a registered model on this machine.

Usage:
  python scripts/benchmark.py --model=unet --size=128 --batch=32
  python scripts/benchmark.py --model=unet --size=64 --batch=32 --devices=2   # + input pipeline
  python scripts/benchmark.py --model=resunet --size=224 --batch=8 --no-reference
  python scripts/benchmark.py --sliding_window   # + one whole DRIVE image as configs/drive.py evaluates it
  python scripts/benchmark.py --features=8 --batch=16 --loss=bce_dice_cldice --no-reference  # drive.py's step, clDice
  python scripts/benchmark.py --features=16 --batch=16 --conv=onednn_bf16 --dropout=0 --no-reference  # without dropout

The train step is `train.train_step` with the default config's optimizer and loss (or --loss), inference is
`train.predict_probabilities`, both jitted over a data-parallel mesh as the training loop does,
on synthetic data, timed one blocking call at a time after compilation and warm-up (medians).
Prints readable lines, then as its LAST line one JSON object: images per second, forward GFLOPs
per image (XLA cost analysis), achieved GFLOP/s against this machine's peak, the share of step
time spent waiting for the real tf.data pipeline, compile seconds, peak memory, and the
plain-Flax peer U-Net of ../shared/bench timed in the same run as a reference; with
--sliding_window also `drive_image_seconds`: configs/drive.py's evaluation inference (its model,
at its width or --features if given, with --conv and --dtype; sliding window, flip TTA of its
views or --flip_views) of one
565x584 DRIVE image on one device with every core, as --mode=predict runs it, median of --steps
calls (the last thing timed).
"""
import argparse
import functools
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from configs import default  # noqa: E402
from retina_jax import datasets, inference, losses, models, parallel, train  # noqa: E402
from retina_jax.data import pipeline  # noqa: E402
from retina_jax.ops import onednn_conv  # noqa: E402

# Forward + backward of a conv net costs about 3 forward passes (the backward pass computes
# gradients for both the activations and the weights, each about one forward's work).
TRAIN_FLOPS_PER_FORWARD = 3
REFERENCE_SCRIPT = "jax_unet.py"  # the seed U-Net in plain jitted Flax (same architecture as unet)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet", help=f"one of {', '.join(models.available())}")
    parser.add_argument("--size", type=int, default=128, help="image height and width")
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    parser.add_argument("--channels", type=int, default=0, help="0 = the model's reference input")
    parser.add_argument("--features", type=int, default=0,
                        help="the model's base width (0 = its default); with --sliding_window also "
                             "the DRIVE model's (0 = configs/drive.py's)")
    parser.add_argument("--dropout", type=float, default=None,
                        help="the model's dropout rate (default: its own, the U-Net's 0.05; 0 = none)")
    parser.add_argument("--loss", choices=sorted(losses.LOSSES), default=default.get_config().train.loss,
                        help="the segmentation loss the train step minimises")
    parser.add_argument("--steps", type=int, default=10, help="timed calls (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls after compiling")
    parser.add_argument("--devices", type=int, default=0,
                        help="mesh size; on CPU the host devices made before JAX starts "
                             "(0 = as training does: one per core that splits the batch)")
    parser.add_argument("--data_dir", default="", help="prepared TFDS data ('' = project default)")
    parser.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=True,
                        help="also feed the step from the tf.data pipeline (native image size only)")
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the plain-Flax peer U-Net (--model=unet only)")
    parser.add_argument("--reference_dir", default=str(REPO.parent / "shared" / "bench"))
    parser.add_argument("--conv", choices=onednn_conv.CONV_IMPLEMENTATIONS, default=default.get_config().conv,
                        help="CPU convolutions: XLA's, or oneDNN's through retina_jax/ops/onednn_conv.py "
                             "(build it with scripts/build_onednn.sh; XLA's are used if it is absent); "
                             "onednn_bf16: bfloat16 products accumulated in float32")
    parser.add_argument("--dtype", choices=train.COMPUTE_DTYPES, default="float32",
                        help="compute dtype (bfloat16: mixed precision, float32 parameters)")
    parser.add_argument("--sliding_window", action=argparse.BooleanOptionalAction, default=False,
                        help="also time configs/drive.py's inference of one whole DRIVE image")
    parser.add_argument("--flip_views", type=int, choices=(0, *inference.FLIP_VIEWS), default=0,
                        help="with --sliding_window: the flip TTA's mirror images (0 = configs/drive.py's)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.features < 0:
        parser.error("--steps must be >= 1, --warmup >= 0 and --features >= 0.")
    if args.dropout is not None and not 0.0 <= args.dropout < 1.0:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}.")
    return args


# ---- this machine's fp32 peak: cores x clock x SIMD lanes x 2 (FMA) x 2 FMA units per core -----

def simd_fp32_lanes(cpu_flags: set[str]) -> int:
    """fp32 lanes of the widest fused multiply-add the CPU advertises."""
    if "avx512f" in cpu_flags:
        return 16
    if {"avx2", "fma"} <= cpu_flags:
        return 8
    return 4


def cpu_clock_mhz(cpuinfo: str, max_khz: str | None) -> float:
    """The rated maximum clock if the kernel exposes it, else what /proc/cpuinfo reports
    (virtual machines often hide cpufreq; their /proc/cpuinfo shows the nominal clock)."""
    if max_khz:
        return int(max_khz) / 1e3
    match = re.search(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.MULTILINE)
    if not match:
        raise ValueError("No 'cpu MHz' line in /proc/cpuinfo; cannot estimate the peak.")
    return float(match.group(1))


def peak_gflops(cpuinfo: str, max_khz: str | None, cores: int) -> tuple[float, str]:
    """(fp32 GFLOP/s peak, the formula with its numbers) from /proc/cpuinfo's text.

    The same estimate as the peer benchmarks (../shared/bench/common.py), so that shares of it
    compare. It is a paper ceiling: on the Zen 4 host of README's Speed (2.6 GHz nominal) an
    AVX-512 FMA loop (../shared/bench/fma_peak.c) reached 114 GFLOP/s on one idle core, 69% of
    the per-core 166 there, since Zen 4 issues one 512-bit FMA per cycle, not two.
    """
    flags_line = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    lanes = simd_fp32_lanes(set(flags_line.group(1).split()) if flags_line else set())
    mhz = cpu_clock_mhz(cpuinfo, max_khz)
    peak = cores * mhz / 1e3 * lanes * 2 * 2
    return peak, f"{cores} cores x {mhz / 1e3:.2f} GHz x {lanes} fp32 lanes x 2 (FMA) x 2 FMA units"


def machine_peak_gflops() -> tuple[float, str]:
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    return peak_gflops(Path("/proc/cpuinfo").read_text(),
                       max_freq.read_text().strip() if max_freq.exists() else None,
                       len(os.sched_getaffinity(0)))


# ---- the project's steps, compiled once ---------------------------------------------------------

def synthetic_batch(batch_size: int, image_shape: tuple[int, int, int]) -> dict:
    rng = np.random.default_rng(0)
    return {"image": rng.normal(size=(batch_size, *image_shape)).astype(np.float32),
            "mask": (rng.random((batch_size, *image_shape[:2], 1)) > 0.8).astype(np.float32),
            "labelled": np.ones(batch_size, np.float32)}


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def _with_conv(config, conv: str):
    """A copy of `config` with convolutions `conv` (the original stays as it is)."""
    config = config.copy_and_resolve_references()
    config.conv = conv
    return config


def compile_steps(config, mesh, image_shape, batch: dict, conv: str = "xla"):
    """The initial state and AOT-compiled train step and predict (as train.Experiment builds
    them), with their compile seconds and the forward pass's XLA cost analysis. `conv`: the
    convolution implementation (onednn_conv.with_conv)."""
    xla_model = train.build_model(_with_conv(config, "xla"))
    tx = train.make_optimizer(config)
    model = onednn_conv.with_conv(xla_model, conv)
    replicated = parallel.replicated(mesh)
    root_key = jax.random.key(config.seed)
    state = jax.jit(functools.partial(train.create_train_state, model, tx, image_shape=image_shape),
                    out_shardings=replicated)(jax.random.fold_in(root_key, 0))
    train_step = jax.jit(
        functools.partial(train.train_step, model=model, tx=tx, batch_loss=train.segmentation_loss(config.train.loss),
                          dropout_key=jax.random.fold_in(root_key, 1)),
        donate_argnums=(0,), out_shardings=(replicated, replicated))
    predict = jax.jit(functools.partial(train.predict_probabilities, model=model),
                      out_shardings=parallel.batch_sharded(mesh))
    compiled_train, train_seconds = timed(lambda: train_step.lower(state, batch).compile())
    compiled_predict, predict_seconds = timed(lambda: predict.lower(state, batch["image"]).compile())
    # Cost analysis counts one device's share of the partitioned program. It does not see into
    # oneDNN's custom calls: the FLOPs are then those of the same predict with XLA's convs.
    costed = compiled_predict if model is xla_model else jax.jit(
        functools.partial(train.predict_probabilities, model=xla_model),
        out_shardings=parallel.batch_sharded(mesh)).lower(state, batch["image"]).compile()
    forward_flops = costed.cost_analysis()["flops"] * mesh.size / len(batch["image"])
    return state, compiled_train, compiled_predict, {
        "train_compile_seconds": train_seconds, "predict_compile_seconds": predict_seconds,
        "forward_gflops_per_image": forward_flops / 1e9,
        "params": sum(leaf.size for leaf in jax.tree.leaves(state.params))}


def median_seconds(call, warmup: int, steps: int) -> float:
    """Median wall time of `steps` calls of `call` (which blocks until done), after `warmup`."""
    for _ in range(warmup):
        call()
    return statistics.median(timed(call)[1] for _ in range(steps))


def time_train_and_predict(state, train_step, predict, batch: dict, args):
    """(median train step s, median predict s, the trained state) on one fixed global batch."""
    def train_call():
        nonlocal state
        state, step_metrics = train_step(state, batch)
        jax.block_until_ready((state, step_metrics))

    train_seconds = median_seconds(train_call, args.warmup, args.steps)
    predict_seconds = median_seconds(lambda: predict(state, batch["image"]).block_until_ready(),
                                     args.warmup, args.steps)
    return train_seconds, predict_seconds, state


def time_pipeline_fed_steps(state, train_step, batches, mesh, keys, warmup: int, steps: int):
    """(share of step time spent waiting in `next(batches)`, step seconds) as training feeds it.

    Each step blocks before the next batch is asked for, so a wait counts only when the
    pipeline's background threads (prefetch) did not have the batch ready while the step ran.
    """
    waits, totals = [], []
    for index in range(warmup + steps):
        start = time.perf_counter()
        local_batch = next(batches)
        waited = time.perf_counter() - start
        global_batch = parallel.to_global_batch({key: local_batch[key] for key in keys}, mesh)
        state, step_metrics = train_step(state, global_batch)
        jax.block_until_ready((state, step_metrics))
        if index >= warmup:
            waits.append(waited)
            totals.append(time.perf_counter() - start)
    return sum(waits) / sum(totals), statistics.median(totals)


def pipeline_input_wait(config, mesh, image_shape, state, train_step, keys, args):
    """Input-wait share and images/s fed by `pipeline.train_batches`, or None with the reason
    when the dataset's images are not of this benchmark's shape (the pipeline does not resize)."""
    builder = datasets.get_builder(config.dataset.name, data_dir=config.dataset.data_dir,
                                   manual_dir=config.dataset.manual_dir)
    native_shape = tuple(builder.info.features["image"].shape)
    if native_shape != image_shape:
        return None, (f"{config.dataset.name} images are {native_shape}, not {image_shape}: "
                      "the pipeline is timed at its native size only")
    batches = pipeline.train_batches(builder, config, start_step=0,
                                     local_batch_size=parallel.local_batch_size(config.train.batch_size, mesh))
    share, step_seconds = time_pipeline_fed_steps(state, train_step, batches, mesh, keys,
                                                  args.warmup, args.steps)
    return {"input_wait_share": share, "pipeline_train_img_per_s": config.train.batch_size / step_seconds}, ""


def reference_run(args, channels: int) -> tuple[dict | None, str]:
    """The peer U-Net of `args.reference_dir` timed in a child process (same size, batch, steps).

    A child, not an import: the peer script runs its benchmark at import and parses its own
    command line. It gets this process's cores; its warm-up count includes its compile call.
    """
    script = Path(args.reference_dir) / REFERENCE_SCRIPT
    if not args.reference:
        return None, "not asked for (--no-reference)"
    if args.model != "unet" or channels != 1 or args.features or args.dropout is not None:
        return None, ("the peer implements the 1-channel seed U-Net only (--model=unet, default width "
                      "and dropout)")
    if not script.exists():
        return None, f"{script} not found"
    command = [sys.executable, str(script), f"--size={args.size}", f"--batch={args.batch}",
               f"--steps={args.steps}", f"--warmup={args.warmup + 1}",
               f"--threads={len(os.sched_getaffinity(0))}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=script.parent)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    peer = json.loads(result.stdout.strip().splitlines()[-1])
    return {"implementation": f"plain jitted Flax, {script}", "devices": 1,
            "train_img_per_s": peer["train_img_per_s"], "infer_img_per_s": peer["infer_img_per_s"],
            "params": peer["params"]}, ""


DRIVE_IMAGE_SHAPE = (584, 565)  # height, width


def drive_inference_config(features: int = 0, conv: str | None = None, dtype: str | None = None,
                           flip_views: int = 0):
    """configs/drive.py's config, at base width `features` and with `flip_views` flip TTA views
    unless 0 (its own then), with convolutions `conv` and compute dtype `dtype` unless None (its
    own then)."""
    from configs import drive
    config = drive.get_config()
    if features:
        config.model.features = features
    if flip_views:
        config.inference.flip_views = flip_views
    if conv is not None:
        config.conv = conv
    if dtype is not None:
        config.dtype = dtype
    return config


def drive_image_seconds(warmup: int, steps: int, features: int = 0, conv: str | None = None,
                        dtype: str | None = None, flip_views: int = 0) -> float:
    """Median seconds of configs/drive.py's evaluation inference (its model freshly initialised,
    at base width `features` unless 0, its sliding window and flip TTA, jitted; `conv`, `dtype`
    and `flip_views` as in `drive_inference_config`) on one DRIVE-sized image, after compile + warm-up,
    with every core on its oneDNN calls, as `--mode=predict` runs one image (one CPU device)."""
    onednn_conv.set_num_threads(len(os.sched_getaffinity(0)))
    config = drive_inference_config(features, conv, dtype, flip_views)
    model = train.build_model(config)
    variables = model.init(jax.random.key(0), np.zeros((1, 64, 64, 1), np.float32), train=False)
    variables = {key: variables[key] for key in ("params", "batch_stats")}
    predict = jax.jit(inference.make_predictor(model, config.inference))
    image = np.random.default_rng(0).normal(size=(1, *DRIVE_IMAGE_SHAPE, 1)).astype(np.float32)
    predict(variables, image).block_until_ready()  # compile
    return median_seconds(lambda: predict(variables, image).block_until_ready(), warmup, steps)


def benchmark_config(args: argparse.Namespace):
    """The default config with the model, batch, dtype, loss, width and dropout the arguments ask for."""
    config = default.get_config()
    config.model.name = args.model
    config.train.batch_size = args.batch
    config.dataset.data_dir = args.data_dir
    config.dtype = args.dtype
    config.train.loss = args.loss
    if args.features:
        config.model.features = args.features
    if args.dropout is not None:
        config.model.dropout = args.dropout
    return config


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    config = benchmark_config(args)
    info = models.info(args.model)
    if info.task != "segmentation":
        raise SystemExit(f"Model {args.model!r} is a {info.task} model; train.train_step trains "
                         "segmentation models (logits shaped like the mask) only.")
    channels = args.channels or info.input_shape[-1]
    image_shape = (args.size, args.size, channels)
    # Before anything starts the backend: how many devices to make of the host CPU.
    jax.config.update("jax_num_cpu_devices", args.devices or parallel.cpu_device_count(config))
    mesh = parallel.make_mesh(args.devices)
    parallel.local_batch_size(args.batch, mesh)  # a batch that does not split fails here, clearly
    print(f"JAX {jax.__version__} on {jax.default_backend()}: {args.model}, {image_shape} images, "
          f"global batch {args.batch} over {mesh.size} device(s), {args.conv} convolutions, {args.dtype}, "
          f"loss {args.loss}")

    batch = synthetic_batch(args.batch, image_shape)
    global_batch = parallel.to_global_batch(batch, mesh)
    state, train_step, predict, compiled = compile_steps(config, mesh, image_shape, global_batch,
                                                         args.conv)
    compile_seconds = compiled["train_compile_seconds"] + compiled["predict_compile_seconds"]
    print(f"{compiled['params']:,} parameters; compiled in {compile_seconds:.1f} s (train step "
          f"{compiled['train_compile_seconds']:.1f} s, predict {compiled['predict_compile_seconds']:.1f} s)")
    train_seconds, predict_seconds, state = time_train_and_predict(state, train_step, predict,
                                                                   global_batch, args)
    train_img_per_s, infer_img_per_s = args.batch / train_seconds, args.batch / predict_seconds
    forward_gflops = compiled["forward_gflops_per_image"]
    train_gflops_per_s = TRAIN_FLOPS_PER_FORWARD * forward_gflops * train_img_per_s
    print(f"train: {train_seconds * 1e3:.0f} ms/step, {train_img_per_s:.1f} img/s, "
          f"{train_gflops_per_s:.1f} GFLOP/s (3 x {forward_gflops:.3f} forward GFLOPs per image, "
          "XLA cost analysis)")
    print(f"infer: {predict_seconds * 1e3:.0f} ms/batch, {infer_img_per_s:.1f} img/s")

    if jax.default_backend() == "cpu":
        peak, formula = machine_peak_gflops()
        print(f"peak: {peak:.0f} GFLOP/s fp32 = {formula}; train reaches {train_gflops_per_s / peak:.1%}")
    else:
        peak, formula = None, ""
        print("peak: not estimated off the CPU")

    fed, reason = (pipeline_input_wait(config, mesh, image_shape, state, train_step, list(batch), args)
                   if args.pipeline else (None, "not asked for (--no-pipeline)"))
    print(f"input pipeline: {fed['pipeline_train_img_per_s']:.1f} img/s, the step waits "
          f"{fed['input_wait_share']:.1%} of its time for data" if fed else f"input pipeline: {reason}")

    reference, reason = reference_run(args, channels)
    ratio = (None if reference is None else
             {"train": train_img_per_s / reference["train_img_per_s"],
              "infer": infer_img_per_s / reference["infer_img_per_s"]})
    print(f"reference ({reference['implementation']}): train {reference['train_img_per_s']} img/s, "
          f"infer {reference['infer_img_per_s']} img/s; this step is {ratio['train']:.2f}x (train), "
          f"{ratio['infer']:.2f}x (infer)" if reference else f"reference: {reason}")

    flip_views = args.flip_views or drive_inference_config().inference.flip_views
    drive_seconds = (drive_image_seconds(args.warmup, args.steps, args.features, args.conv, args.dtype,
                                         flip_views)
                     if args.sliding_window else None)
    print(f"DRIVE image (565x584, configs/drive.py inference: sliding window + {flip_views}-view flip TTA): "
          f"{drive_seconds:.3f} s" if drive_seconds is not None else "DRIVE image: not asked for (--sliding_window)")

    peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu = onednn_conv.host_cpu()
    print(f"cpu: {cpu}")
    print(json.dumps({
        "cpu": cpu,
        "model": args.model, "size": args.size, "batch": args.batch, "channels": channels,
        "devices": mesh.size, "backend": jax.default_backend(), "params": compiled["params"],
        "conv": args.conv,
        "dtype": args.dtype, "loss": args.loss, "features": args.features or None,
        "dropout": args.dropout,
        "train_img_per_s": round(train_img_per_s, 2), "infer_img_per_s": round(infer_img_per_s, 2),
        "forward_gflops_per_image": round(forward_gflops, 4),
        "train_gflops_per_s": round(train_gflops_per_s, 1),
        "peak_gflops": None if peak is None else round(peak, 1),
        "peak_share": None if peak is None else round(train_gflops_per_s / peak, 4),
        "input_wait_share": None if fed is None else round(fed["input_wait_share"], 4),
        "pipeline_train_img_per_s": None if fed is None else round(fed["pipeline_train_img_per_s"], 2),
        "compile_seconds": round(compile_seconds, 2), "peak_memory_mb": round(peak_memory_mb, 1),
        "steps": args.steps, "warmup": args.warmup,
        "reference": reference,
        "drive_image_seconds": None if drive_seconds is None else round(drive_seconds, 3),
        "drive_flip_views": None if drive_seconds is None else flip_views,
        "ratio_vs_reference": None if ratio is None else {key: round(value, 3) for key, value in ratio.items()},
    }))


if __name__ == "__main__":
    main(sys.argv[1:])
