// Fused attention forward for CUDA (sm_80+): softmax(q·kᵀ·scale)·v without materialising
// the scores, in the manner of FlashAttention-2. One CTA handles 128 queries of one
// (batch, head); each of its 8 warps owns 16 query rows and walks the keys in tiles of 64
// with an online softmax (or 4 warps own 32 rows each, see FLASH_ENTRY; on Hopper, two
// warpgroups own 64 rows each and use warpgroup MMAs, see `Wgmma`). Products use bf16/f16
// tensor-core MMAs (m16n8k16) with f32 accumulation; the running max, sum and output stay
// in f32 registers. K/V tiles are double-buffered in shared memory with cp.async so loads
// overlap the MMAs.
//
// The grid is one CTA per (batch, head, 128-query tile), flattened so any batch fits.
// Head dims up to 80 keep the double-buffered tiles within 48 KiB of static shared memory.
//
// Layout: q/k/v are [batch, heads, tokens, D] with arbitrary element strides for batch,
// head and token and a contiguous last dimension (16-byte aligned rows); the output is
// written contiguous as [batch, tq, heads, D], which is what the attention's output
// projection reads.
//
// Paged keys and values (the block attention's neighbour slots): instead of one K/V
// sequence per batch entry, query block b reads `slots` pages of `page` tokens each, page
// s being block idx[s·batch + b] of a pool (entries below `batch` from the batch's own
// K/V, the rest from a second pool of cached blocks), with the slot's embedding e_s added
// to its keys. This reads the neighbours where they lie instead of gathering copies
// first. The embedding enters as q·(k + e_s) = q·k + q·e_s: q·e_s is one MMA per query
// row and slot at the start, added to the row's softmax offset for every tile of that
// slot (exact in f32, where the gathered keys would round k + e_s to 16 bits).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace {

constexpr int kCols = 64;           // keys per tile
constexpr int kPad = 8;             // row padding (elements) that makes ldmatrix conflict-free

template <typename T> struct Mma;

// m16n8k16 MMA with f32 accumulation, and packing two f32 into one register of T pairs.
#define MMA_FOR(T, PTX_TYPE, T2, CONVERT)                                                     \
  template <> struct Mma<T> {                                                                 \
    static __device__ __forceinline__ void run(float* c, const uint32_t* a, uint32_t b0,      \
                                               uint32_t b1) {                                 \
      asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." PTX_TYPE "." PTX_TYPE ".f32 "     \
                   "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"                \
                   : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                           \
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));          \
    }                                                                                         \
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {                     \
      T2 v = CONVERT(lo, hi);                                                                 \
      return *reinterpret_cast<uint32_t*>(&v);                                                \
    }                                                                                         \
  };

MMA_FOR(__nv_bfloat16, "bf16", __nv_bfloat162, __floats2bfloat162_rn)
MMA_FOR(__half, "f16", __half2, __floats2half2_rn)

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

template <typename E>
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const E* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Hopper (sm_90a) warpgroup MMAs for the `wg` entries. A warpgroup (4 warps, 64 query
// rows) multiplies its queries, held in registers in the same fragment layout as the
// m16n8k16 path, by a K or V tile that wgmma reads from shared memory itself, so no warp
// spends instructions on ldmatrix. The accumulator layout of m64nNk16 gives each warp
// the same 16 rows and per-thread elements as the m16n8 fragments, so the online softmax
// and the output below serve both paths unchanged.
//
// Tiles use the no-swizzle ("interleaved") canonical layout: core matrices of 8 rows ×
// 16 bytes (8 keys × 8 head-dim elements), 128 contiguous bytes each; core matrix
// (key / 8, d / 8) lies at (key / 8)·(D / 8)·128 + (d / 8)·128 bytes. For q·kᵀ the tile is
// B in K-major form (K = head dim: leading offset 128 B, stride offset (D / 8)·128 B); for
// p·v it is B in N-major form (trans-b; K = keys: leading offset (D / 8)·128 B, stride
// offset 128 B).
template <typename T, int N, int TRANS> struct Wgmma;

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// m64nNk16 with A in registers: the operand lists of each N (the accumulator's N/2
// placeholders, then A's four, the descriptor and scale-d), and one specialisation per
// type, N and transpose-B flag.
#define WG_ACC_16 "{%0, %1, %2, %3, %4, %5, %6, %7}"
#define WG_IN_16 "{%8, %9, %10, %11}, %12"
#define WG_SCALE_16 "%13"
#define WG_OPS_16 \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
#define WG_ACC_32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define WG_IN_32 "{%16, %17, %18, %19}, %20"
#define WG_SCALE_32 "%21"
#define WG_OPS_32 \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
#define WG_ACC_48 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23}"
#define WG_IN_48 "{%24, %25, %26, %27}, %28"
#define WG_SCALE_48 "%29"
#define WG_OPS_48 \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23])
#define WG_ACC_64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define WG_IN_64 "{%32, %33, %34, %35}, %36"
#define WG_SCALE_64 "%37"
#define WG_OPS_64 \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define WG_ACC_80 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39}"
#define WG_IN_80 "{%40, %41, %42, %43}, %44"
#define WG_SCALE_80 "%45"
#define WG_OPS_80 \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39])
#define WGMMA(T, PTX, N, TRANS)                                                                \
  template <> struct Wgmma<T, N, TRANS> {                                                      \
    static __device__ __forceinline__ void run(float* d, const uint32_t* a, uint64_t desc,     \
                                               int accumulate) {                               \
      asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " WG_SCALE_##N ", 0;\n"                  \
                   "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PTX "." PTX " "           \
                   WG_ACC_##N ", " WG_IN_##N ", p, 1, 1, " #TRANS ";\n}\n"                     \
                   : WG_OPS_##N                                                                \
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate)); \
    }                                                                                          \
  };
// q·kᵀ uses N = 64 keys (K-major); p·v uses N = the head dim (N-major, trans-b).
#define WGMMA_TYPE(T, PTX)                                                                     \
  WGMMA(T, PTX, 64, 0)                                                                         \
  WGMMA(T, PTX, 16, 1)                                                                         \
  WGMMA(T, PTX, 32, 1)                                                                         \
  WGMMA(T, PTX, 48, 1)                                                                         \
  WGMMA(T, PTX, 64, 1)                                                                         \
  WGMMA(T, PTX, 80, 1)
WGMMA_TYPE(__nv_bfloat16, "bf16")
WGMMA_TYPE(__half, "f16")
#endif

// Shared-memory matrix descriptor without swizzling: start address, leading- and
// stride-dimension byte offsets, each in units of 16 bytes.
template <typename E>
__device__ __forceinline__ uint64_t smem_desc(const E* p, uint32_t lead, uint32_t stride) {
  return (uint64_t)((smem_addr(p) & 0x3FFFF) >> 4) | ((uint64_t)(lead >> 4) << 16) |
         ((uint64_t)(stride >> 4) << 32);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Makes shared-memory writes of this thread (cp.async or plain stores) visible to wgmma,
// which reads through the async proxy.
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Pins registers that an asynchronous wgmma reads or writes: before the fence, so their
// last ordinary writes stay above it; after the wait, so their next uses stay below it.
template <int N> __device__ __forceinline__ void pin(float* r) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N> __device__ __forceinline__ void pin(uint32_t* r) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

// Where the key/value rows of one (batch entry, head) lie: one strided sequence, or pages.
template <typename T> struct Rows {
  const T* seq;      // this (batch, head)'s first row (contiguous mode), else the batch pool
  const T* extra;    // paged: the pool of cached blocks
  long sb, sh, st;   // strides of batch entry (pool block), head, token
  const uint32_t* idx;  // paged: [slots, batch] pool block of each page; null: contiguous
  int batch, page, b, h;

  __device__ __forceinline__ const T* row(int r) const {
    if (!idx) return seq + (long)r * st;
    const int s = r / page;
    unsigned blk = idx[s * batch + b];
    const T* pool = seq;
    if (blk >= (unsigned)batch) {
      pool = extra;
      blk -= batch;
    }
    return pool + blk * sb + h * sh + (long)(r - s * page) * st;
  }
};

// Copies rows [row0, row0 + kCols) of `src` into a padded tile; rows past `rows` are
// zero-filled. Pages are whole tiles, so one lookup finds the tile's rows.
template <typename T, int D>
__device__ __forceinline__ void load_tile(T* tile, const Rows<T>& src, int row0, int rows) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  const T* base = src.row(row0);
  for (int i = threadIdx.x; i < kCols * kChunks; i += blockDim.x) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    T* dst = tile + r * (D + kPad) + c;
    if (row0 + r < rows) {
      cp_async16(dst, base + (long)r * src.st + c);
    } else {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    }
  }
}

// `load_tile` into the interleaved layout of the wgmma path. Eight consecutive threads
// fill one 128-byte core matrix (8 keys, one 16-byte chunk each), which keeps the shared
// stores conflict-free, while threads 8 apart read neighbouring chunks of the same keys,
// so each warp reads whole 32-byte sectors.
template <typename T, int D>
__device__ __forceinline__ void load_tile_wg(T* tile, const Rows<T>& src, int row0, int rows) {
  constexpr int kChunks = D / 8;
  const T* base = src.row(row0);
  for (int i = threadIdx.x; i < kCols * kChunks; i += blockDim.x) {
    const int lo = i % 8, c = (i / 8) % kChunks, hi = i / (8 * kChunks);
    const int r = hi * 8 + lo;
    T* dst = tile + (hi * kChunks + c) * 64 + lo * 8;
    if (row0 + r < rows) {
      cp_async16(dst, base + (long)r * src.st + c * 8);
    } else {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    }
  }
}

template <typename T, int D, int M, int W, bool WG>
__device__ void flash_forward(const T* __restrict__ q, Rows<T> k, Rows<T> v, const T* emb,
                              T* __restrict__ o, int heads, int tq, int tk, long q_sb,
                              long q_sh, long q_st, float scale_log2) {
  static_assert(D % 16 == 0, "head dim must be a multiple of 16");
  static_assert(!WG || (M == 1 && W == 8), "the wgmma path has two warpgroups of 16-row warps");
  constexpr int kRows = 16 * M * W;  // queries per CTA
  constexpr int kSteps = D / 16;     // k16 steps over the head dim
  constexpr int kDn = D / 8;         // n8 output tiles over the head dim
  constexpr int kSn = kCols / 8;     // n8 score tiles per key tile
  constexpr int kLd = D + kPad;
  __shared__ __align__(16) T ks[2][kCols * kLd];
  __shared__ __align__(16) T vs[2][kCols * kLd];

  const int q_tiles = (tq + kRows - 1) / kRows;
  const int h = (blockIdx.x / q_tiles) % heads, b = blockIdx.x / q_tiles / heads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, c2 = (lane % 4) * 2;  // fragment row group, column pair
  const int row0 = (blockIdx.x % q_tiles) * kRows + warp * 16 * M;
  q += b * q_sb + h * q_sh;
  k.b = v.b = b;
  k.h = v.h = h;
  if (!k.idx) {
    k.seq += b * k.sb + h * k.sh;
    v.seq += b * v.sb + h * v.sh;
  }

  const int tiles = (tk + kCols - 1) / kCols;
  auto load_kv = [&](int buf, int key0) {
    if constexpr (WG) {
      load_tile_wg<T, D>(ks[buf], k, key0, tk);
      load_tile_wg<T, D>(vs[buf], v, key0, tk);
    } else {
      load_tile<T, D>(ks[buf], k, key0, tk);
      load_tile<T, D>(vs[buf], v, key0, tk);
    }
    cp_async_commit();
  };
  load_kv(0, 0);

  // This warp's queries (M tiles of 16 rows) as MMA A-fragments, from global memory.
  uint32_t qa[M][kSteps][4];
#pragma unroll
  for (int mi = 0; mi < M; ++mi)
#pragma unroll
    for (int s = 0; s < kSteps; ++s)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int r = row0 + mi * 16 + g + (j % 2) * 8, c = s * 16 + c2 + (j / 2) * 8;
        qa[mi][s][j] = r < tq ? *reinterpret_cast<const uint32_t*>(q + (long)r * q_st + c) : 0u;
      }

  // Paged: q·e_s for this warp's rows and the (up to 8) slots, as one n8 MMA tile per
  // row tile: column c of element j is slot c2 + j % 2 of row g + (j / 2) * 8. The
  // embedding rows pass through the second K buffer before its first use.
  float qe[M][4];
#pragma unroll
  for (int mi = 0; mi < M; ++mi) qe[mi][0] = qe[mi][1] = qe[mi][2] = qe[mi][3] = 0.f;
  if (emb) {
    T* et = ks[1];
    for (int i = threadIdx.x; i < 16 * D; i += blockDim.x) {
      const int r = i / D, c = i % D;
      et[r * kLd + c] = r < tk / k.page ? emb[((long)r * heads + h) * D + c] : T(0.f);
    }
    __syncthreads();
#pragma unroll
    for (int st = 0; st < kSteps; ++st) {
      const int m = lane / 8;
      uint32_t eb[4];
      ldmatrix_x4(eb, et + ((m / 2) * 8 + lane % 8) * kLd + st * 16 + (m % 2) * 8);
#pragma unroll
      for (int mi = 0; mi < M; ++mi) Mma<T>::run(qe[mi], qa[mi][st], eb[0], eb[1]);
    }
    __syncthreads();
  }

  float acc[M][kDn][4];
#pragma unroll
  for (int mi = 0; mi < M; ++mi)
#pragma unroll
    for (int n = 0; n < kDn; ++n) acc[mi][n][0] = acc[mi][n][1] = acc[mi][n][2] = acc[mi][n][3] = 0.f;
  // row_max: in units of scale_log2 (offsets included); row_sum: this thread's share,
  // summed over the quad at the end.
  float row_max[M][2], row_sum[M][2];
#pragma unroll
  for (int mi = 0; mi < M; ++mi) {
    row_max[mi][0] = row_max[mi][1] = -INFINITY;
    row_sum[mi][0] = row_sum[mi][1] = 0.f;
  }

  for (int t = 0; t < tiles; ++t) {
    const int buf = t & 1;
    if (t + 1 < tiles) {
      load_kv(buf ^ 1, (t + 1) * kCols);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    if constexpr (WG) fence_async_shared();
    __syncthreads();
    const T* kt = ks[buf];
    const T* vt = vs[buf];

    float s[M][kSn][4];
    if constexpr (WG) {
      // s = q·kᵀ over the tile, one m64n64k16 per 16 head-dim elements; the first step
      // overwrites the accumulator.
      pin<kSteps * 4>(&qa[0][0][0]);
      wgmma_fence();
#pragma unroll
      for (int st = 0; st < kSteps; ++st)
        Wgmma<T, kCols, 0>::run(&s[0][0][0], qa[0][st], smem_desc(kt + st * 128, 128, kDn * 128),
                                st);
      wgmma_commit();
      wgmma_wait_all();
      pin<kSn * 4>(&s[0][0][0]);
    } else {
      // Each K fragment loaded from shared memory serves all M row tiles.
#pragma unroll
      for (int mi = 0; mi < M; ++mi)
#pragma unroll
        for (int n = 0; n < kSn; ++n) s[mi][n][0] = s[mi][n][1] = s[mi][n][2] = s[mi][n][3] = 0.f;
#pragma unroll
      for (int st = 0; st < kSteps; ++st) {
#pragma unroll
        for (int np = 0; np < kSn / 2; ++np) {
          const int m = lane / 8;
          uint32_t kb[4];
          ldmatrix_x4(kb, kt + (np * 16 + (m / 2) * 8 + lane % 8) * kLd + st * 16 + (m % 2) * 8);
#pragma unroll
          for (int mi = 0; mi < M; ++mi) {
            Mma<T>::run(s[mi][2 * np], qa[mi][st], kb[0], kb[1]);
            Mma<T>::run(s[mi][2 * np + 1], qa[mi][st], kb[2], kb[3]);
          }
        }
      }
    }

    const int key0 = t * kCols;
    if (key0 + kCols > tk) {
#pragma unroll
      for (int mi = 0; mi < M; ++mi)
#pragma unroll
        for (int n = 0; n < kSn; ++n)
#pragma unroll
          for (int j = 0; j < 4; ++j)
            if (key0 + n * 8 + c2 + (j % 2) >= tk) s[mi][n][j] = -INFINITY;
    }

    // This tile's slot offset q·e_s per row (paged; pages are whole tiles), read from the
    // quad lane that holds column s.
    float off[M][2];
#pragma unroll
    for (int mi = 0; mi < M; ++mi)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        off[mi][i] = 0.f;
        if (emb) {
          const int slot = key0 / k.page;
          const float mine = slot & 1 ? qe[mi][2 * i + 1] : qe[mi][2 * i];
          off[mi][i] = __shfl_sync(0xffffffff, mine, (lane & ~3) | (slot >> 1)) * scale_log2;
        }
      }

    // Online softmax; element j of a score fragment belongs to row g + (j / 2) * 8.
#pragma unroll
    for (int mi = 0; mi < M; ++mi)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < kSn; ++n) mx = fmaxf(mx, fmaxf(s[mi][n][2 * i], s[mi][n][2 * i + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
        const float m_new = fmaxf(row_max[mi][i], mx * scale_log2 + off[mi][i]);
        const float base = m_new == -INFINITY ? 0.f : m_new;
        const float alpha = fast_exp2(row_max[mi][i] - base);
        row_max[mi][i] = m_new;
        const float shift = base - off[mi][i];
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < kSn; ++n) {
          s[mi][n][2 * i] = fast_exp2(s[mi][n][2 * i] * scale_log2 - shift);
          s[mi][n][2 * i + 1] = fast_exp2(s[mi][n][2 * i + 1] * scale_log2 - shift);
          sum += s[mi][n][2 * i] + s[mi][n][2 * i + 1];
        }
        row_sum[mi][i] = row_sum[mi][i] * alpha + sum;
#pragma unroll
        for (int n = 0; n < kDn; ++n) {
          acc[mi][n][2 * i] *= alpha;
          acc[mi][n][2 * i + 1] *= alpha;
        }
      }

    // acc += P·V: the score fragments of two adjacent n8 tiles form one A-fragment.
    if constexpr (WG) {
      // All of the tile's A-fragments first: wgmma reads them asynchronously, so they stay
      // untouched (pinned) until the wait.
      uint32_t pa[kCols / 16][4];
#pragma unroll
      for (int kk = 0; kk < kCols / 16; ++kk) {
        pa[kk][0] = Mma<T>::pack(s[0][2 * kk][0], s[0][2 * kk][1]);
        pa[kk][1] = Mma<T>::pack(s[0][2 * kk][2], s[0][2 * kk][3]);
        pa[kk][2] = Mma<T>::pack(s[0][2 * kk + 1][0], s[0][2 * kk + 1][1]);
        pa[kk][3] = Mma<T>::pack(s[0][2 * kk + 1][2], s[0][2 * kk + 1][3]);
      }
      pin<kDn * 4>(&acc[0][0][0]);
      pin<kCols / 4>(&pa[0][0]);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kCols / 16; ++kk)
        Wgmma<T, D, 1>::run(&acc[0][0][0], pa[kk], smem_desc(vt + kk * 16 * D, kDn * 128, 128), 1);
      wgmma_commit();
      wgmma_wait_all();
      pin<kDn * 4>(&acc[0][0][0]);
      pin<kCols / 4>(&pa[0][0]);
    } else {
#pragma unroll
      for (int kk = 0; kk < kCols / 16; ++kk) {
        uint32_t pa[M][4];
#pragma unroll
        for (int mi = 0; mi < M; ++mi) {
          pa[mi][0] = Mma<T>::pack(s[mi][2 * kk][0], s[mi][2 * kk][1]);
          pa[mi][1] = Mma<T>::pack(s[mi][2 * kk][2], s[mi][2 * kk][3]);
          pa[mi][2] = Mma<T>::pack(s[mi][2 * kk + 1][0], s[mi][2 * kk + 1][1]);
          pa[mi][3] = Mma<T>::pack(s[mi][2 * kk + 1][2], s[mi][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < kDn / 2; ++dp) {
          const int m = lane / 8;
          uint32_t vb[4];
          ldmatrix_x4_trans(vb, vt + (kk * 16 + (m % 2) * 8 + lane % 8) * kLd + dp * 16 + (m / 2) * 8);
#pragma unroll
          for (int mi = 0; mi < M; ++mi) {
            Mma<T>::run(acc[mi][2 * dp], pa[mi], vb[0], vb[1]);
            Mma<T>::run(acc[mi][2 * dp + 1], pa[mi], vb[2], vb[3]);
          }
        }
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int mi = 0; mi < M; ++mi)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float l = row_sum[mi][i];
      l += __shfl_xor_sync(0xffffffff, l, 1);
      l += __shfl_xor_sync(0xffffffff, l, 2);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int r = row0 + mi * 16 + g + i * 8;
      if (r < tq) {
        T* out = o + (((long)b * tq + r) * heads + h) * D;
#pragma unroll
        for (int n = 0; n < kDn; ++n)
          *reinterpret_cast<uint32_t*>(out + n * 8 + c2) =
              Mma<T>::pack(acc[mi][n][2 * i] * inv, acc[mi][n][2 * i + 1] * inv);
      }
    }
}

}  // namespace

// Shapes of CTA, all 128 queries: 8 warps of 16 rows (`w8`), 4 warps of 32 rows (`w4`),
// which loads each K/V fragment from shared memory once for two row tiles, or on sm_90a
// two warpgroups of 64 rows (`wg`, at the end). The
// `_paged` entries read neighbour slots (see the top of this file): k/v are the batch
// pool, kx/vx the cached pool, both with the strides k_s*/v_s*; `page` must be a multiple
// of the 64-key tile and `slots` at most 8.
#define FLASH_ENTRY(NAME, T, D, M, W, MIN_CTAS, WG)                                            \
  extern "C" __global__ void __launch_bounds__(W * 32, MIN_CTAS)                                \
      NAME(const T* q, const T* k, const T* v, T* o, int heads, int tq, int tk, long q_sb,    \
           long q_sh, long q_st, long k_sb, long k_sh, long k_st, long v_sb, long v_sh,       \
           long v_st, float scale_log2) {                                                     \
    const Rows<T> kr{k, nullptr, k_sb, k_sh, k_st, nullptr, 0, 0, 0, 0};                      \
    const Rows<T> vr{v, nullptr, v_sb, v_sh, v_st, nullptr, 0, 0, 0, 0};                      \
    flash_forward<T, D, M, W, WG>(q, kr, vr, nullptr, o, heads, tq, tk, q_sb, q_sh, q_st,    \
                                  scale_log2);                                                \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(W * 32, MIN_CTAS)                                \
      NAME##_paged(const T* q, const T* k, const T* v, const T* kx, const T* vx,              \
                   const uint32_t* idx, const T* emb, T* o, int heads, int tq, int slots,     \
                   int page, int batch, long q_sb, long q_sh, long q_st, long k_sb,           \
                   long k_sh, long k_st, long v_sb, long v_sh, long v_st, float scale_log2) { \
    const Rows<T> kr{k, kx, k_sb, k_sh, k_st, idx, batch, page, 0, 0};                        \
    const Rows<T> vr{v, vx, v_sb, v_sh, v_st, idx, batch, page, 0, 0};                        \
    flash_forward<T, D, M, W, WG>(q, kr, vr, emb, o, heads, tq, slots * page, q_sb, q_sh,    \
                                  q_st, scale_log2);                                          \
  }

// The sm_90a build holds only the wgmma entries (below), which keeps its JIT short.
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
FLASH_ENTRY(flash_attention_w8_bf16_d16, __nv_bfloat16, 16, 1, 8, 2, false)
FLASH_ENTRY(flash_attention_w4_bf16_d16, __nv_bfloat16, 16, 2, 4, 2, false)
FLASH_ENTRY(flash_attention_w8_bf16_d32, __nv_bfloat16, 32, 1, 8, 2, false)
FLASH_ENTRY(flash_attention_w4_bf16_d32, __nv_bfloat16, 32, 2, 4, 2, false)
FLASH_ENTRY(flash_attention_w8_bf16_d48, __nv_bfloat16, 48, 1, 8, 2, false)
FLASH_ENTRY(flash_attention_w4_bf16_d48, __nv_bfloat16, 48, 2, 4, 2, false)
FLASH_ENTRY(flash_attention_w8_bf16_d64, __nv_bfloat16, 64, 1, 8, 2, false)
FLASH_ENTRY(flash_attention_w4_bf16_d64, __nv_bfloat16, 64, 2, 4, 2, false)
FLASH_ENTRY(flash_attention_w8_bf16_d80, __nv_bfloat16, 80, 1, 8, 2, false)
FLASH_ENTRY(flash_attention_w4_bf16_d80, __nv_bfloat16, 80, 2, 4, 2, false)
FLASH_ENTRY(flash_attention_w8_f16_d16, __half, 16, 1, 8, 2, false)
FLASH_ENTRY(flash_attention_w4_f16_d16, __half, 16, 2, 4, 2, false)
FLASH_ENTRY(flash_attention_w8_f16_d32, __half, 32, 1, 8, 2, false)
FLASH_ENTRY(flash_attention_w4_f16_d32, __half, 32, 2, 4, 2, false)
FLASH_ENTRY(flash_attention_w8_f16_d48, __half, 48, 1, 8, 2, false)
FLASH_ENTRY(flash_attention_w4_f16_d48, __half, 48, 2, 4, 2, false)
FLASH_ENTRY(flash_attention_w8_f16_d64, __half, 64, 1, 8, 2, false)
FLASH_ENTRY(flash_attention_w4_f16_d64, __half, 64, 2, 4, 2, false)
FLASH_ENTRY(flash_attention_w8_f16_d80, __half, 80, 1, 8, 2, false)
FLASH_ENTRY(flash_attention_w4_f16_d80, __half, 80, 2, 4, 2, false)
#else
// Two warpgroups of 64 rows with Hopper's warpgroup MMAs (`wg`), only in the PTX built
// for sm_90a (H100/H200).
#define WG_ENTRIES(T, TY)                                                                      \
  FLASH_ENTRY(flash_attention_wg_##TY##_d16, T, 16, 1, 8, 2, true)                             \
  FLASH_ENTRY(flash_attention_wg_##TY##_d32, T, 32, 1, 8, 2, true)                             \
  FLASH_ENTRY(flash_attention_wg_##TY##_d48, T, 48, 1, 8, 2, true)                             \
  FLASH_ENTRY(flash_attention_wg_##TY##_d64, T, 64, 1, 8, 2, true)                             \
  FLASH_ENTRY(flash_attention_wg_##TY##_d80, T, 80, 1, 8, 2, true)
WG_ENTRIES(__nv_bfloat16, bf16)
WG_ENTRIES(__half, f16)
#endif
