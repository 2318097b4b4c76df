// oneDNN's direct convolutions as XLA FFI custom calls for JAX on CPU (resnet_jax/onednn.py builds and loads this).
//
// Three handlers, all float32, activations NHWC and kernels HWIO (flax's layouts), 2-D, no dilation, one group:
//   resnet_jax_onednn_conv_fwd          (x[N,H,W,C], w[KH,KW,C,O])   -> y[N,OH,OW,O]
//   resnet_jax_onednn_conv_bwd_data     (dy[N,OH,OW,O], w)           -> dx[N,H,W,C]
//   resnet_jax_onednn_conv_bwd_weights  (x, dy)                      -> dw[KH,KW,C,O]
// with attributes stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right (int64).
//
// Activations are handed to oneDNN in place (format nhwc); kernels are reordered to and from the blocked layout
// that oneDNN picks (format 'any'), which is cheap next to the convolution. Primitive descriptors and primitives
// are cached per shape; each call brings its own scratchpad (scratchpad_mode::user), so that XLA may run the same
// primitive from two threads at once. oneDNN runs on its own OpenMP threads.
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

struct Geometry {
  int64_t n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr;
  auto key() const { return std::make_tuple(n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr); }
  memory::desc src() const { return memory::desc({n, c, h, w}, memory::data_type::f32, tag::nhwc); }
  memory::desc dst() const { return memory::desc({n, o, oh, ow}, memory::data_type::f32, tag::nhwc); }
  memory::desc user_weights() const { return memory::desc({o, c, kh, kw}, memory::data_type::f32, tag::hwio); }
  memory::desc any_weights() const { return memory::desc({o, c, kh, kw}, memory::data_type::f32, tag::any); }
  memory::dims strides() const { return {sh, sw}; }
  memory::dims pad_l() const { return {pt, pl}; }
  memory::dims pad_r() const { return {pb, pr}; }
};

// Everything oneDNN needs for one convolution shape, built once.
struct Plan {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd;
  dnnl::convolution_backward_weights bwd_weights;

  explicit Plan(const Geometry& g) {
    auto algo = dnnl::algorithm::convolution_direct;
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    fwd_pd = dnnl::convolution_forward::primitive_desc(Engine(), dnnl::prop_kind::forward_training, algo, g.src(),
                                                       g.any_weights(), g.dst(), g.strides(), g.pad_l(), g.pad_r(),
                                                       attr);
    fwd = dnnl::convolution_forward(fwd_pd);
    bwd_data_pd = dnnl::convolution_backward_data::primitive_desc(Engine(), algo, g.src(), g.any_weights(), g.dst(),
                                                                  g.strides(), g.pad_l(), g.pad_r(), fwd_pd, attr);
    bwd_data = dnnl::convolution_backward_data(bwd_data_pd);
    bwd_weights_pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), algo, g.src(), g.any_weights(), g.dst(), g.strides(), g.pad_l(), g.pad_r(), fwd_pd, attr);
    bwd_weights = dnnl::convolution_backward_weights(bwd_weights_pd);
  }
};

const Plan& GetPlan(const Geometry& g) {
  static std::mutex mu;
  static std::map<decltype(g.key()), std::unique_ptr<Plan>> plans;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = plans[g.key()];
  if (!slot) slot = std::make_unique<Plan>(g);
  return *slot;
}

// The user's HWIO kernel, in the layout `want` (a reordered copy unless they are the same).
memory WeightsAs(const Geometry& g, const memory::desc& want, float* data, dnnl::stream& s) {
  memory user(g.user_weights(), Engine(), data);
  if (want == g.user_weights()) return user;
  memory out(want, Engine());
  dnnl::reorder(user, out).execute(s, user, out);
  return out;
}

Geometry MakeGeometry(ffi::Span<const int64_t> act, ffi::Span<const int64_t> ker, ffi::Span<const int64_t> out,
                      int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return Geometry{act[0], act[1], act[2], act[3], ker[0], ker[1], ker[3], out[1], out[2], sh, sw, pt, pb, pl, pr};
}

// Rank-4 NHWC activations, HWIO kernel and NHWC output that fit together (so oneDNN never reads out of bounds).
ffi::Error CheckShapes(ffi::Span<const int64_t> act, ffi::Span<const int64_t> ker, ffi::Span<const int64_t> out,
                       int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  if (act.size() != 4 || ker.size() != 4 || out.size() != 4)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "onednn conv: rank-4 NHWC/HWIO operands expected");
  bool ok = sh > 0 && sw > 0 && pt >= 0 && pb >= 0 && pl >= 0 && pr >= 0 && act[0] == out[0] &&
            act[3] == ker[2] && ker[3] == out[3] && out[1] == (act[1] + pt + pb - ker[0]) / sh + 1 &&
            out[2] == (act[2] + pl + pr - ker[1]) / sw + 1;
  if (!ok) return ffi::Error(ffi::ErrorCode::kInvalidArgument, "onednn conv: operand shapes do not fit together");
  return ffi::Error::Success();
}

ffi::Error Run(const std::function<void()>& body) {
  try {
    body();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvFwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y, int64_t sh,
                   int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  if (auto e = CheckShapes(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb, pl, pr); e.failure())
    return e;
  Geometry g = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb, pl, pr);
  return Run([&] {
    const Plan& p = GetPlan(g);
    dnnl::stream& s = Stream();
    memory src(g.src(), Engine(), x.typed_data());
    memory dst(g.dst(), Engine(), y->typed_data());
    memory wei = WeightsAs(g, p.fwd_pd.weights_desc(), w.typed_data(), s);
    memory scratch(p.fwd_pd.scratchpad_desc(), Engine());
    p.fwd.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
    s.wait();
  });
}

ffi::Error ConvBwdData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx, int64_t sh,
                       int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  if (auto e = CheckShapes(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr); e.failure())
    return e;
  Geometry g = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr);
  return Run([&] {
    const Plan& p = GetPlan(g);
    dnnl::stream& s = Stream();
    memory diff_dst(g.dst(), Engine(), dy.typed_data());
    memory diff_src(g.src(), Engine(), dx->typed_data());
    memory wei = WeightsAs(g, p.bwd_data_pd.weights_desc(), w.typed_data(), s);
    memory scratch(p.bwd_data_pd.scratchpad_desc(), Engine());
    p.bwd_data.execute(s, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DIFF_SRC, diff_src},
                           {DNNL_ARG_SCRATCHPAD, scratch}});
    s.wait();
  });
}

ffi::Error ConvBwdWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                          int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  if (auto e = CheckShapes(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr); e.failure())
    return e;
  Geometry g = MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr);
  return Run([&] {
    const Plan& p = GetPlan(g);
    dnnl::stream& s = Stream();
    memory src(g.src(), Engine(), x.typed_data());
    memory diff_dst(g.dst(), Engine(), dy.typed_data());
    memory user(g.user_weights(), Engine(), dw->typed_data());
    const memory::desc want = p.bwd_weights_pd.diff_weights_desc();
    memory diff_wei = want == g.user_weights() ? user : memory(want, Engine());
    memory scratch(p.bwd_weights_pd.scratchpad_desc(), Engine());
    p.bwd_weights.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, diff_wei},
                              {DNNL_ARG_SCRATCHPAD, scratch}});
    if (!(want == g.user_weights())) dnnl::reorder(diff_wei, user).execute(s, diff_wei, user);
    s.wait();
  });
}

}  // namespace

#define RESNET_JAX_CONV_BINDING                                                                                \
  ffi::Ffi::Bind()                                                                                            \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                           \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                           \
      .Ret<ffi::Buffer<ffi::F32>>()                                                                           \
      .Attr<int64_t>("stride_h")                                                                              \
      .Attr<int64_t>("stride_w")                                                                              \
      .Attr<int64_t>("pad_top")                                                                               \
      .Attr<int64_t>("pad_bottom")                                                                            \
      .Attr<int64_t>("pad_left")                                                                              \
      .Attr<int64_t>("pad_right")

XLA_FFI_DEFINE_HANDLER_SYMBOL(ResnetJaxOnednnConvFwd, ConvFwd, RESNET_JAX_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ResnetJaxOnednnConvBwdData, ConvBwdData, RESNET_JAX_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(ResnetJaxOnednnConvBwdWeights, ConvBwdWeights, RESNET_JAX_CONV_BINDING);
