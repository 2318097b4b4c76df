// oneDNN's convolutions of CIFAR ResNet-20 (batch 128, 3x3, NHWC activations, the weights in the layout oneDNN
// picks) timed alone, outside any train step: the same primitives as resnet_jax/cpu/csrc/onednn_conv.cc, run
// back to back on one input that stays in the caches. Set beside oneDNN's own timings of the same primitives inside
// the step (ONEDNN_VERBOSE=1 and benchmarks/onednn_verbose_summary.py), it says how much of the convolutions' gap
// to the cores' peak is the kernels' and how much the step's surroundings. One JSON line per shape and direction.
// The argument says what happens between two calls (untimed): 'none'; 'flush', a pass over 64 MB that evicts the
// operands from the caches, as the fusions between two convolutions of a step may; 'pause', 2 ms of sleep, after
// which oneDNN's OpenMP threads have gone to sleep and must be woken, as after a step's longer fusions.
//
//   g++ -O2 -std=c++17 -I.venv/include benchmarks/onednn_conv_alone.cc -L.venv/lib -ldnnl \
//       -Wl,-rpath,$PWD/.venv/lib -o /tmp/onednn_conv_alone && /tmp/onednn_conv_alone [none|flush|pause]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"

using dnnl::memory;
using tag = memory::format_tag;

static double MedianMs(const std::function<void()>& call, const std::string& between) {
  static std::vector<float> other(16 << 20, 1.0f);  // 64 MB
  std::vector<double> ms;
  for (int i = 0; i < 40; ++i) {
    if (between == "flush") {
      for (float& v : other) v += 1.0f;
    } else if (between == "pause") {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    auto t0 = std::chrono::steady_clock::now();
    call();
    if (i >= 8) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

static memory Filled(const memory::desc& md, const dnnl::engine& eng, float value) {
  memory m(md, eng);
  std::fill_n(static_cast<float*>(m.get_data_handle()), md.get_size() / sizeof(float), value);
  return m;
}

int main(int argc, char** argv) {
  const std::string between = argc > 1 ? argv[1] : "none";
  if (between != "none" && between != "flush" && between != "pause") {
    std::fprintf(stderr, "usage: %s [none|flush|pause]\n", argv[0]);
    return 2;
  }
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream s(eng);
  const int kBatch = 128;
  // (input channels, output channels, input height = width, stride): ResNet-20's convolution shapes.
  const int shapes[][4] = {{3, 16, 32, 1}, {16, 16, 32, 1}, {16, 32, 32, 2}, {32, 32, 16, 1}, {32, 64, 16, 2},
                           {64, 64, 8, 1}};
  for (const auto& shape : shapes) {
    const int ic = shape[0], oc = shape[1], hw = shape[2], st = shape[3], ohw = hw / st;
    auto src = memory::desc({kBatch, ic, hw, hw}, memory::data_type::f32, tag::nhwc);
    auto dst = memory::desc({kBatch, oc, ohw, ohw}, memory::data_type::f32, tag::nhwc);
    auto any = memory::desc({oc, ic, 3, 3}, memory::data_type::f32, tag::any);
    const double gflop = 2.0 * kBatch * ic * oc * ohw * ohw * 9 / 1e9;
    auto algo = dnnl::algorithm::convolution_direct;
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    auto fwd_pd = dnnl::convolution_forward::primitive_desc(eng, dnnl::prop_kind::forward_training, algo, src, any,
                                                            dst, {st, st}, {1, 1}, {1, 1}, attr);
    auto bwd_data_pd = dnnl::convolution_backward_data::primitive_desc(eng, algo, src, any, dst, {st, st}, {1, 1},
                                                                       {1, 1}, fwd_pd, attr);
    auto bwd_weights_pd = dnnl::convolution_backward_weights::primitive_desc(eng, algo, src, any, dst, {st, st},
                                                                             {1, 1}, {1, 1}, fwd_pd, attr);
    memory x = Filled(src, eng, 0.5f), dy = Filled(dst, eng, 0.25f), y(dst, eng), dx(src, eng);
    memory w = Filled(fwd_pd.weights_desc(), eng, 0.01f), wd = Filled(bwd_data_pd.weights_desc(), eng, 0.01f);
    memory dw(bwd_weights_pd.diff_weights_desc(), eng);
    memory sf(fwd_pd.scratchpad_desc(), eng), sd(bwd_data_pd.scratchpad_desc(), eng);
    memory sw(bwd_weights_pd.scratchpad_desc(), eng);
    dnnl::convolution_forward fwd(fwd_pd);
    dnnl::convolution_backward_data bwd_data(bwd_data_pd);
    dnnl::convolution_backward_weights bwd_weights(bwd_weights_pd);
    struct Direction {
      const char* name;
      const char* impl;
      std::function<void()> call;
    } directions[] = {
        {"forward", fwd_pd.impl_info_str(),
         [&] {
           fwd.execute(s, {{DNNL_ARG_SRC, x}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, y}, {DNNL_ARG_SCRATCHPAD, sf}});
           s.wait();
         }},
        {"backward_data", bwd_data_pd.impl_info_str(),
         [&] {
           bwd_data.execute(
               s, {{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_WEIGHTS, wd}, {DNNL_ARG_DIFF_SRC, dx}, {DNNL_ARG_SCRATCHPAD, sd}});
           s.wait();
         }},
        {"backward_weights", bwd_weights_pd.impl_info_str(),
         [&] {
           bwd_weights.execute(
               s, {{DNNL_ARG_SRC, x}, {DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_WEIGHTS, dw}, {DNNL_ARG_SCRATCHPAD, sw}});
           s.wait();
         }},
    };
    for (const auto& d : directions) {
      const double ms = MedianMs(d.call, between);
      std::printf(
          "{\"between\": \"%s\", \"in_channels\": %d, \"out_channels\": %d, \"size\": %d, \"stride\": %d, "
          "\"direction\": \"%s\", \"impl\": \"%s\", \"ms\": %.3f, \"gflops\": %.1f}\n",
          between.c_str(), ic, oc, hw, st, d.name, d.impl, ms, gflop / ms * 1e3);
    }
  }
}
