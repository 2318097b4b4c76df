// The cores' float32 fused-multiply-add peak, measured: every thread runs independent FMA chains on the widest
// vectors the compiler targets (-march=native), long enough for the clock to settle. Built and run by
// benchmarks/profile_step.py, which quotes each part of a train step as a fraction of this figure.
//
//   g++ -O2 -march=native -ffp-contract=fast -pthread fma_peak.cc -o fma_peak && ./fma_peak THREADS SECONDS
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

typedef float v16 __attribute__((vector_size(64)));
constexpr int kChains = 12;  // enough independent FMAs in flight to cover the FMA latency on two pipes

static double Run(long iterations) {
  v16 a, b;
  for (int i = 0; i < 16; ++i) a[i] = 0.999999f, b[i] = 1e-7f;
  // Twelve named accumulators (not an array, which the compiler keeps in memory): twelve chains in registers.
  v16 c0 = a, c1 = a * 2, c2 = a * 3, c3 = a * 4, c4 = a * 5, c5 = a * 6;
  v16 c6 = a * 7, c7 = a * 8, c8 = a * 9, c9 = a * 10, c10 = a * 11, c11 = a * 12;
  for (long it = 0; it < iterations; ++it) {
    c0 = c0 * a + b, c1 = c1 * a + b, c2 = c2 * a + b, c3 = c3 * a + b, c4 = c4 * a + b, c5 = c5 * a + b;
    c6 = c6 * a + b, c7 = c7 * a + b, c8 = c8 * a + b, c9 = c9 * a + b, c10 = c10 * a + b, c11 = c11 * a + b;
  }
  v16 all = c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11;
  float sum = 0;
  for (int i = 0; i < 16; ++i) sum += all[i];
  return sum;
}

int main(int argc, char** argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  double seconds = argc > 2 ? atof(argv[2]) : 2.0;
  long iterations = 1 << 20;
  for (;;) {  // grow the work until one run takes the requested time
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    std::vector<double> sink(threads);
    for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { sink[t] = Run(iterations); });
    for (auto& t : pool) t.join();
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (dt >= seconds) {
      double flops = 2.0 * 16 * kChains * (double)iterations * threads;
      printf("{\"threads\": %d, \"seconds\": %.3f, \"gflops\": %.2f, \"checksum\": %g}\n", threads, dt, flops / dt / 1e9,
             sink[0]);
      return 0;
    }
    iterations = (long)(iterations * (seconds / dt) * 1.05) + 1;
  }
}
