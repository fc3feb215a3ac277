// Shared pieces of the evit_jax XLA:CPU kernels: 8-wide float vectors, activations, and a
// parallel-for on XLA's intra-op thread pool that never blocks a pool thread.

#ifndef EVIT_JAX_CSRC_COMMON_H_
#define EVIT_JAX_CSRC_COMMON_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>

#include "xla/ffi/api/ffi.h"

namespace evit {

namespace ffi = xla::ffi;

// One binary runs everywhere; on x86-64 the hot loops also get an AVX2+FMA clone that is
// picked at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EVIT_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define EVIT_CLONES
#endif
#define EVIT_INLINE __attribute__((always_inline)) inline

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

EVIT_INLINE v8 ld(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
EVIT_INLINE void st(float* p, v8 v) { std::memcpy(p, &v, sizeof(v)); }
EVIT_INLINE v8 splat(float f) { return v8{f, f, f, f, f, f, f, f}; }
EVIT_INLINE v8 vmax(v8 a, v8 b) { return a > b ? a : b; }
EVIT_INLINE v8 vmin(v8 a, v8 b) { return a < b ? a : b; }

// exp(x) to about 2 ulp (Cephes' range reduction and polynomial), inputs clamped to the
// float range.
EVIT_INLINE v8 vexp(v8 x) {
  x = vmin(vmax(x, splat(-87.3f)), splat(88.3f));
  const v8 t = x * splat(1.44269504088896341f) + splat(0.5f);
  v8i n = __builtin_convertvector(t, v8i);  // truncation; make it floor(t):
  n += t < __builtin_convertvector(n, v8);  // true is -1
  const v8 fn = __builtin_convertvector(n, v8);
  const v8 r = x - fn * splat(0.693359375f) + fn * splat(2.12194440e-4f);
  v8 p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  const v8 y = p * r * r + r + splat(1.f);
  v8i bits = (n + 127) << 23;
  v8 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

// Activation codes shared with evit_jax/nn/depthwise.py (NATIVE_ACTS).
enum Act : int64_t { kNone = 0, kRelu = 1, kRelu6 = 2, kHswish = 3, kGelu = 4 };

EVIT_INLINE v8 Apply(v8 v, int64_t act) {
  const v8 zero = splat(0.f), six = splat(6.f);
  switch (act) {
    case kRelu: return vmax(v, zero);
    case kRelu6: return vmin(vmax(v, zero), six);
    case kHswish: return v * vmin(vmax(v + splat(3.f), zero), six) / six;
    case kGelu: {  // tanh-GELU as x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3)
      const v8 u = v * (splat(0.7978845608028654f) + splat(0.035677408136300125f) * v * v);
      return v / (splat(1.f) + vexp(splat(-2.f) * u));
    }
    default: return v;
  }
}

EVIT_INLINE float Apply(float v, int64_t act) {
  v8 r = Apply(splat(v), act);
  return r[0];
}

// Runs body(chunk, begin, end) over [0, n) in up to num_threads chunks of at least `grain`
// items: chunk 0 on the calling thread, the others on XLA's pool. `finish(chunks)` runs once,
// after the last chunk, on whichever thread ends last; the returned future completes after
// it. No thread waits for another, so a pool whose threads are all busy cannot deadlock.
template <typename Body, typename Finish>
ffi::Future ParallelFor(ffi::ThreadPool& pool, int64_t n, int64_t grain, Body body,
                        Finish finish) {
  ffi::Promise promise;
  ffi::Future future(promise);
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t chunks =
      std::max<int64_t>(1, std::min(threads, n / std::max<int64_t>(grain, 1)));
  if (chunks == 1) {
    body(0, 0, n);
    finish(1);
    promise.SetAvailable();
    return future;
  }
  auto left = std::make_shared<std::atomic<int64_t>>(chunks);
  auto run = [=](int64_t chunk) mutable {
    body(chunk, n * chunk / chunks, n * (chunk + 1) / chunks);
    if (left->fetch_sub(1, std::memory_order_acq_rel) == 1) {
      finish(chunks);
      promise.SetAvailable();
    }
  };
  for (int64_t chunk = 1; chunk < chunks; ++chunk)
    pool.Schedule([run, chunk]() mutable { run(chunk); });
  run(0);
  return future;
}

// Enough multiply-adds per chunk to pay for handing it to another thread.
constexpr int64_t kMinChunkMacs = 1 << 16;

inline int64_t Grain(int64_t macs_per_item) {
  return std::max<int64_t>(1, kMinChunkMacs / std::max<int64_t>(1, macs_per_item));
}

}  // namespace evit

#endif  // EVIT_JAX_CSRC_COMMON_H_
