"""oneDNN convolutions (retina_jax/ops/onednn_conv.py) against XLA's, forward and gradients."""
import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from retina_jax.ops import onednn_conv

needs_lib = pytest.mark.skipif(
    not onednn_conv.available(),
    reason=f"oneDNN conv library not built (scripts/build_onednn.sh): {onednn_conv.unavailable_reason()}")

NHWC = ("NHWC", "HWIO", "NHWC")
TOL = dict(rtol=2e-5, atol=2e-5)


def _data(x_shape, w_shape, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal(x_shape, dtype=np.float32)),
            jnp.asarray(rng.standard_normal(w_shape, dtype=np.float32) / np.sqrt(np.prod(w_shape[:3]))))


def _value_and_grads(conv_fn, x, w):
    """Output, and the gradients of a random linear functional of it w.r.t. x and w, inside jit."""
    def loss(x, w):
        y = conv_fn(x, w)
        probe = jnp.sin(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)
        return jnp.sum(y * probe), y
    (_, y), (gx, gw) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, w)
    return y, gx, gw


def _assert_close(ours, ref):
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL)


@needs_lib
@pytest.mark.parametrize("hw, k, stride, padding, cin, cout", [
    ((8, 8), 3, 1, "SAME", 3, 5),
    ((9, 7), 3, 1, "SAME", 4, 6),      # odd sizes
    ((9, 7), 3, 2, "SAME", 4, 6),      # stride 2, odd: asymmetric padding
    ((8, 8), 3, 2, "SAME", 2, 3),
    ((7, 7), 1, 1, "SAME", 5, 1),      # 1x1 head
    ((7, 6), 1, 2, "VALID", 3, 2),
    ((10, 9), 3, 1, "VALID", 2, 4),
    ((6, 6), 3, 1, [(2, 0), (1, 1)], 2, 2),
])
def test_conv_matches_xla(hw, k, stride, padding, cin, cout):
    x, w = _data((2, *hw, cin), (k, k, cin, cout))
    kw = dict(window_strides=(stride, stride), padding=padding, dimension_numbers=NHWC)
    ours = _value_and_grads(functools.partial(onednn_conv.conv_general_dilated, **kw), x, w)
    ref = _value_and_grads(functools.partial(lax.conv_general_dilated, **kw), x, w)
    _assert_close(ours, ref)


@needs_lib
@pytest.mark.parametrize("hw, k, stride, padding, cin, cout, transpose_kernel", [
    ((4, 4), 3, 2, "SAME", 6, 3, False),    # the U-Net's up-sampling
    ((5, 3), 3, 2, "SAME", 4, 2, False),    # odd sizes
    ((4, 5), 3, 2, "VALID", 3, 4, False),
    ((4, 4), 2, 2, "SAME", 3, 3, False),
    ((5, 5), 3, 1, "SAME", 2, 3, False),
    ((4, 4), 3, 2, "SAME", 4, 2, True),
    ((4, 4), 1, 2, "SAME", 3, 2, False),    # negative oneDNN padding: falls back to XLA
])
def test_conv_transpose_matches_xla(hw, k, stride, padding, cin, cout, transpose_kernel):
    w_shape = (k, k, cout, cin) if transpose_kernel else (k, k, cin, cout)
    x, w = _data((2, *hw, cin), w_shape, seed=1)
    kw = dict(strides=(stride, stride), padding=padding, dimension_numbers=NHWC,
              transpose_kernel=transpose_kernel)
    ours = _value_and_grads(functools.partial(onednn_conv.conv_transpose, **kw), x, w)
    ref = _value_and_grads(functools.partial(lax.conv_transpose, **kw), x, w)
    _assert_close(ours, ref)


needs_bf16 = pytest.mark.skipif(not onednn_conv.cpu_has_bf16(),
                                reason="this CPU has no bfloat16 instructions: bf16 convs stay on XLA")


def _bf16_against_float32(conv_fn, x, w):
    """Ours in bfloat16 against XLA in float32 on the same bf16-rounded inputs: values and
    gradients must be bfloat16, within bfloat16's resolution of the float32 result."""
    x16, w16 = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    ours = _value_and_grads(conv_fn(onednn_conv), x16, w16)
    ref = _value_and_grads(conv_fn(lax), x16.astype(jnp.float32), w16.astype(jnp.float32))
    for a, b in zip(ours, ref):
        assert a.dtype == jnp.bfloat16 and a.shape == b.shape
        scale = float(jnp.abs(b).max())
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b), rtol=2 ** -7, atol=scale * 2 ** -7)


@needs_lib
@needs_bf16
@pytest.mark.parametrize("stride", [1, 2])
def test_bfloat16_conv_runs_onednn_and_matches_float32(stride):
    x, w = _data((2, 9, 8, 16), (3, 3, 16, 8), seed=2)

    def conv_fn(ops):
        return functools.partial(ops.conv_general_dilated, window_strides=(stride, stride),
                                 padding="SAME", dimension_numbers=NHWC)
    hlo = jax.jit(conv_fn(onednn_conv)).lower(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)).as_text()
    assert "retina_onednn_conv_fwd" in hlo and "convolution" not in hlo
    _bf16_against_float32(conv_fn, x, w)


@needs_lib
@needs_bf16
def test_bfloat16_conv_transpose_matches_float32():
    x, w = _data((2, 4, 5, 16), (3, 3, 16, 8), seed=3)
    _bf16_against_float32(lambda ops: functools.partial(
        ops.conv_transpose, strides=(2, 2), padding="SAME", dimension_numbers=NHWC), x, w)


def _rounded(a):
    return a.astype(jnp.bfloat16).astype(jnp.float32)


@needs_lib
@needs_bf16
@pytest.mark.parametrize("transpose", [False, True])
def test_bfloat16_operands_give_float32_results_of_the_rounded_operands(transpose):
    """operand_dtype='bfloat16' (conv='onednn_bf16'): float32 in and out; the output is XLA's
    float32 convolution of the bf16-rounded operands (float32 accumulation); output and
    gradients are within bfloat16's resolution of the float32 ones, and not equal to them."""
    x, w = _data((2, 9, 8, 16), (3, 3, 16, 8), seed=4)
    if transpose:
        def conv_fn(ops, **kw):
            return functools.partial(ops.conv_transpose, strides=(2, 2), padding="SAME",
                                     dimension_numbers=NHWC, **kw)
    else:
        def conv_fn(ops, **kw):
            return functools.partial(ops.conv_general_dilated, window_strides=(2, 2),
                                     padding="SAME", dimension_numbers=NHWC, **kw)
    ours = _value_and_grads(conv_fn(onednn_conv, operand_dtype="bfloat16"), x, w)
    emulated = _value_and_grads(lambda x, w: conv_fn(lax)(_rounded(x), _rounded(w)), x, w)
    exact = _value_and_grads(conv_fn(lax), x, w)
    assert all(a.dtype == jnp.float32 for a in ours)
    np.testing.assert_allclose(ours[0], emulated[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(ours, exact):
        scale = float(jnp.abs(b).max())
        np.testing.assert_allclose(a, b, atol=scale * 2 ** -7)
        assert float(jnp.abs(a - b).max()) > 0  # bfloat16 products: not the float32 result


@needs_lib
@needs_bf16
def test_onednn_bf16_model_keeps_float32_parameters_and_outputs_close_to_float32():
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(8, (3, 3))(x))
            return nn.ConvTranspose(4, (3, 3), strides=(2, 2), padding="SAME")(x)
    model, (x, _) = Net(), _data((2, 8, 8, 3), (1, 1, 1, 1))
    ours = onednn_conv.with_conv(model, "onednn_bf16")
    params = ours.init(jax.random.key(0), x)
    assert jax.tree.map(lambda a: a.dtype, params) == jax.tree.map(
        lambda a: a.dtype, model.init(jax.random.key(0), x))
    hlo = jax.jit(ours.apply).lower(params, x).as_text()
    assert "retina_onednn_conv" in hlo and "bf16" in hlo
    y, ref = ours.apply(params, x), model.apply(params, x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, ref, atol=float(jnp.abs(ref).max()) * 2 ** -6)


@needs_lib
def test_onednn_bf16_runs_float32_onednn_without_bf16_instructions(monkeypatch, caplog):
    monkeypatch.setattr(onednn_conv, "cpu_has_bf16", lambda: False)
    monkeypatch.setitem(onednn_conv._state, "warned_bf16", False)
    with caplog.at_level("WARNING"):
        assert onednn_conv.effective("onednn_bf16") == "onednn"
        assert onednn_conv.effective("onednn_bf16") == "onednn"
    assert sum("no bfloat16 instructions" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ValueError, match="conv implementation must be one of"):
        onednn_conv.effective("bf16")


@needs_lib
def test_bfloat16_stays_on_xla_without_bf16_instructions(monkeypatch):
    x, w = _data((1, 8, 8, 2), (3, 3, 2, 4))
    conv = jax.jit(functools.partial(onednn_conv.conv_general_dilated, window_strides=(1, 1),
                                     padding="SAME", dimension_numbers=NHWC))
    monkeypatch.setattr(onednn_conv, "cpu_has_bf16", lambda: False)
    hlo = conv.lower(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)).as_text()
    assert "retina_onednn_conv" not in hlo and "convolution" in hlo


@needs_lib
def test_uses_the_custom_call_on_cpu_only():
    x, w = _data((1, 8, 8, 2), (3, 3, 2, 4))
    conv = functools.partial(onednn_conv.conv_general_dilated, window_strides=(1, 1),
                             padding="SAME", dimension_numbers=NHWC)
    hlo = jax.jit(conv).lower(x, w).as_text()
    assert "retina_onednn_conv_fwd" in hlo
    assert "convolution" not in hlo  # the XLA branch is not lowered for CPU


@needs_lib
def test_backward_weights_take_blocked_activations_exactly_where_the_nhwc_kernel_is_avx2_direct():
    """On an AVX2-only CPU the 16-channel weight gradient runs on blocked activations (reordered
    in the call) and still matches XLA's; elsewhere activations stay NHWC."""
    x, w = _data((2, 12, 12, 16), (3, 3, 16, 16), seed=3)
    kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC)
    ours = _value_and_grads(functools.partial(onednn_conv.conv_general_dilated, **kw), x, w)
    ref = _value_and_grads(functools.partial(lax.conv_general_dilated, **kw), x, w)
    _assert_close(ours, ref)
    backward_weights = [line for line in onednn_conv.describe()
                        if line.startswith("bwd_weights N2 12x12 16->16 k3 s1 f32->f32")]
    assert len(backward_weights) == 1
    implementation = backward_weights[0].split(": ", 1)[1]
    assert ("(blocked activations)" in implementation) == implementation.startswith("jit:avx2 ")


@needs_lib
def test_flax_modules_match():
    import flax.linen as nn
    x, _ = _data((2, 8, 8, 3), (1, 1, 1, 1))
    for module, ours in [
        (nn.Conv(4, (3, 3), strides=2), nn.Conv(4, (3, 3), strides=2,
                                                conv_general_dilated=onednn_conv.conv_general_dilated)),
    ]:
        params = module.init(jax.random.key(0), x)
        np.testing.assert_allclose(np.asarray(ours.apply(params, x)),
                                   np.asarray(module.apply(params, x)), **TOL)


@needs_lib
def test_batch_sharded_over_two_devices():
    """A batch sharded over a 2-device mesh stays sharded: per-device calls, all-reduced kernel grad."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from jax import lax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from retina_jax.ops import onednn_conv
        mesh = Mesh(np.array(jax.devices()), ("data",))
        rng = np.random.default_rng(0)
        x = jax.device_put(rng.standard_normal((4, 8, 8, 3), dtype=np.float32), NamedSharding(mesh, P("data")))
        w = jax.device_put(rng.standard_normal((3, 3, 3, 5), dtype=np.float32), NamedSharding(mesh, P()))
        def grads(conv, transpose):
            def loss(x, w):
                if transpose:
                    y = conv(x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
                else:
                    y = conv(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
                return jnp.sum(jnp.sin(y))
            fn = jax.jit(jax.grad(loss, argnums=(0, 1)))
            return fn, fn(x, w)
        for transpose in (False, True):
            ours, ref = ((onednn_conv.conv_transpose, lax.conv_transpose) if transpose else
                         (onednn_conv.conv_general_dilated, lax.conv_general_dilated))
            fn, (gx, gw) = grads(ours, transpose)
            _, (rx, rw) = grads(ref, transpose)
            np.testing.assert_allclose(gx, rx, rtol=2e-5, atol=2e-5)
            np.testing.assert_allclose(gw, rw, rtol=2e-5, atol=2e-5)
            hlo = fn.lower(x, w).compile().as_text()
            assert "all-gather" not in hlo and "retina_onednn_conv" in hlo, hlo
        print("OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


@needs_lib
def test_with_conv_keeps_the_model_and_matches_xla():
    from retina_jax import models
    model = models.get_model("unet", features=4, depth=2)
    ours = onednn_conv.with_conv(model, "onednn")
    assert type(ours).__name__ == type(model).__name__ and isinstance(ours, type(model))
    assert onednn_conv.with_conv(model, "xla") is model
    x, _ = _data((2, 16, 16, 1), (1, 1, 1, 1))
    variables = model.init(jax.random.key(0), x, train=False)
    same = jax.tree.map(lambda a, b: bool((a == b).all()), variables, ours.init(jax.random.key(0), x, train=False))
    assert jax.tree.all(same)  # same parameter tree and values: checkpoints are interchangeable

    def loss(module, params):
        logits, _ = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                                 rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])
        return jnp.mean(jnp.sin(logits)), logits

    grads = {}
    for name, module in (("ours", ours), ("xla", model)):
        fn = jax.jit(jax.value_and_grad(functools.partial(loss, module), has_aux=True))
        grads[name] = fn(variables["params"])
        uses_onednn = "retina_onednn_conv" in fn.lower(variables["params"]).as_text()
        assert uses_onednn == (name == "ours")
    for a, b in zip(jax.tree.leaves(grads["ours"]), jax.tree.leaves(grads["xla"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_falls_back_to_xla_without_the_library(monkeypatch, caplog):
    monkeypatch.setattr(onednn_conv, "LIB_PATH", onednn_conv.LIB_PATH.with_name("absent.so"))
    monkeypatch.setattr(onednn_conv, "_state", {"lib": None, "error": None, "tried": False})
    with caplog.at_level("WARNING"):
        assert not onednn_conv.available()
    assert "oneDNN convolutions unavailable" in caplog.text and "build_onednn.sh" in caplog.text
    x, w = _data((1, 8, 8, 2), (3, 3, 2, 4))
    conv = functools.partial(onednn_conv.conv_general_dilated, window_strides=(1, 1), padding="SAME",
                             dimension_numbers=NHWC)
    hlo = jax.jit(conv).lower(x, w).as_text()
    assert "convolution" in hlo and "retina_onednn_conv" not in hlo
    ref = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)
    np.testing.assert_allclose(np.asarray(jax.jit(conv)(x, w)), np.asarray(ref), **TOL)
    from retina_jax import models
    model = models.get_model("unet", features=4, depth=2)
    assert onednn_conv.with_conv(model, "onednn") is model


@needs_lib
def test_config_switch_trains_like_xla_and_keeps_the_checkpoint_format(smoke_config):
    from retina_jax import parallel, train
    from retina_jax.data import pipeline
    results = {}
    for conv in ("xla", "onednn"):
        smoke_config.conv = conv
        experiment = train.Experiment(smoke_config)
        batch = next(pipeline.train_batches(experiment.builder, smoke_config, start_step=0,
                                            local_batch_size=experiment.local_batch_size(8)))
        _, step_metrics = experiment.train_step(experiment.initial_state,
                                                parallel.to_global_batch(batch, experiment.mesh))
        results[conv] = (experiment.run_info["model"], jax.device_get(step_metrics))
    assert results["onednn"][0] == results["xla"][0]  # checkpoints of either resume with the other
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(results["onednn"][1][key], results["xla"][1][key], rtol=1e-4)
