// Depthwise 2-D convolution for XLA:CPU through the XLA FFI (float32, NHWC).
//
// XLA:CPU lowers `feature_group_count == C` convolutions to a slow generic loop (about 20x
// slower than PyTorch here). These kernels keep the channel axis innermost, so every tap is
// a contiguous run of C floats multiplied by a contiguous run of C weights: 8-wide vector
// FMAs with no shuffles. Work is split into row ranges on XLA's intra-op thread pool.
//
// Handlers (symmetric zero padding `pad`, stride `stride`):
//   evit_dw_fwd        x [B,H,W,C], w [k,k,C], bias [C], in_scale [C], in_shift [C]
//                      -> y [B,Ho,Wo,C] = act(conv(pro(x), w) + bias)
//                      with pro(x) = in_act(x * in_scale + in_shift) when in_act >= 0
//                      (the BatchNorm + activation of the 1x1 conv before, applied while
//                      reading: that tensor is never written out) and pro(x) = x otherwise.
//   evit_dw_bwd_input  dy [B,Ho,Wo,C], w [k,k,C] -> dx [B,H,W,C]
//   evit_dw_bwd_kernel x [B,H,W,C], dy [B,Ho,Wo,C] -> dw [k,k,C]
// Activation codes: see `Act` in common.h.

#include <vector>

#include "common.h"

namespace evit {
namespace {

struct Geometry {
  int64_t B, H, W, C, Ho, Wo, k, s, p;
};

// One output pixel, channels [c0, C), taps clipped to the image (border pixels, leftovers).
// rows[i] is input row ih0 + i (valid for i in [i_lo, i_hi)).
EVIT_INLINE void FwdPixel(const float* const* rows, const float* w, const float* bias,
                          float* yp, const Geometry& g, int64_t act, int64_t i_lo,
                          int64_t i_hi, int64_t ow, int64_t c0) {
  const int64_t C = g.C, k = g.k;
  const int64_t iw0 = ow * g.s - g.p;
  const int64_t j_lo = std::max<int64_t>(0, -iw0), j_hi = std::min<int64_t>(k, g.W - iw0);
  int64_t c = c0;
  for (; c + 8 <= C; c += 8) {
    v8 a0 = ld(bias + c);
    for (int64_t i = i_lo; i < i_hi; ++i) {
      const float* xr = rows[i] + iw0 * C + c;
      const float* wr = w + i * k * C + c;
      for (int64_t j = j_lo; j < j_hi; ++j) a0 += ld(xr + j * C) * ld(wr + j * C);
    }
    st(yp + c, Apply(a0, act));
  }
  for (; c < C; ++c) {
    float a = bias[c];
    for (int64_t i = i_lo; i < i_hi; ++i)
      for (int64_t j = j_lo; j < j_hi; ++j)
        a += rows[i][(iw0 + j) * C + c] * w[(i * k + j) * C + c];
    yp[c] = Apply(a, act);
  }
}

// T consecutive output pixels whose taps all lie inside the row, channels [c, c + 8 V):
// T * V accumulators stay in registers; each weight vector is loaded once for all T pixels.
// col0: input column of the first pixel's leftmost tap.
template <int T, int V>
EVIT_INLINE void FwdTile(const float* const* rows, int64_t col0, int64_t c, const float* w,
                         const float* bias, float* y0, const Geometry& g, int64_t act,
                         int64_t i_lo, int64_t i_hi) {
  const int64_t C = g.C, k = g.k, step = g.s * g.C;
  v8 acc[T][V];
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[t][v] = ld(bias + c + 8 * v);
  for (int64_t i = i_lo; i < i_hi; ++i) {
    const float* xr = rows[i] + col0 * C + c;
    const float* wr = w + i * k * C + c;
    for (int64_t j = 0; j < k; ++j) {
      v8 wv[V];
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) wv[v] = ld(wr + j * C + 8 * v);
      const float* xp = xr + j * C;
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
        for (int v = 0; v < V; ++v) acc[t][v] += ld(xp + t * step + 8 * v) * wv[v];
    }
  }
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) st(y0 + t * C + c + 8 * v, Apply(acc[t][v], act));
}

// Output row oh (of one image) from its input rows.
template <int T, int V>
EVIT_INLINE void FwdRowT(const float* const* rows, const float* w, const float* bias, float* yr,
                         const Geometry& g, int64_t act, int64_t i_lo, int64_t i_hi) {
  const int64_t C = g.C, k = g.k, CV = C - C % (8 * V);
  // Interior output columns: every tap of [ow_lo, ow_hi) falls inside the input row.
  const int64_t ow_lo = std::min<int64_t>(g.Wo, (g.p + g.s - 1) / g.s);
  const int64_t ow_hi = std::max<int64_t>(ow_lo, std::min<int64_t>(
      g.Wo, g.W - k + g.p >= 0 ? (g.W - k + g.p) / g.s + 1 : 0));
  for (int64_t ow = 0; ow < ow_lo; ++ow)
    FwdPixel(rows, w, bias, yr + ow * C, g, act, i_lo, i_hi, ow, 0);
  int64_t ow = ow_lo;
  for (; ow + T <= ow_hi; ow += T) {
    for (int64_t c = 0; c < CV; c += 8 * V)
      FwdTile<T, V>(rows, ow * g.s - g.p, c, w, bias, yr + ow * C, g, act, i_lo, i_hi);
    if (CV < C)
      for (int64_t t = 0; t < T; ++t)
        FwdPixel(rows, w, bias, yr + (ow + t) * C, g, act, i_lo, i_hi, ow + t, CV);
  }
  for (; ow < g.Wo; ++ow) FwdPixel(rows, w, bias, yr + ow * C, g, act, i_lo, i_hi, ow, 0);
}

// The tile shape is a measured trade-off: 3x3 kernels are bound by memory traffic and do best
// reading whole cache lines of one pixel (many channels, few pixels); 5x5 kernels are bound
// by arithmetic and do best sharing each weight load across more pixels.
EVIT_INLINE void FwdRow(const float* const* rows, const float* w, const float* bias, float* yr,
                        const Geometry& g, int64_t act, int64_t i_lo, int64_t i_hi) {
  const bool wide = g.k >= 5;
  if (g.C % 32 == 0) {
    if (wide) return FwdRowT<3, 4>(rows, w, bias, yr, g, act, i_lo, i_hi);
    return FwdRowT<1, 4>(rows, w, bias, yr, g, act, i_lo, i_hi);
  }
  if (g.C % 16 == 0) {
    if (wide) return FwdRowT<6, 2>(rows, w, bias, yr, g, act, i_lo, i_hi);
    return FwdRowT<2, 2>(rows, w, bias, yr, g, act, i_lo, i_hi);
  }
  if (wide) return FwdRowT<8, 1>(rows, w, bias, yr, g, act, i_lo, i_hi);
  return FwdRowT<4, 1>(rows, w, bias, yr, g, act, i_lo, i_hi);
}

// pro(x) of one input row into `out`: x * scale + shift, then the activation.
EVIT_INLINE void Prologue(const float* x, const float* scale, const float* shift, float* out,
                          int64_t W, int64_t C, int64_t act) {
  const int64_t C8 = C - C % 8;
  for (int64_t iw = 0; iw < W; ++iw, x += C, out += C) {
    int64_t c = 0;
    for (; c < C8; c += 8) st(out + c, Apply(ld(x + c) * ld(scale + c) + ld(shift + c), act));
    for (; c < C; ++c) out[c] = Apply(x[c] * scale[c] + shift[c], act);
  }
}

struct Pro {
  const float* scale;
  const float* shift;
  int64_t act;  // < 0: no prologue
};

// Output rows [r0, r1) of the flattened (B * Ho) rows. With a prologue, the k input rows in
// use live, transformed, in a ring of k row buffers: each input row is transformed once per
// chunk (its tap rows overlap from one output row to the next).
EVIT_CLONES
void FwdRows(const float* __restrict x, const float* __restrict w, const float* __restrict bias,
             float* __restrict y, Geometry g, int64_t act, Pro pro, int64_t r0, int64_t r1) {
  const int64_t k = g.k, row = g.W * g.C;
  std::vector<float> ring(pro.act >= 0 ? k * row : 0);
  std::vector<int64_t> held(k, -1);  // which input row (b * H + ih) each ring slot holds
  const float* rows[64];
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / g.Ho, oh = r % g.Ho;
    const int64_t ih0 = oh * g.s - g.p;
    const int64_t i_lo = std::max<int64_t>(0, -ih0), i_hi = std::min<int64_t>(k, g.H - ih0);
    for (int64_t i = i_lo; i < i_hi; ++i) {
      const int64_t src = b * g.H + ih0 + i;
      if (pro.act < 0) {
        rows[i] = x + src * row;
        continue;
      }
      const int64_t slot = (ih0 + i) % k;  // k consecutive rows never share a slot
      float* buf = ring.data() + slot * row;
      if (held[slot] != src) {
        Prologue(x + src * row, pro.scale, pro.shift, buf, g.W, g.C, pro.act);
        held[slot] = src;
      }
      rows[i] = buf;
    }
    FwdRow(rows, w, bias, y + r * g.Wo * g.C, g, act, i_lo, i_hi);
  }
}

// dx rows [r0, r1) of the flattened (B * H) input rows: a gather over the taps that reached
// each input pixel, so threads never write the same element.
EVIT_CLONES
void BwdInputRows(const float* __restrict dy, const float* __restrict w, float* __restrict dx,
                  Geometry g, int64_t r0, int64_t r1) {
  const int64_t C = g.C, k = g.k, s = g.s;
  int64_t taps_i[64], rows_o[64], taps_j[64], cols_o[64];
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / g.H, ih = r % g.H;
    int64_t ni = 0;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t t = ih + g.p - i;
      if (t < 0 || t % s || t / s >= g.Ho) continue;
      taps_i[ni] = i;
      rows_o[ni++] = t / s;
    }
    float* dxr = dx + r * g.W * C;
    const float* dyb = dy + b * g.Ho * g.Wo * C;
    for (int64_t iw = 0; iw < g.W; ++iw) {
      int64_t nj = 0;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t t = iw + g.p - j;
        if (t < 0 || t % s || t / s >= g.Wo) continue;
        taps_j[nj] = j;
        cols_o[nj++] = t / s;
      }
      float* dp = dxr + iw * C;
      int64_t c = 0;
      for (; c + 32 <= C; c += 32) {
        v8 a0 = splat(0.f), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t u = 0; u < ni; ++u) {
          const float* dyr = dyb + rows_o[u] * g.Wo * C + c;
          const float* wr = w + taps_i[u] * k * C + c;
          for (int64_t v = 0; v < nj; ++v) {
            const float* yp = dyr + cols_o[v] * C;
            const float* wp = wr + taps_j[v] * C;
            a0 += ld(yp) * ld(wp);
            a1 += ld(yp + 8) * ld(wp + 8);
            a2 += ld(yp + 16) * ld(wp + 16);
            a3 += ld(yp + 24) * ld(wp + 24);
          }
        }
        st(dp + c, a0);
        st(dp + c + 8, a1);
        st(dp + c + 16, a2);
        st(dp + c + 24, a3);
      }
      for (; c + 8 <= C; c += 8) {
        v8 a0 = splat(0.f);
        for (int64_t u = 0; u < ni; ++u)
          for (int64_t v = 0; v < nj; ++v)
            a0 += ld(dyb + (rows_o[u] * g.Wo + cols_o[v]) * C + c) *
                  ld(w + (taps_i[u] * k + taps_j[v]) * C + c);
        st(dp + c, a0);
      }
      for (; c < C; ++c) {
        float a = 0.f;
        for (int64_t u = 0; u < ni; ++u)
          for (int64_t v = 0; v < nj; ++v)
            a += dyb[(rows_o[u] * g.Wo + cols_o[v]) * C + c] *
                 w[(taps_i[u] * k + taps_j[v]) * C + c];
        dp[c] = a;
      }
    }
  }
}

// Adds to acc [k, k, C] the kernel gradient of output rows [r0, r1) (flattened B * Ho).
EVIT_CLONES
void BwdKernelRows(const float* __restrict x, const float* __restrict dy,
                   float* __restrict acc, Geometry g, int64_t r0, int64_t r1) {
  const int64_t C = g.C, k = g.k;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / g.Ho, oh = r % g.Ho;
    const int64_t ih0 = oh * g.s - g.p;
    const int64_t i_lo = std::max<int64_t>(0, -ih0), i_hi = std::min<int64_t>(k, g.H - ih0);
    const float* xb = x + b * g.H * g.W * C;
    const float* dyr = dy + r * g.Wo * C;
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      const int64_t iw0 = ow * g.s - g.p;
      const int64_t j_lo = std::max<int64_t>(0, -iw0), j_hi = std::min<int64_t>(k, g.W - iw0);
      const float* gp = dyr + ow * C;
      int64_t c = 0;
      for (; c + 16 <= C; c += 16) {
        const v8 g0 = ld(gp + c), g1 = ld(gp + c + 8);
        for (int64_t i = i_lo; i < i_hi; ++i) {
          const float* xr = xb + ((ih0 + i) * g.W + iw0) * C + c;
          float* ar = acc + i * k * C + c;
          for (int64_t j = j_lo; j < j_hi; ++j) {
            float* ap = ar + j * C;
            const float* xp = xr + j * C;
            st(ap, ld(ap) + ld(xp) * g0);
            st(ap + 8, ld(ap + 8) + ld(xp + 8) * g1);
          }
        }
      }
      for (; c + 8 <= C; c += 8) {
        const v8 g0 = ld(gp + c);
        for (int64_t i = i_lo; i < i_hi; ++i)
          for (int64_t j = j_lo; j < j_hi; ++j) {
            float* ap = acc + (i * k + j) * C + c;
            st(ap, ld(ap) + ld(xb + ((ih0 + i) * g.W + iw0 + j) * C + c) * g0);
          }
      }
      for (; c < C; ++c)
        for (int64_t i = i_lo; i < i_hi; ++i)
          for (int64_t j = j_lo; j < j_hi; ++j)
            acc[(i * k + j) * C + c] += xb[((ih0 + i) * g.W + iw0 + j) * C + c] * gp[c];
    }
  }
}

ffi::Future DwFwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                  ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> in_scale,
                  ffi::Buffer<ffi::F32> in_shift, ffi::ResultBuffer<ffi::F32> y,
                  int64_t stride, int64_t pad, int64_t act, int64_t in_act) {
  auto xd = x.dimensions(), yd = y->dimensions();
  Geometry g{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], w.dimensions()[0], stride, pad};
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  const float* bp = bias.typed_data();
  const Pro pro{in_scale.typed_data(), in_shift.typed_data(), in_act};
  float* yp = y->typed_data();
  return ParallelFor(
      pool, g.B * g.Ho, Grain(g.Wo * g.C * g.k * g.k),
      [=](int64_t, int64_t r0, int64_t r1) { FwdRows(xp, wp, bp, yp, g, act, pro, r0, r1); },
      [](int64_t) {});
}

ffi::Future DwBwdInput(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> dx, int64_t stride, int64_t pad) {
  auto yd = dy.dimensions(), xd = dx->dimensions();
  Geometry g{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], w.dimensions()[0], stride, pad};
  const float* yp = dy.typed_data();
  const float* wp = w.typed_data();
  float* xp = dx->typed_data();
  const int64_t taps = (g.k + stride - 1) / stride;
  return ParallelFor(
      pool, g.B * g.H, Grain(g.W * g.C * taps * taps),
      [=](int64_t, int64_t r0, int64_t r1) { BwdInputRows(yp, wp, xp, g, r0, r1); },
      [](int64_t) {});
}

ffi::Future DwBwdKernel(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                        ffi::ResultBuffer<ffi::F32> dw, int64_t stride, int64_t pad) {
  auto xd = x.dimensions(), yd = dy.dimensions();
  Geometry g{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], dw->dimensions()[0], stride, pad};
  const float* xp = x.typed_data();
  const float* yp = dy.typed_data();
  float* wp = dw->typed_data();
  const int64_t size = g.k * g.k * g.C;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  // One private accumulator per chunk (at most `threads`), summed in a fixed order at the
  // end, so the result does not depend on which thread ran what.
  auto partial = std::make_shared<std::vector<float>>(threads * size, 0.f);
  float* pp = partial->data();
  return ParallelFor(
      pool, g.B * g.Ho, Grain(g.Wo * g.C * g.k * g.k),
      [=](int64_t chunk, int64_t r0, int64_t r1) {
        BwdKernelRows(xp, yp, pp + chunk * size, g, r0, r1);
      },
      [=](int64_t chunks) {
        std::memcpy(wp, pp, size * sizeof(float));
        for (int64_t t = 1; t < chunks; ++t)
          for (int64_t e = 0; e < size; ++e) wp[e] += pp[t * size + e];
        (void)partial;  // keeps the buffers alive until here
      });
}

}  // namespace
}  // namespace evit

namespace ffi = xla::ffi;

XLA_FFI_DEFINE_HANDLER_SYMBOL(EvitDwFwd, evit::DwFwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad")
                                  .Attr<int64_t>("act")
                                  .Attr<int64_t>("in_act"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(EvitDwBwdInput, evit::DwBwdInput,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(EvitDwBwdKernel, evit::DwBwdKernel,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad"));
