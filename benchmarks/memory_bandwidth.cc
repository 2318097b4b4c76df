// The cores' memory bandwidth for the work of a train step's XLA fusions, measured: every thread streams over its
// share of an input and an output array (y = a * x + b, each element read once and written once), again and again
// for the requested time. The arrays' size is an argument: 8 MiB each is a CIFAR ResNet's largest activation at
// batch 128 (128 x 32 x 32 x 16 float32), the operand of most of its batch-norm and ReLU fusions, and lives in the
// last-level cache of this project's CPUs; 64 MiB or more measures main memory. Bytes are counted as
// benchmarks/profile_step.py counts a fusion's: everything read plus everything written. Built and run by
// profile_step.py, which quotes the fusions' GB/s as a fraction of this figure.
//
//   g++ -O2 -march=native -pthread memory_bandwidth.cc -o memory_bandwidth && ./memory_bandwidth THREADS SECONDS MIB
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

typedef float v16 __attribute__((vector_size(64)));

// Whole vectors of the widest kind the compiler targets (-march=native), whatever its loop vectoriser decides.
static void Pass(const float* x, float* y, long n) {
  const v16* in = reinterpret_cast<const v16*>(x);
  v16* out = reinterpret_cast<v16*>(y);
  for (long i = 0; i < n / 16; ++i) out[i] = 1.0001f * in[i] + 0.5f;
}

int main(int argc, char** argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  double seconds = argc > 2 ? atof(argv[2]) : 2.0;
  double mib = argc > 3 ? atof(argv[3]) : 8.0;
  long n = (long)(mib * 1024 * 1024 / sizeof(float));
  n -= n % (16L * threads);
  float* x = static_cast<float*>(aligned_alloc(64, n * sizeof(float)));
  float* y = static_cast<float*>(aligned_alloc(64, n * sizeof(float)));
  for (long i = 0; i < n; ++i) x[i] = 1.0f, y[i] = 0.0f;  // touched here: no page faults while timed
  long slice = n / threads, passes = 4;
  for (;;) {  // grow the work until one run takes the requested time
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        for (long p = 0; p < passes; ++p) Pass(x + t * slice, y + t * slice, slice);
      });
    for (auto& t : pool) t.join();
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (dt >= seconds) {
      double bytes = 2.0 * sizeof(float) * (double)slice * threads * passes;
      printf("{\"threads\": %d, \"seconds\": %.3f, \"mib\": %g, \"gbytes_per_second\": %.2f, \"checksum\": %g}\n",
             threads, dt, mib, bytes / dt / 1e9, y[n / 2]);
      return 0;
    }
    passes = (long)(passes * (seconds / dt) * 1.05) + 1;
  }
}
