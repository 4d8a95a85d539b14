"""scripts/benchmark.py: its JSON contract on a tiny run, and the peak estimate it divides by."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from retina_jax.ops import onednn_conv

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "benchmark.py"
KEYS = {"model", "size", "batch", "devices", "train_img_per_s", "infer_img_per_s",
        "forward_gflops_per_image", "train_gflops_per_s", "peak_gflops", "peak_share",
        "input_wait_share", "compile_seconds", "peak_memory_mb", "reference", "ratio_vs_reference",
        "conv", "dtype", "loss", "features", "dropout", "cpu"}
POSITIVE = ("train_img_per_s", "infer_img_per_s", "forward_gflops_per_image", "train_gflops_per_s",
            "peak_gflops", "peak_share", "compile_seconds", "peak_memory_mb", "pipeline_train_img_per_s")


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_prints_the_json_contract_last(tfds_dir, vessel_builder):
    # 64x64 is the vessel set's own size, so the input pipeline is timed too; 2 host devices.
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--size=64", "--batch=4", "--steps=2", "--warmup=1", "--devices=2",
         "--no-reference", f"--data_dir={tfds_dir}", "--loss=bce_dice_cldice"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert KEYS <= set(report)
    assert (report["model"], report["size"], report["batch"], report["devices"]) == ("unet", 64, 4, 2)
    assert (report["loss"], report["features"], report["dropout"]) == ("bce_dice_cldice", None, None)
    assert all(report[key] > 0 for key in POSITIVE), report
    assert 0 <= report["input_wait_share"] < 1
    assert report["forward_gflops_per_image"] == pytest.approx(0.36, rel=0.1)  # the seed U-Net at 64x64
    assert report["reference"] is None and report["ratio_vs_reference"] is None
    assert any(line.startswith("peak:") for line in lines[:-1])  # the formula is printed
    assert report["cpu"] == onednn_conv.host_cpu()  # the machine the figures were measured on


AVX512_CPUINFO = "processor\t: 0\ncpu MHz\t\t: 2596.140\nflags\t\t: fpu sse fma avx avx2 avx512f\n"


def test_peak_is_cores_times_clock_times_fma_width():
    benchmark = load_benchmark()
    peak, formula = benchmark.peak_gflops(AVX512_CPUINFO, None, cores=2)
    assert peak == pytest.approx(2 * 2.59614 * 16 * 2 * 2)
    assert "16 fp32 lanes" in formula
    assert benchmark.peak_gflops(AVX512_CPUINFO, "3000000", cores=1)[0] == pytest.approx(3.0 * 16 * 4)
    avx2 = AVX512_CPUINFO.replace(" avx512f", "")
    assert benchmark.peak_gflops(avx2, None, cores=1)[0] == pytest.approx(2.59614 * 8 * 4)
    with pytest.raises(ValueError, match="cpu MHz"):
        benchmark.peak_gflops("flags\t: avx2 fma\n", None, cores=1)


def test_features_set_the_width_and_leave_the_peer_out():
    benchmark = load_benchmark()
    args = benchmark.parse_args(["--features=8", "--loss=cldice"])
    config = benchmark.benchmark_config(args)
    assert (config.model.features, config.train.loss) == (8, "cldice")
    assert benchmark.reference_run(args, channels=1) == (
        None, "the peer implements the 1-channel seed U-Net only (--model=unet, default width and dropout)")
    assert benchmark.parse_args([]).loss == "bce_dice"
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--loss=focal"])


def test_dropout_sets_the_rate_and_leaves_the_peer_out():
    benchmark = load_benchmark()
    assert benchmark.benchmark_config(benchmark.parse_args([])).model.dropout is None  # the model's own
    args = benchmark.parse_args(["--dropout=0"])
    assert benchmark.benchmark_config(args).model.dropout == 0.0
    assert benchmark.reference_run(args, channels=1)[0] is None
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--dropout=1"])


def test_classification_models_are_refused_with_a_reason():
    with pytest.raises(SystemExit, match="resnet18.*classification"):
        load_benchmark().main(["--model=resnet18"])


def test_drive_image_timing_uses_the_drive_inference_at_the_asked_width():
    benchmark = load_benchmark()
    from configs import drive
    own = drive.get_config()
    assert benchmark.drive_inference_config(0).model.features == own.model.features
    widened = benchmark.drive_inference_config(12)
    assert widened.model.features == 12
    assert widened.inference.to_dict() == own.inference.to_dict()
    assert widened.model.depth == own.model.depth
    assert (widened.conv, widened.dtype) == (own.conv, own.dtype)
    timed = benchmark.drive_inference_config(0, "onednn_bf16", "bfloat16")
    assert (timed.conv, timed.dtype) == ("onednn_bf16", "bfloat16")
    assert benchmark.drive_inference_config(0, flip_views=2).inference.flip_views == 2
    assert timed.inference.flip_views == own.inference.flip_views == 4


def test_the_cpu_is_named_with_its_vector_and_bfloat16_instructions():
    zen4 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
            "model name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 fma avx512f avx512_bf16\n"
            "processor\t: 1\nmodel name\t: AMD EPYC 9R14\n")
    assert (onednn_conv.describe_cpu(zen4, 2)
            == "AMD EPYC 9R14 (family 25, model 17), 2 cores, avx512f, bfloat16: avx512_bf16")
    assert (onednn_conv.describe_cpu(AVX512_CPUINFO.replace(" avx512f", ""), 1)
            == "unknown CPU, 1 cores, avx2, no bfloat16")
    assert onednn_conv.describe_cpu("", 4) == "unknown CPU, 4 cores, no AVX, no bfloat16"
