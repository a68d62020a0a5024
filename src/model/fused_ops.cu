// Fused element-wise kernels for the CUDA hot path. candle composes these steps from
// broadcasting binary kernels whose per-element 64-bit index arithmetic made them several
// times slower than the GEMMs they sit between; each kernel here is one pass over memory
// with f32 arithmetic and one rounding to the storage type.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace {

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}

__device__ __forceinline__ float gelu_tanh(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2/pi)
  return 0.5f * x * (1.f + tanhf(k * (x + 0.044715f * x * x * x)));
}

// One value of an affine LayerNorm (mean, 1/std of its row), then the adaLN modulation.
__device__ __forceinline__ float norm_modulate(float x, float mean, float rstd, float w, float b,
                                               float shift, float scale) {
  return ((x - mean) * rstd * w + b) * (1.f + scale) + shift;
}

// One LayerNorm'd pair (2p, 2p+1) of a head, rotated by the RoPE angle with cosine `co`
// and sine `si`.
__device__ __forceinline__ void norm_rotate(const float* x, const float* w, const float* b,
                                            float mean, float rstd, float co, float si,
                                            float* y) {
  const float x0 = (x[0] - mean) * rstd * w[0] + b[0];
  const float x1 = (x[1] - mean) * rstd * w[1] + b[1];
  y[0] = x0 * co - x1 * si;
  y[1] = x0 * si + x1 * co;
}

// out[r, c] = x[r, c] + bias[c] (optionally followed by tanh-GELU); rows × cols contiguous.
template <typename T, bool GELU>
__device__ void bias_act(const T* x, const T* bias, T* out, unsigned rows, unsigned cols) {
  const unsigned n = rows * cols;
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    float v = to_f(x[i]) + to_f(bias[i % cols]);
    out[i] = from_f<T>(GELU ? gelu_tanh(v) : v);
  }
}

// One warp per row of `cols`: affine LayerNorm, then the adaLN
// modulation x·(1 + scale[b]) + shift[b] where b = row / rows_per_batch; the shift/scale
// rows are `mod_stride` elements apart (they are views into one projection).
template <typename T>
__device__ void ln_modulate(const T* x, const T* weight, const T* bias, const T* shift,
                            const T* scale, T* out, unsigned rows, unsigned cols,
                            unsigned rows_per_batch, unsigned mod_stride, float eps) {
  const unsigned warps = blockDim.x / 32;
  const unsigned row = blockIdx.x * warps + threadIdx.x / 32;
  const unsigned lane = threadIdx.x % 32;
  if (row >= rows) return;
  const T* xr = x + (size_t)row * cols;
  float sum = 0.f;
  for (unsigned c = lane; c < cols; c += 32) sum += to_f(xr[c]);
  const float mean = warp_sum(sum) / cols;
  float sq = 0.f;
  for (unsigned c = lane; c < cols; c += 32) {
    const float d = to_f(xr[c]) - mean;
    sq += d * d;
  }
  const float rstd = rsqrtf(warp_sum(sq) / cols + eps);
  const size_t m = (size_t)(row / rows_per_batch) * mod_stride;
  T* orow = out + (size_t)row * cols;
  for (unsigned c = lane; c < cols; c += 32) {
    orow[c] = from_f<T>(norm_modulate(to_f(xr[c]), mean, rstd, to_f(weight[c]), to_f(bias[c]),
                                      to_f(shift[m + c]), to_f(scale[m + c])));
  }
}

// Splits qkv [n, t, 3, heads, hd] (contiguous) into q, k, v [n, heads, t, hd]; q and k get
// the LayerNorm over hd (the same weights for both) and the interleaved RoPE with tables
// cos/sin [n, t, hd/2]. One warp per (n, t, head).
template <typename T>
__device__ void qkv_norm_rope(const T* qkv, const T* w, const T* b, const T* cos_t,
                              const T* sin_t, T* q, T* k, T* v, unsigned n, unsigned t,
                              unsigned heads, unsigned hd, float eps) {
  const unsigned warps = blockDim.x / 32;
  const unsigned item = blockIdx.x * warps + threadIdx.x / 32;
  const unsigned lane = threadIdx.x % 32;
  if (item >= n * t * heads) return;
  const unsigned h = item % heads, tok = item / heads;  // tok = bi * t + ti
  const unsigned bi = tok / t, ti = tok % t;
  const unsigned d = heads * hd, pairs = hd / 2;
  const T* src = qkv + (size_t)tok * 3 * d + h * hd;
  const size_t dst = (((size_t)bi * heads + h) * t + ti) * hd;
  const T* cs = cos_t + (size_t)tok * pairs;
  const T* sn = sin_t + (size_t)tok * pairs;
  for (int which = 0; which < 2; ++which) {
    const T* s = src + which * d;
    float sum = 0.f;
    for (unsigned p = lane; p < pairs; p += 32) sum += to_f(s[2 * p]) + to_f(s[2 * p + 1]);
    const float mean = warp_sum(sum) / hd;
    float sq = 0.f;
    for (unsigned p = lane; p < pairs; p += 32) {
      const float a = to_f(s[2 * p]) - mean, c = to_f(s[2 * p + 1]) - mean;
      sq += a * a + c * c;
    }
    const float rstd = rsqrtf(warp_sum(sq) / hd + eps);
    T* o = (which == 0 ? q : k) + dst;
    for (unsigned p = lane; p < pairs; p += 32) {
      const float x[2] = {to_f(s[2 * p]), to_f(s[2 * p + 1])};
      const float wp[2] = {to_f(w[2 * p]), to_f(w[2 * p + 1])};
      const float bp[2] = {to_f(b[2 * p]), to_f(b[2 * p + 1])};
      float y[2];
      norm_rotate(x, wp, bp, mean, rstd, to_f(cs[p]), to_f(sn[p]), y);
      o[2 * p] = from_f<T>(y[0]);
      o[2 * p + 1] = from_f<T>(y[1]);
    }
  }
  const T* s = src + 2 * d;
  for (unsigned c = lane; c < hd; c += 32) v[dst + c] = s[c];
}

// out [n, heads, slots·t, hd]: slot s of block i is block idx[s·n + i] of src
// [m, heads, t, hd], plus emb[s, head, :] when emb is given. One thread per 8 consecutive
// elements (hd is a multiple of 8), which amortises the index arithmetic.
template <typename T>
__device__ void gather_slots(const T* src, const uint32_t* idx, const T* emb, T* out,
                             unsigned n, unsigned heads, unsigned t, unsigned hd,
                             unsigned slots) {
  const unsigned groups = n * heads * slots * t * (hd / 8);
  for (unsigned g = blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += gridDim.x * blockDim.x) {
    const unsigned c = (g % (hd / 8)) * 8;
    unsigned r = g / (hd / 8);
    const unsigned st = r % (slots * t);
    r /= slots * t;
    const unsigned h = r % heads, bi = r / heads;
    const unsigned s = st / t, ti = st % t;
    const T* from = src + (((size_t)idx[s * n + bi] * heads + h) * t + ti) * hd + c;
    T* to = out + (size_t)g * 8;
    if (emb) {
      const T* e = emb + (s * heads + h) * hd + c;
#pragma unroll
      for (int j = 0; j < 8; ++j) to[j] = from_f<T>(to_f(from[j]) + to_f(e[j]));
    } else {
#pragma unroll
      for (int j = 0; j < (int)(sizeof(T) * 8 / 16); ++j)
        reinterpret_cast<uint4*>(to)[j] = reinterpret_cast<const uint4*>(from)[j];
    }
  }
}

// Eight 16-bit values as one 16-byte access (`p` 16-byte aligned), converted to f32.
template <typename T> __device__ __forceinline__ void load8(const T* p, float* f) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int j = 0; j < 8; ++j) f[j] = to_f(e[j]);
}
template <typename T> __device__ __forceinline__ void store8(T* p, const float* f) {
  uint4 u;
  T* e = reinterpret_cast<T*>(&u);
#pragma unroll
  for (int j = 0; j < 8; ++j) e[j] = from_f<T>(f[j]);
  *reinterpret_cast<uint4*>(p) = u;
}
// Four 16-bit values as one 8-byte access (`p` 8-byte aligned).
template <typename T> __device__ __forceinline__ void load4(const T* p, float* f) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int j = 0; j < 4; ++j) f[j] = to_f(e[j]);
}

// `ln_modulate` for 16-bit rows of 256·J values: each lane reads its 8·J values once, in
// 16-byte accesses, and keeps them in registers for the mean, the variance and the output
// (the scalar kernel reads the row three times, two bytes at a time). Every pointer and
// `mod_stride` must be 16-byte aligned.
template <typename T, int J>
__device__ void ln_modulate_vec(const T* x, const T* weight, const T* bias, const T* shift,
                                const T* scale, T* out, unsigned rows, unsigned rows_per_batch,
                                unsigned mod_stride, float eps) {
  constexpr unsigned cols = 256 * J;
  const unsigned warps = blockDim.x / 32;
  const unsigned row = blockIdx.x * warps + threadIdx.x / 32;
  const unsigned lane = threadIdx.x % 32;
  if (row >= rows) return;
  const T* xr = x + (size_t)row * cols;
  float v[J][8];
  float sum = 0.f;
#pragma unroll
  for (int j = 0; j < J; ++j) {
    load8(xr + (lane + 32 * j) * 8, v[j]);
#pragma unroll
    for (int e = 0; e < 8; ++e) sum += v[j][e];
  }
  const float mean = warp_sum(sum) / cols;
  float sq = 0.f;
#pragma unroll
  for (int j = 0; j < J; ++j)
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float d = v[j][e] - mean;
      sq += d * d;
    }
  const float rstd = rsqrtf(warp_sum(sq) / cols + eps);
  const size_t m = (size_t)(row / rows_per_batch) * mod_stride;
  T* orow = out + (size_t)row * cols;
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const unsigned c = (lane + 32 * j) * 8;
    float w[8], b[8], sh[8], sc[8];
    load8(weight + c, w);
    load8(bias + c, b);
    load8(shift + m + c, sh);
    load8(scale + m + c, sc);
#pragma unroll
    for (int e = 0; e < 8; ++e) v[j][e] = norm_modulate(v[j][e], mean, rstd, w[e], b[e], sh[e], sc[e]);
    store8(orow + c, v[j]);
  }
}

// `qkv_norm_rope` for 16-bit values with one thread per (token, head): the head's HD values
// of q, then k, are read once in 16-byte accesses and normalised and rotated in registers,
// and v is copied 16 bytes at a time (the scalar kernel spends a warp per (token, head)
// on two-byte accesses). qkv, the outputs and the norm weights must be 16-byte aligned,
// the RoPE tables 8-byte aligned.
template <typename T, int HD>
__device__ void qkv_norm_rope_vec(const T* qkv, const T* w, const T* b, const T* cos_t,
                                  const T* sin_t, T* q, T* k, T* v, unsigned n, unsigned t,
                                  unsigned heads, float eps) {
  static_assert(HD % 8 == 0, "head dim must be a multiple of 8");
  constexpr int kC = HD / 8;  // 16-byte chunks per head
  const unsigned item = blockIdx.x * blockDim.x + threadIdx.x;
  if (item >= n * t * heads) return;
  const unsigned h = item % heads, tok = item / heads;
  const unsigned bi = tok / t, ti = tok % t;
  const unsigned d = heads * HD;
  const T* src = qkv + (size_t)tok * 3 * d + h * HD;
  const size_t dst = (((size_t)bi * heads + h) * t + ti) * HD;
  const T* cs = cos_t + (size_t)tok * (HD / 2);
  const T* sn = sin_t + (size_t)tok * (HD / 2);
#pragma unroll
  for (int which = 0; which < 2; ++which) {
    float x[HD];
#pragma unroll
    for (int c = 0; c < kC; ++c) load8(src + which * d + c * 8, x + c * 8);
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < HD; ++i) sum += x[i];
    const float mean = sum / HD;
    float sq = 0.f;
#pragma unroll
    for (int i = 0; i < HD; ++i) sq += (x[i] - mean) * (x[i] - mean);
    const float rstd = rsqrtf(sq / HD + eps);
    T* o = (which == 0 ? q : k) + dst;
#pragma unroll
    for (int c = 0; c < kC; ++c) {
      float wv[8], bv[8], co[4], si[4], y[8];
      load8(w + c * 8, wv);
      load8(b + c * 8, bv);
      load4(cs + c * 4, co);
      load4(sn + c * 4, si);
#pragma unroll
      for (int p = 0; p < 4; ++p)
        norm_rotate(x + c * 8 + 2 * p, wv + 2 * p, bv + 2 * p, mean, rstd, co[p], si[p], y + 2 * p);
      store8(o + c * 8, y);
    }
  }
#pragma unroll
  for (int c = 0; c < kC; ++c)
    *reinterpret_cast<uint4*>(v + dst + c * 8) =
        *reinterpret_cast<const uint4*>(src + 2 * d + c * 8);
}

}  // namespace

#define FUSED_ENTRIES(T, NAME)                                                                 \
  extern "C" __global__ void bias_add_##NAME(const T* x, const T* b, T* o, unsigned r,          \
                                             unsigned c) {                                      \
    bias_act<T, false>(x, b, o, r, c);                                                          \
  }                                                                                             \
  extern "C" __global__ void bias_gelu_##NAME(const T* x, const T* b, T* o, unsigned r,         \
                                              unsigned c) {                                     \
    bias_act<T, true>(x, b, o, r, c);                                                           \
  }                                                                                             \
  extern "C" __global__ void ln_modulate_##NAME(const T* x, const T* w, const T* b,             \
                                                const T* shift, const T* scale, T* o,           \
                                                unsigned rows, unsigned cols, unsigned rpb,     \
                                                unsigned ms, float eps) {                       \
    ln_modulate<T>(x, w, b, shift, scale, o, rows, cols, rpb, ms, eps);                         \
  }                                                                                             \
  extern "C" __global__ void qkv_norm_rope_##NAME(const T* qkv, const T* w, const T* b,         \
                                                  const T* cs, const T* sn, T* q, T* k, T* v,   \
                                                  unsigned n, unsigned t, unsigned heads,       \
                                                  unsigned hd, float eps) {                     \
    qkv_norm_rope<T>(qkv, w, b, cs, sn, q, k, v, n, t, heads, hd, eps);                         \
  }                                                                                             \
  extern "C" __global__ void gather_slots_##NAME(const T* src, const uint32_t* idx,             \
                                                 const T* emb, T* o, unsigned n,                \
                                                 unsigned heads, unsigned t, unsigned hd,       \
                                                 unsigned slots) {                              \
    gather_slots<T>(src, idx, emb, o, n, heads, t, hd, slots);                                  \
  }

FUSED_ENTRIES(float, f32)
FUSED_ENTRIES(__nv_bfloat16, bf16)
FUSED_ENTRIES(__half, f16)

// The vectorised variants, for the 16-bit types only: `ln_modulate_vec{J}` rows of 256·J
// values, `qkv_norm_rope_vec{HD}` head dim HD.
#define LN_VEC_ENTRY(T, NAME, J)                                                               \
  extern "C" __global__ void ln_modulate_vec##J##_##NAME(                                      \
      const T* x, const T* w, const T* b, const T* shift, const T* scale, T* o, unsigned rows,  \
      unsigned rpb, unsigned ms, float eps) {                                                  \
    ln_modulate_vec<T, J>(x, w, b, shift, scale, o, rows, rpb, ms, eps);                       \
  }
#define QKV_VEC_ENTRY(T, NAME, HD)                                                             \
  extern "C" __global__ void qkv_norm_rope_vec##HD##_##NAME(                                   \
      const T* qkv, const T* w, const T* b, const T* cs, const T* sn, T* q, T* k, T* v,        \
      unsigned n, unsigned t, unsigned heads, float eps) {                                     \
    qkv_norm_rope_vec<T, HD>(qkv, w, b, cs, sn, q, k, v, n, t, heads, eps);                    \
  }
#define VEC_ENTRIES(T, NAME)                                                                   \
  LN_VEC_ENTRY(T, NAME, 1)                                                                     \
  LN_VEC_ENTRY(T, NAME, 2)                                                                     \
  LN_VEC_ENTRY(T, NAME, 3)                                                                     \
  LN_VEC_ENTRY(T, NAME, 4)                                                                     \
  LN_VEC_ENTRY(T, NAME, 5)                                                                     \
  LN_VEC_ENTRY(T, NAME, 6)                                                                     \
  LN_VEC_ENTRY(T, NAME, 8)                                                                     \
  QKV_VEC_ENTRY(T, NAME, 16)                                                                   \
  QKV_VEC_ENTRY(T, NAME, 32)                                                                   \
  QKV_VEC_ENTRY(T, NAME, 48)                                                                   \
  QKV_VEC_ENTRY(T, NAME, 64)                                                                   \
  QKV_VEC_ENTRY(T, NAME, 80)                                                                   \
  QKV_VEC_ENTRY(T, NAME, 96)                                                                   \
  QKV_VEC_ENTRY(T, NAME, 128)

VEC_ENTRIES(__nv_bfloat16, bf16)
VEC_ENTRIES(__half, f16)
