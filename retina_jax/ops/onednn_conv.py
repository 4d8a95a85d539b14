"""Optional oneDNN convolutions for XLA:CPU, through a JAX FFI custom call (prototype, issue 6).

`conv_general_dilated` is a drop-in for `lax.conv_general_dilated` as flax's `nn.Conv` and
`nn.ConvTranspose` (via `lax.conv_transpose`) call it: NHWC activations, HWIO kernels, float32
or bfloat16 (both operands of one type, the result and gradients of that type, as XLA's; bfloat16
on CPUs with bfloat16 instructions). `operand_dtype="bfloat16"` makes oneDNN multiply float32
operands rounded to bfloat16 and accumulate in float32 (`conv="onednn_bf16"`).
On CPU, when the compiled library (`scripts/build_onednn.sh`) loads, it runs:

- a plain convolution (lhs_dilation 1) as oneDNN forward, with a `custom_vjp` whose backward is
  oneDNN backward-data (input gradient) and backward-weights (kernel gradient);
- an input-dilated convolution (what `lax.conv_transpose` emits) as oneDNN backward-data of the
  matching strided convolution with the flipped kernel, with forward + backward-weights as its VJP.

Activations are passed as NHWC, except that on AVX2-only CPUs float32 backward-weights reorders
its two operands to oneDNN's blocked layout inside the call (its NHWC kernel there runs the
16- and 32-channel layers at about half speed; csrc/onednn_conv.cc, `BlockedActivationsFaster`).

Everything else (other layouts, mixed or other dtypes, kernel dilation, groups, or a build
that is absent) uses `lax.conv_general_dilated` unchanged, and on GPU/TPU
`jax.lax.platform_dependent` keeps XLA's native convolutions. The library is loaded lazily; when it
is absent one log line says so.
"""
import ctypes
import functools
import logging
import os
import pathlib
import platform

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

LIB_PATH = pathlib.Path(__file__).parent / "_build" / "libretina_onednn_conv.so"
_TARGETS = {"fwd": "RetinaOnednnConvFwd", "bwd_data": "RetinaOnednnConvBwdData",
            "bwd_weights": "RetinaOnednnConvBwdWeights"}
_PREFIX = "retina_onednn_conv_"
# bfloat16 goes to oneDNN only on CPUs with bf16 instructions (its avx512_core_bf16 / AMX
# kernels: about twice the float32 speed on this machine); elsewhere XLA keeps it.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
_state = {"lib": None, "error": None, "tried": False}
# Wrap the calls in `custom_partitioning` so that a batch sharded over a mesh stays sharded
# (without it XLA gathers the whole batch onto every device). Read at trace time.
PARTITIONED = os.environ.get("RETINA_ONEDNN_PARTITIONED", "1") == "1"
# Weight layout oneDNN gets: 0 = HWIO as stored (no reorder), 1 = the blocked layout oneDNN
# prefers (a reorder from/to HWIO on every call), 2 = HWIO unless that leaves oneDNN with a gemm
# or reference kernel, then blocked. Measured on the seed U-Net's convs: with HWIO, backward-data
# and most backward-weights fall back to gemm kernels (~10x slower); 1 and 2 are within noise,
# the reorders cost little. Read at trace time.
WEIGHTS_MODE = int(os.environ.get("RETINA_ONEDNN_WEIGHTS", "1"))


def load() -> bool:
    """Loads the library and registers its FFI targets once; False (logged once) if unavailable."""
    if not _state["tried"]:
        _state["tried"] = True
        try:
            if not LIB_PATH.exists():
                raise FileNotFoundError(f"{LIB_PATH} not built (run scripts/build_onednn.sh)")
            # OpenMP workers that sleep rather than spin between calls leave the cores to XLA's
            # own threads (the measurements were taken so). Read when libgomp loads.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            lib = ctypes.CDLL(str(LIB_PATH))
            for short, symbol in _TARGETS.items():
                jax.ffi.register_ffi_target(_PREFIX + short, jax.ffi.pycapsule(getattr(lib, symbol)),
                                            platform="cpu")
            _state["lib"] = lib
        except (OSError, AttributeError) as error:
            _state["error"] = str(error)
            logging.warning("oneDNN convolutions unavailable, using XLA's (on a CPU they train "
                            "at about half the speed): %s", error)
    return _state["lib"] is not None


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether /proc/cpuinfo lists a bfloat16 instruction set (False where it cannot be read)."""
    try:
        flags = set(pathlib.Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def describe_cpu(cpuinfo: str, cores: int) -> str:
    """One line naming the CPU that `cpuinfo` (/proc/cpuinfo's text) describes, for the records of
    timed runs: its model, `cores`, its widest vector instruction set and its bfloat16
    instructions, which set how fast training runs here (README, Speed: the same DRIVE step
    took 2.8x as long on an AVX2-only CPU as on one with AVX-512 bfloat16)."""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    vector = next((isa for isa in ("avx512f", "avx2", "avx") if isa in flags), "no AVX")
    bf16 = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    model = fields.get("model name", "unknown CPU")
    if "cpu family" in fields:
        model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return f"{model}, {cores} cores, {vector}, " + (f"bfloat16: {' '.join(bf16)}" if bf16 else "no bfloat16")


@functools.cache
def host_cpu() -> str:
    """`describe_cpu` of this machine (the platform's processor name where /proc/cpuinfo is absent)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        return describe_cpu(pathlib.Path("/proc/cpuinfo").read_text(), cores)
    except OSError:
        return f"{platform.processor() or 'unknown CPU'}, {cores} cores"


def supported_dtypes() -> tuple:
    return (jnp.float32, jnp.bfloat16) if cpu_has_bf16() else (jnp.float32,)


def available() -> bool:
    return load()


def unavailable_reason() -> str | None:
    load()
    return _state["error"]


def set_num_threads(n: int) -> None:
    """Threads each oneDNN call may use (0: OpenMP's default, i.e. OMP_NUM_THREADS or all cores)."""
    if load():
        _state["lib"].retina_onednn_set_num_threads(int(n))
        _state["threads"] = int(n)


def describe() -> list[str]:
    """One line per cached oneDNN primitive: kind, shape, implementation, weight layout."""
    if not load():
        return []
    fn = _state["lib"].retina_onednn_describe
    fn.restype = ctypes.c_char_p
    return [fn(i).decode() for i in range(_state["lib"].retina_onednn_cache_size())]


# ---- the three custom calls ---------------------------------------------------------------------
def _attrs(strides, pads):
    (pt, pb), (pl, pr) = pads
    return dict(sh=np.int64(strides[0]), sw=np.int64(strides[1]), pt=np.int64(pt),
                pb=np.int64(pb), pl=np.int64(pl), pr=np.int64(pr),
                weights_any=np.int64(WEIGHTS_MODE))


def _default_threads():
    """Once, at the first trace: RETINA_ONEDNN_THREADS, else the cores JAX's CPU devices share
    (each CPU device runs its own calls concurrently: 2 cores, 2 devices -> 1 thread per call)."""
    if _state.get("threads") is None:
        threads = int(os.environ.get("RETINA_ONEDNN_THREADS", "0")) or max(
            1, len(os.sched_getaffinity(0)) // max(1, jax.local_device_count("cpu")))
        set_num_threads(threads)


def _local_call(short, out_shape, out_dtype, strides, pads, a, b):
    _default_threads()
    out = jax.ShapeDtypeStruct(tuple(out_shape), out_dtype)
    return jax.ffi.ffi_call(_PREFIX + short, out, vmap_method="sequential")(
        a, b, **_attrs(strides, pads))


# Under a device mesh the batch may be sharded: each device then runs oneDNN on its own shard
# (weights replicated); the weight gradient is summed over the batch axes (an all-reduce).
def _batch_spec(arg_shapes):
    spec = getattr(arg_shapes[0].sharding, "spec", None)
    return spec[0] if spec is not None and len(spec) else None


def _partition(short, out_shape, out_dtype, strides, pads, mesh, arg_shapes, result_shape):
    batch = _batch_spec(arg_shapes)
    act = NamedSharding(mesh, P(batch))
    rep = NamedSharding(mesh, P())
    if short == "bwd_weights":
        axes = () if batch is None else (batch if isinstance(batch, tuple) else (batch,))

        def lower(a, b):
            dw = _local_call(short, out_shape, out_dtype, strides, pads, a, b)
            return lax.psum(dw, axes) if axes else dw
        return mesh, lower, rep, (act, act)

    def lower(a, b):
        return _local_call(short, (a.shape[0],) + tuple(out_shape[1:]), out_dtype, strides, pads,
                           a, b)
    return mesh, lower, act, (act, rep)


def _infer(short, out_shape, out_dtype, strides, pads, mesh, arg_shapes, result_shape):
    return NamedSharding(mesh, P() if short == "bwd_weights" else P(_batch_spec(arg_shapes)))


_partitioned = {}


def _rule(short):
    return {"fwd": "n h w c, k l c o -> n p q o", "bwd_data": "n p q o, k l c o -> n h w c",
            "bwd_weights": "n h w c, n p q o -> k l c o"}[short]


# Shardy factor names: n batch; h w / p q / k l input, output, kernel spatial sizes.
for _short in ("fwd", "bwd_data", "bwd_weights"):
    _partitioned[_short] = custom_partitioning(_local_call, static_argnums=(0, 1, 2, 3, 4))
    _partitioned[_short].def_partition(
        partition=_partition, infer_sharding_from_operands=_infer, sharding_rule=_rule(_short),
        **({"reduction_factors": ("n",)} if _short == "bwd_weights" else {}))


def _call(short, out_shape, out_dtype, a, b, strides, pads):
    out_dtype = np.dtype(out_dtype).name
    if PARTITIONED:
        return _partitioned[short](short, tuple(out_shape), out_dtype, tuple(strides), tuple(pads), a, b)
    return _local_call(short, out_shape, out_dtype, strides, pads, a, b)


def _out_shape(x_shape, w_shape, strides, pads):
    n, h, w, _ = x_shape
    kh, kw, _, o = w_shape
    oh = (h + pads[0][0] + pads[0][1] - kh) // strides[0] + 1
    ow = (w + pads[1][0] + pads[1][1] - kw) // strides[1] + 1
    return (n, oh, ow, o)


def _fwd(x, w, out_dtype, strides, pads):
    return _call("fwd", _out_shape(x.shape, w.shape, strides, pads), out_dtype, x, w, strides, pads)


def _bwd_data(dy, w, x_shape, out_dtype, strides, pads):
    return _call("bwd_data", x_shape, out_dtype, dy, w, strides, pads)


def _bwd_weights(x, dy, w_shape, out_dtype, strides, pads):
    return _call("bwd_weights", w_shape, out_dtype, x, dy, strides, pads)


def _operands(operand_dtype, *arrays):
    """`arrays` cast to `operand_dtype` (None: as they are) for oneDNN; results keep the callers'
    dtype, so bfloat16 operands of a float32 convolution give float32 results and gradients."""
    return arrays if operand_dtype is None else tuple(a.astype(operand_dtype) for a in arrays)


# conv(x, w): a strided, padded cross-correlation (lax.conv_general_dilated with lhs_dilation 1).
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv(x, w, strides, pads, operand_dtype=None):
    return _conv_fwd(x, w, strides, pads, operand_dtype)[0]


def _conv_fwd(x, w, strides, pads, operand_dtype):
    xo, wo = _operands(operand_dtype, x, w)
    return _fwd(xo, wo, x.dtype, strides, pads), (xo, wo)


def _conv_bwd(strides, pads, operand_dtype, res, g):
    xo, wo = res
    go, = _operands(operand_dtype, g)  # g has the dtype of the output, and of x and w
    return (_bwd_data(go, wo, xo.shape, g.dtype, strides, pads),
            _bwd_weights(xo, go, wo.shape, g.dtype, strides, pads))


conv.defvjp(_conv_fwd, _conv_bwd)


# deconv(y, w, x_shape): the adjoint of conv(., w) applied to y, i.e. oneDNN backward-data.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def deconv(y, w, x_shape, strides, pads, operand_dtype=None):
    return _deconv_fwd(y, w, x_shape, strides, pads, operand_dtype)[0]


def _deconv_fwd(y, w, x_shape, strides, pads, operand_dtype):
    yo, wo = _operands(operand_dtype, y, w)
    return _bwd_data(yo, wo, x_shape, y.dtype, strides, pads), (yo, wo)


def _deconv_bwd(x_shape, strides, pads, operand_dtype, res, g):
    yo, wo = res
    go, = _operands(operand_dtype, g)
    return (_fwd(go, wo, g.dtype, strides, pads),
            _bwd_weights(go, yo, wo.shape, g.dtype, strides, pads))


deconv.defvjp(_deconv_fwd, _deconv_bwd)


# ---- the drop-in ----------------------------------------------------------------------------------
_NHWC_HWIO = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _plan(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
          feature_group_count, batch_group_count):
    """('conv' | 'deconv', static args) when oneDNN can run this convolution, else None."""
    if lhs.ndim != 4 or rhs.ndim != 4 or lhs.dtype != rhs.dtype or lhs.dtype not in supported_dtypes():
        return None
    if feature_group_count != 1 or batch_group_count != 1:
        return None
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if dn != _NHWC_HWIO:
        return None
    strides = tuple(window_strides)
    lhs_dil = tuple(lhs_dilation or (1, 1))
    if tuple(rhs_dilation or (1, 1)) != (1, 1):
        return None
    ksize = rhs.shape[:2]
    if isinstance(padding, str):
        in_size = [(n - 1) * d + 1 for n, d in zip(lhs.shape[1:3], lhs_dil)]
        padding = lax.padtype_to_pads(in_size, ksize, strides, padding)
    pads = tuple((int(a), int(b)) for a, b in padding)
    if lhs_dil == (1, 1):
        if min(min(p) for p in pads) < 0:
            return None
        return "conv", (tuple(int(s) for s in strides), pads)
    # Input-dilated (transposed) conv: out = conv(dilate(x, s), w, pads), stride 1. It equals
    # the backward-data of conv(., flip(w) with I/O swapped, stride s, pads K-1-pad), whose
    # input has out's shape.
    if strides != (1, 1):
        return None
    cpads = tuple((k - 1 - a, k - 1 - b) for k, (a, b) in zip(ksize, pads))
    if min(min(p) for p in cpads) < 0:
        return None
    out_hw = tuple((n - 1) * d + 1 + a + b - k + 1
                   for n, d, (a, b), k in zip(lhs.shape[1:3], lhs_dil, pads, ksize))
    if min(out_hw) <= 0:
        return None
    x_shape = (lhs.shape[0],) + out_hw + (rhs.shape[3],)
    return "deconv", (tuple(int(d) for d in lhs_dil), cpads, x_shape)


def _flip_swap(w):  # (KH, KW, I, O) -> flipped spatially, (KH, KW, O, I)
    return jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)


def _onednn(lhs, rhs, plan, operand_dtype):
    kind, args = plan
    if kind == "conv":
        strides, pads = args
        return conv(lhs, rhs, strides, pads, operand_dtype)
    strides, cpads, x_shape = args
    return deconv(lhs, _flip_swap(rhs), x_shape, strides, cpads, operand_dtype)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None, *, operand_dtype=None):
    """`lax.conv_general_dilated`, run by oneDNN on CPU where supported (see the module doc).

    `operand_dtype="bfloat16"`: oneDNN multiplies in bfloat16 (the operands rounded to it) and
    accumulates in float32; results and gradients keep the operands' dtype (float32 stays
    float32). XLA's fallback, and a CPU without bfloat16 instructions, ignore it."""
    if not cpu_has_bf16():
        operand_dtype = None
    xla = functools.partial(
        lax.conv_general_dilated, window_strides=window_strides, padding=padding,
        lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
    plan = None
    if preferred_element_type in (None, lhs.dtype) and load():
        plan = _plan(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                     dimension_numbers, feature_group_count, batch_group_count)
    if plan is None:
        return xla(lhs, rhs)
    return lax.platform_dependent(lhs, rhs, cpu=lambda a, b: _onednn(a, b, plan, operand_dtype),
                                  default=xla)


def _conv_transpose_padding(k, s, padding):  # as jax._src.lax.convolution's
    if padding == "SAME":
        pad_len = k + s - 2
        pad_a = k - 1 if s > k - 1 else int(np.ceil(pad_len / 2))
    elif padding == "VALID":
        pad_len = k + s - 2 + max(k - s, 0)
        pad_a = k - 1
    else:
        raise ValueError(f"Padding mode must be 'SAME' or 'VALID', got {padding!r}.")
    return pad_a, pad_len - pad_a


def conv_transpose(lhs, rhs, strides, padding, rhs_dilation=None, dimension_numbers=None,
                   transpose_kernel=False, precision=None, preferred_element_type=None, *,
                   operand_dtype=None):
    """`lax.conv_transpose` (as flax's nn.ConvTranspose calls it), 2-D NHWC/HWIO, via
    `conv_general_dilated` above (`operand_dtype` as there); anything else is handed to
    `lax.conv_transpose`."""
    if (lhs.ndim != 4 or dimension_numbers not in (None, ("NHWC", "HWIO", "NHWC"))
            or tuple(rhs_dilation or (1, 1)) != (1, 1)):
        return lax.conv_transpose(lhs, rhs, strides, padding, rhs_dilation=rhs_dilation,
                                  dimension_numbers=dimension_numbers,
                                  transpose_kernel=transpose_kernel, precision=precision,
                                  preferred_element_type=preferred_element_type)
    if transpose_kernel:
        rhs = jnp.flip(rhs, (0, 1)).swapaxes(2, 3)
    if isinstance(padding, str):
        pads = [_conv_transpose_padding(k, s, padding) for k, s in zip(rhs.shape[:2], strides)]
    else:
        pads = padding
    return conv_general_dilated(lhs, rhs, (1, 1), pads, lhs_dilation=tuple(strides),
                                dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision,
                                preferred_element_type=preferred_element_type,
                                operand_dtype=operand_dtype)


# ---- model integration ------------------------------------------------------------------------
# 'onednn_bf16': float32 convolutions with bfloat16 products accumulated in float32 (what TPUs do
# for float32 convolutions at default precision), about 1.9x oneDNN's float32 speed here.
CONV_IMPLEMENTATIONS = ("xla", "onednn", "onednn_bf16")
_OPERAND_DTYPES = {"onednn": None, "onednn_bf16": "bfloat16"}


class _LaxWithOnednn:
    """`jax.lax` as flax.linen.linear sees it inside an intercepted Conv / ConvTranspose call."""

    def __init__(self, operand_dtype):
        self.conv_general_dilated = functools.partial(conv_general_dilated, operand_dtype=operand_dtype)
        self.conv_transpose = functools.partial(conv_transpose, operand_dtype=operand_dtype)

    def __getattr__(self, name):
        return getattr(lax, name)


_LAX_VIEWS = {name: _LaxWithOnednn(dtype) for name, dtype in _OPERAND_DTYPES.items()}


def _interceptor(lax_view, next_fun, args, kwargs, context):
    import flax.linen as nn
    from flax.linen import linear
    # nn.Conv calls linear.lax.conv_general_dilated (unless its own conv_general_dilated field is
    # set, which is then left alone); nn.ConvTranspose calls linear.lax.conv_transpose.
    if context.method_name == "__call__" and isinstance(context.module, (nn.Conv, nn.ConvTranspose)):
        saved, linear.lax = linear.lax, lax_view
        try:
            return next_fun(*args, **kwargs)
        finally:
            linear.lax = saved
    return next_fun(*args, **kwargs)


def effective(implementation: str) -> str:
    """What `implementation` runs as here: 'xla' where the library is absent, 'onednn' for
    'onednn_bf16' on a CPU without bfloat16 instructions (logged once)."""
    if implementation not in CONV_IMPLEMENTATIONS:
        raise ValueError(f"conv implementation must be one of {CONV_IMPLEMENTATIONS}, got {implementation!r}.")
    if implementation == "xla" or not load():
        return "xla"
    if implementation == "onednn_bf16" and not cpu_has_bf16():
        if not _state.get("warned_bf16"):
            _state["warned_bf16"] = True
            logging.warning("conv='onednn_bf16': this CPU has no bfloat16 instructions (%s), so "
                            "oneDNN convolutions run in float32.", " / ".join(BF16_CPU_FLAGS))
        return "onednn"
    return implementation


def conv_context(implementation: str):
    """A context under which (while tracing) flax nn.Conv / nn.ConvTranspose use `implementation`:
    'xla' (no change), 'onednn' (this module; XLA's convs where oneDNN does not apply) or
    'onednn_bf16' (the same, bfloat16 products accumulated in float32)."""
    import contextlib

    import flax.linen as nn
    implementation = effective(implementation)
    if implementation == "xla":
        return contextlib.nullcontext()
    return nn.intercept_methods(functools.partial(_interceptor, _LAX_VIEWS[implementation]))


def with_conv(model, implementation: str):
    """`model` whose init/apply (any method) trace its convolutions under `conv_context`.

    The same module class (a subclass with the same name and fields), so parameters,
    checkpoints and `method=` calls are unchanged. 'xla', or an absent library, returns `model`.
    """
    implementation = effective(implementation)
    if implementation == "xla":
        return model
    import dataclasses
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
              if f.init and f.name not in ("parent", "name")}
    return _onednn_class(type(model), implementation)(**fields)


@functools.cache
def _onednn_class(cls, implementation):
    def apply(self, *args, **kwargs):
        with conv_context(implementation):
            return cls.apply(self, *args, **kwargs)

    def init_with_output(self, *args, **kwargs):
        with conv_context(implementation):
            return cls.init_with_output(self, *args, **kwargs)

    def init(self, *args, **kwargs):
        with conv_context(implementation):
            return cls.init(self, *args, **kwargs)

    return type(cls.__name__, (cls,), {"apply": apply, "init": init, "init_with_output": init_with_output,
                                       "__qualname__": cls.__qualname__, "__module__": cls.__module__,
                                       "__doc__": cls.__doc__})
