// XLA FFI handlers that run 2-D convolutions (NHWC activations, HWIO weights) through oneDNN:
// forward, backward-data and backward-weights. The transposed convolution is the
// backward-data primitive of the matching forward convolution, so three handlers cover
// conv, its VJP, the transposed conv and its VJP (see retina_jax/ops/onednn_conv.py).
//
// The two operands of a call share one type, float32 or bfloat16; the result is float32 or
// bfloat16 (bfloat16 operands with a float32 result: bf16 products accumulated in float32).
//
// Primitives are created once per (kind, shapes, strides, pads, weight-format) and cached.
// Activations stay in JAX's dense NHWC layout, except for backward-weights on AVX2-only CPUs (see
// BlockedActivationsFaster); weights are either used as HWIO directly or, with weights_any=1,
// reordered to the blocked layout oneDNN prefers on every call.
#include <omp.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

int g_num_threads = 0;  // 0: leave OpenMP's default (OMP_NUM_THREADS / all cores)

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {  // one in-order stream per calling thread
  thread_local dnnl::stream stream(Engine());
  return stream;
}

enum Kind : int { kFwd = 0, kBwdData = 1, kBwdWeights = 2 };

// N, C_in, H, W, C_out, KH, KW, OH, OW, sh, sw, pt, pb, pl, pr, weights_any, kind,
// operands bf16, result bf16
using Key = std::array<int64_t, 19>;

struct Entry {
  dnnl::primitive prim;
  memory::desc src_md, wei_md, dst_md;   // what the primitive wants
  memory::desc src_user_md, dst_user_md; // nhwc
  memory::desc wei_user_md;              // hwio
  bool reorder_weights = false;
  dnnl::primitive wei_reorder;           // user -> primitive layout (fwd/bwd_data) or back (bwd_w)
  bool reorder_activations = false;      // backward-weights only: src and diff_dst reordered
  dnnl::primitive src_reorder, dst_reorder;  // from nhwc on every call (BlockedActivationsFaster)
  memory::desc scratch_md;
  std::string impl;
};

std::mutex g_mutex;
std::map<Key, std::shared_ptr<Entry>> g_cache;

std::shared_ptr<Entry> Build(const Key& k, bool weights_any, bool blocked_activations = false) {
  auto [N, IC, H, W, OC, KH, KW, OH, OW, sh, sw, pt, pb, pl, pr, wmode, kind, op_bf16, res_bf16] = k;
  const dt op = op_bf16 ? dt::bf16 : dt::f32, res = res_bf16 ? dt::bf16 : dt::f32;
  // The result is dst (forward), diff_src (backward-data) or diff_weights (backward-weights).
  const dt src_t = kind == kBwdData ? res : op, dst_t = kind == kFwd ? res : op,
           wei_t = kind == kBwdWeights ? res : op;
  memory::dims src_dims = {N, IC, H, W}, dst_dims = {N, OC, OH, OW}, wei_dims = {OC, IC, KH, KW};
  memory::dims strides = {sh, sw}, pad_l = {pt, pl}, pad_r = {pb, pr};
  auto src_md = memory::desc(src_dims, src_t, tag::nhwc);
  auto dst_md = memory::desc(dst_dims, dst_t, tag::nhwc);
  auto wei_user_md = memory::desc(wei_dims, wei_t, tag::hwio);
  auto wei_md = weights_any ? memory::desc(wei_dims, wei_t, tag::any) : wei_user_md;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto& eng = Engine();
  // The backward primitives' hint: the forward convolution with every buffer of the operands' type.
  auto hint_pd = [&] {
    return dnnl::convolution_forward::primitive_desc(
        eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
        memory::desc(src_dims, op, tag::nhwc),
        memory::desc(wei_dims, op, weights_any ? tag::any : tag::hwio),
        memory::desc(dst_dims, op, tag::nhwc), strides, pad_l, pad_r, attr);
  };
  auto e = std::make_shared<Entry>();
  e->wei_user_md = wei_user_md;
  if (kind == kFwd) {
    auto fwd_pd = dnnl::convolution_forward::primitive_desc(
        eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src_md,
        wei_md, dst_md, strides, pad_l, pad_r, attr);
    e->prim = dnnl::convolution_forward(fwd_pd);
    e->src_md = fwd_pd.src_desc(); e->wei_md = fwd_pd.weights_desc(); e->dst_md = fwd_pd.dst_desc();
    e->scratch_md = fwd_pd.scratchpad_desc();
    e->impl = fwd_pd.impl_info_str();
  } else if (kind == kBwdData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, src_md, wei_md, dst_md, strides, pad_l, pad_r,
        hint_pd(), attr);
    e->prim = dnnl::convolution_backward_data(pd);
    e->src_md = pd.diff_src_desc(); e->wei_md = pd.weights_desc(); e->dst_md = pd.diff_dst_desc();
    e->scratch_md = pd.scratchpad_desc();
    e->impl = pd.impl_info_str();
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        eng, dnnl::algorithm::convolution_direct,
        blocked_activations ? memory::desc(src_dims, src_t, tag::any) : src_md, wei_md,
        blocked_activations ? memory::desc(dst_dims, dst_t, tag::any) : dst_md, strides, pad_l,
        pad_r, hint_pd(), attr);
    e->prim = dnnl::convolution_backward_weights(pd);
    e->src_md = pd.src_desc(); e->wei_md = pd.diff_weights_desc(); e->dst_md = pd.diff_dst_desc();
    e->scratch_md = pd.scratchpad_desc();
    e->impl = pd.impl_info_str();
  }
  e->src_user_md = src_md;
  e->dst_user_md = dst_md;
  e->reorder_activations = e->src_md != src_md || e->dst_md != dst_md;
  if (e->reorder_activations) {
    e->src_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(eng, src_md, eng, e->src_md));
    e->dst_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(eng, dst_md, eng, e->dst_md));
  }
  e->reorder_weights = e->wei_md != wei_user_md;
  if (e->reorder_weights) {
    e->wei_reorder = kind == kBwdWeights ? dnnl::reorder(dnnl::reorder::primitive_desc(eng, e->wei_md, eng, wei_user_md))
                                         : dnnl::reorder(dnnl::reorder::primitive_desc(eng, wei_user_md, eng, e->wei_md));
  }
  return e;
}

// Weight layout: mode 0 = HWIO as given, 1 = the layout oneDNN prefers (reordered per call),
// 2 = HWIO unless oneDNN then falls back to a gemm/reference kernel (the usual case for
// backward passes), in which case the preferred layout.
std::shared_ptr<Entry> BuildForLayouts(const Key& k) {
  int64_t mode = k[15];
  if (mode == 1) return Build(k, true);
  auto e = Build(k, false);
  if (mode == 2 && (e->impl.find("gemm") != std::string::npos ||
                    e->impl.find("ref") != std::string::npos))
    return Build(k, true);
  return e;
}

// On AVX2 (no AVX-512) oneDNN 3.2 computes float32 backward-weights on NHWC activations with its
// direct "jit:avx2" kernel, which runs the U-Net's 16- and 32-channel layers at about half the
// speed of the same kernel on blocked (nChw8c) activations: on a Zen 3 EPYC, 2 threads,
// batch 16, 32->16 channels at 128x128 took 54 ms on NHWC against 24 ms blocked, reorders of x
// and dy included (3.7 ms); deeper layers were level. There the blocked primitive is used.
bool BlockedActivationsFaster(const Entry& nhwc) { return nhwc.impl == "jit:avx2"; }

std::shared_ptr<Entry> Build(const Key& k) {
  auto e = BuildForLayouts(k);
  if (k[16] != kBwdWeights || k[17] || !BlockedActivationsFaster(*e)) return e;
  auto blocked = Build(k, k[15] != 0, true);
  return blocked->impl == e->impl && blocked->reorder_activations ? blocked : e;
}

std::shared_ptr<Entry> Lookup(const Key& k) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_cache.find(k);
  if (it != g_cache.end()) return it->second;
  auto e = Build(k);
  g_cache.emplace(k, e);
  return e;
}

bool Supported(ffi::DataType type) { return type == ffi::DataType::F32 || type == ffi::DataType::BF16; }

// x: (N,H,W,IC) conv input; y: (N,OH,OW,OC) conv output; w: (KH,KW,IC,OC). The two operands of
// `kind` are of type `op`, its result of type `res`.
ffi::Error Run(Kind kind, ffi::DataType op, ffi::DataType res, void* x, void* w, void* y,
               ffi::Span<const int64_t> xd, ffi::Span<const int64_t> wd,
               ffi::Span<const int64_t> yd, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
               int64_t pl, int64_t pr, int64_t weights_any) {
  if (!Supported(op) || !Supported(res))
    return ffi::Error::InvalidArgument("onednn_conv: expected float32 or bfloat16 buffers");
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4)
    return ffi::Error::InvalidArgument("onednn_conv: expected rank-4 NHWC / HWIO buffers");
  if (xd[3] != wd[2] || yd[3] != wd[3] || xd[0] != yd[0])
    return ffi::Error::InvalidArgument("onednn_conv: inconsistent shapes");
  try {
    if (g_num_threads > 0) omp_set_num_threads(g_num_threads);
    Key key = {xd[0], xd[3], xd[1], xd[2], yd[3], wd[0], wd[1], yd[1], yd[2],
               sh, sw, pt, pb, pl, pr, weights_any, kind, op == ffi::DataType::BF16,
               res == ffi::DataType::BF16};
    auto e = Lookup(key);
    auto& eng = Engine();
    auto& strm = Stream();
    thread_local std::vector<char> scratch, wbuf, src_buf, dst_buf;
    if (scratch.size() < e->scratch_md.get_size()) scratch.resize(e->scratch_md.get_size());
    memory scratch_mem(e->scratch_md, eng, scratch.data());
    memory src_mem(e->src_user_md, eng, x), dst_mem(e->dst_user_md, eng, y);
    if (e->reorder_activations) {
      if (src_buf.size() < e->src_md.get_size()) src_buf.resize(e->src_md.get_size());
      if (dst_buf.size() < e->dst_md.get_size()) dst_buf.resize(e->dst_md.get_size());
      memory src_blocked(e->src_md, eng, src_buf.data()), dst_blocked(e->dst_md, eng, dst_buf.data());
      e->src_reorder.execute(strm, {{DNNL_ARG_FROM, src_mem}, {DNNL_ARG_TO, src_blocked}});
      e->dst_reorder.execute(strm, {{DNNL_ARG_FROM, dst_mem}, {DNNL_ARG_TO, dst_blocked}});
      src_mem = src_blocked;
      dst_mem = dst_blocked;
    }
    memory wei_user_mem(e->wei_user_md, eng, w);
    memory wei_mem = wei_user_mem;
    if (e->reorder_weights) {
      if (wbuf.size() < e->wei_md.get_size()) wbuf.resize(e->wei_md.get_size());
      wei_mem = memory(e->wei_md, eng, wbuf.data());
      if (kind != kBwdWeights) e->wei_reorder.execute(strm, {{DNNL_ARG_FROM, wei_user_mem}, {DNNL_ARG_TO, wei_mem}});
    }
    if (kind == kFwd) {
      e->prim.execute(strm, {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_WEIGHTS, wei_mem},
                             {DNNL_ARG_DST, dst_mem}, {DNNL_ARG_SCRATCHPAD, scratch_mem}});
    } else if (kind == kBwdData) {
      e->prim.execute(strm, {{DNNL_ARG_DIFF_SRC, src_mem}, {DNNL_ARG_WEIGHTS, wei_mem},
                             {DNNL_ARG_DIFF_DST, dst_mem}, {DNNL_ARG_SCRATCHPAD, scratch_mem}});
    } else {
      e->prim.execute(strm, {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_DIFF_WEIGHTS, wei_mem},
                             {DNNL_ARG_DIFF_DST, dst_mem}, {DNNL_ARG_SCRATCHPAD, scratch_mem}});
      if (e->reorder_weights) e->wei_reorder.execute(strm, {{DNNL_ARG_FROM, wei_mem}, {DNNL_ARG_TO, wei_user_mem}});
    }
    strm.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("onednn_conv: ") + err.what());
  }
  return ffi::Error::Success();
}

using Buf = ffi::AnyBuffer;
using BufRet = ffi::Result<ffi::AnyBuffer>;

ffi::Error Mixed() { return ffi::Error::InvalidArgument("onednn_conv: the two operands' types differ"); }

ffi::Error FwdImpl(Buf x, Buf w, BufRet y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                   int64_t pl, int64_t pr, int64_t weights_any) {
  if (w.element_type() != x.element_type()) return Mixed();
  return Run(kFwd, x.element_type(), y->element_type(), x.untyped_data(), w.untyped_data(), y->untyped_data(),
             x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb, pl, pr, weights_any);
}

// dy: conv output gradient, w: weights -> dx (the result's shape is the conv input's).
ffi::Error BwdDataImpl(Buf dy, Buf w, BufRet dx, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                       int64_t pl, int64_t pr, int64_t weights_any) {
  if (w.element_type() != dy.element_type()) return Mixed();
  return Run(kBwdData, dy.element_type(), dx->element_type(), dx->untyped_data(), w.untyped_data(), dy.untyped_data(),
             dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr, weights_any);
}

// x: conv input, dy: conv output gradient -> dw (HWIO).
ffi::Error BwdWeightsImpl(Buf x, Buf dy, BufRet dw, int64_t sh, int64_t sw, int64_t pt,
                          int64_t pb, int64_t pl, int64_t pr, int64_t weights_any) {
  if (dy.element_type() != x.element_type()) return Mixed();
  return Run(kBwdWeights, x.element_type(), dw->element_type(), x.untyped_data(), dw->untyped_data(), dy.untyped_data(),
             x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr, weights_any);
}

}  // namespace

#define RETINA_CONV_BINDING(ARG0, ARG1)          \
  ffi::Ffi::Bind()                               \
      .Arg<Buf>()                                \
      .Arg<Buf>()                                \
      .Ret<Buf>()                                \
      .Attr<int64_t>("sh")                       \
      .Attr<int64_t>("sw")                       \
      .Attr<int64_t>("pt")                       \
      .Attr<int64_t>("pb")                       \
      .Attr<int64_t>("pl")                       \
      .Attr<int64_t>("pr")                       \
      .Attr<int64_t>("weights_any")

XLA_FFI_DEFINE_HANDLER_SYMBOL(RetinaOnednnConvFwd, FwdImpl, RETINA_CONV_BINDING(x, w));
XLA_FFI_DEFINE_HANDLER_SYMBOL(RetinaOnednnConvBwdData, BwdDataImpl, RETINA_CONV_BINDING(dy, w));
XLA_FFI_DEFINE_HANDLER_SYMBOL(RetinaOnednnConvBwdWeights, BwdWeightsImpl,
                              RETINA_CONV_BINDING(x, dy));

extern "C" {
// Threads each oneDNN call may use (0: OpenMP default). Set from Python via ctypes.
void retina_onednn_set_num_threads(int n) { g_num_threads = n; }
// Implementation name and weight layout of cached primitive i (for diagnostics); "" past the end.
const char* retina_onednn_describe(int i) {
  static thread_local std::string out;
  std::lock_guard<std::mutex> lock(g_mutex);
  out.clear();
  for (auto& [key, e] : g_cache) {
    if (i-- != 0) continue;
    static const char* kinds[] = {"fwd", "bwd_data", "bwd_weights"};
    out = std::string(kinds[key[16]]) + " N" + std::to_string(key[0]) + " " + std::to_string(key[2]) +
          "x" + std::to_string(key[3]) + " " + std::to_string(key[1]) + "->" + std::to_string(key[4]) +
          " k" + std::to_string(key[5]) + " s" + std::to_string(key[9]) +
          (key[17] ? " bf16" : " f32") + (key[18] ? "->bf16" : "->f32") + ": " + e->impl +
          (e->reorder_weights ? " (blocked weights)" : " (hwio weights)") +
          (e->reorder_activations ? " (blocked activations)" : "");
    break;
  }
  return out.c_str();
}
int retina_onednn_cache_size() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return static_cast<int>(g_cache.size());
}
}
