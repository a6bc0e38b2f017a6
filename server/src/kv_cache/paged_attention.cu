// Paged attention on NVIDIA GPUs: the CUDA counterpart of `host.rs` (CPU) and `portable_attend` (candle ops,
// the reference this is checked against by scripts/gpu-check.sh).
//
// Compiled at run time with NVRTC (kv_cache/cuda.rs). Without a GPU, `make cuda-check` compiles it the same way
// and assembles it for sm_90, and server/tests/cuda_kernels_emulated.rs runs it on the CPU under a SIMT
// emulation (threads, warps, shuffles, barriers) against the portable path. No CUDA headers: half and bfloat16 conversions are written out (round to nearest even,
// as candle's `to_dtype` and the `half` crate round), so NVRTC needs no include path.
//
// Layout (as in kv_cache.rs): each layer's K and V cache is `[slots, n_kv_heads * head_dim]`, slot =
// block_id * block_size + offset. A step is one flat batch of `tokens` new tokens; sequence s owns tokens
// [start, start + len), attends over `ctx` tokens (ctx - len cached + its new ones, causally) read through its
// block table, which begins at `block_tables[bt_offset]`.

typedef unsigned int u32;
typedef unsigned short u16;

#define WARP 32
#define WARPS 4               // warps per block of paged_attention
#define MAX_HEAD_DIM 256      // kv_cache/cuda.rs refuses larger heads
#define PER_LANE (MAX_HEAD_DIM / WARP)
#define NEG_INF __int_as_float(0xff800000u)  // -infinity (no math.h under NVRTC)

#ifdef LLAMA_SIMT_EMULATION
// server/tests/cuda_emu runs these kernels on the CPU (one OS thread per CUDA thread): it brings its own
// conversions, exact like the PTX instructions below.
__device__ __forceinline__ float f16_to_f32(u16 h) { return emu_f16_to_f32(h); }
__device__ __forceinline__ u16 f32_to_f16(float f) { return emu_f32_to_f16(f); }
#else
__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#endif

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }

__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 bits = __float_as_uint(f);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        return (u16)((bits >> 16) | 0x40u);  // NaN stays a (quiet) NaN
    }
    bits += 0x7fffu + ((bits >> 16) & 1u);   // round to nearest, ties to even
    return (u16)(bits >> 16);
}

// How one cache element type is read and written.
struct ElemF32 {
    typedef float T;
    static __device__ __forceinline__ float load(T x) { return x; }
    static __device__ __forceinline__ T store(float x) { return x; }
};
struct ElemF16 {
    typedef u16 T;
    static __device__ __forceinline__ float load(T x) { return f16_to_f32(x); }
    static __device__ __forceinline__ T store(float x) { return f32_to_f16(x); }
};
struct ElemBF16 {
    typedef u16 T;
    static __device__ __forceinline__ float load(T x) { return bf16_to_f32(x); }
    static __device__ __forceinline__ T store(float x) { return f32_to_bf16(x); }
};

// Writes each new token's row (`row` = n_kv_heads * head_dim f32 values) into its slot of one cache.
// Grid: one block per token; threads stride over the row.
template <class E>
__device__ void reshape_and_cache(const float* __restrict__ src, typename E::T* __restrict__ cache,
                                  const u32* __restrict__ slots, int row) {
    const size_t t = blockIdx.x;
    const size_t from = t * (size_t)row;
    const size_t to = (size_t)slots[t] * (size_t)row;
    for (int i = threadIdx.x; i < row; i += blockDim.x) {
        cache[to + i] = E::store(src[from + i]);
    }
}

extern "C" __global__ void reshape_and_cache_f32(const float* src, float* cache, const u32* slots, int row) {
    reshape_and_cache<ElemF32>(src, cache, slots, row);
}
extern "C" __global__ void reshape_and_cache_f16(const float* src, u16* cache, const u32* slots, int row) {
    reshape_and_cache<ElemF16>(src, cache, slots, row);
}
extern "C" __global__ void reshape_and_cache_bf16(const float* src, u16* cache, const u32* slots, int row) {
    reshape_and_cache<ElemBF16>(src, cache, slots, row);
}

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = WARP / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// Attention of one query (token t, head h) over its sequence's visible keys.
// Grid: (tokens, n_heads); block: WARPS warps. Warp w takes keys w, w + WARPS, ...; its lanes split the head
// dimension (lane, lane + 32, ...). Each warp keeps an online softmax (running max m, sum l, weighted values
// acc); the warps' partial results are merged through shared memory at the end. Scores and sums are f32.
//
// q:   [tokens, n_heads, head_dim] f32          out: [tokens, n_heads * head_dim] f32
// tok_seq: [tokens] sequence of each token      seq_info: [n_seqs * 4] (start, len, ctx, bt_offset)
template <class E>
__device__ void paged_attention(const float* __restrict__ q, const typename E::T* __restrict__ k_cache,
                                const typename E::T* __restrict__ v_cache, float* __restrict__ out,
                                const u32* __restrict__ tok_seq, const u32* __restrict__ seq_info,
                                const u32* __restrict__ block_tables, int block_size, int n_heads,
                                int n_kv_heads, int head_dim, float scale) {
    __shared__ float part_m[WARPS];
    __shared__ float part_l[WARPS];
    __shared__ float part_acc[WARPS][MAX_HEAD_DIM];

    const int t = blockIdx.x;
    const int h = blockIdx.y;
    const int lane = threadIdx.x % WARP;
    const int warp = threadIdx.x / WARP;
    const u32 s = tok_seq[t];
    const int start = (int)seq_info[4 * s];
    const int len = (int)seq_info[4 * s + 1];
    const int ctx = (int)seq_info[4 * s + 2];
    const u32* table = block_tables + seq_info[4 * s + 3];
    // Causal: the i-th new token sees the cached tokens and new tokens 0..=i.
    const int visible = ctx - len + (t - start) + 1;
    const int kv_head = h / (n_heads / n_kv_heads);
    const size_t row = (size_t)n_kv_heads * head_dim;
    const size_t head_off = (size_t)kv_head * head_dim;

    const float* qrow = q + ((size_t)t * n_heads + h) * head_dim;
    float qv[PER_LANE];
    float acc[PER_LANE];
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) {
        const int d = lane + WARP * i;
        qv[i] = d < head_dim ? qrow[d] : 0.0f;
        acc[i] = 0.0f;
    }
    float m = NEG_INF;
    float l = 0.0f;
    for (int j = warp; j < visible; j += WARPS) {
        const size_t slot = (size_t)table[j / block_size] * block_size + (j % block_size);
        const typename E::T* krow = k_cache + slot * row + head_off;
        const typename E::T* vrow = v_cache + slot * row + head_off;
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < PER_LANE; i++) {
            const int d = lane + WARP * i;
            if (d < head_dim) dot += qv[i] * E::load(krow[d]);
        }
        const float score = warp_sum(dot) * scale;  // every lane holds the whole dot product
        const float m_new = fmaxf(m, score);
        const float keep = expf(m - m_new);         // 0 on the first key (m = -inf)
        const float p = expf(score - m_new);
        l = l * keep + p;
#pragma unroll
        for (int i = 0; i < PER_LANE; i++) {
            const int d = lane + WARP * i;
            if (d < head_dim) acc[i] = acc[i] * keep + p * E::load(vrow[d]);
        }
        m = m_new;
    }
    if (lane == 0) {
        part_m[warp] = m;
        part_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) {
        const int d = lane + WARP * i;
        if (d < head_dim) part_acc[warp][d] = acc[i];
    }
    __syncthreads();

    float big = NEG_INF;
    for (int w = 0; w < WARPS; w++) big = fmaxf(big, part_m[w]);
    float total = 0.0f;
    for (int w = 0; w < WARPS; w++) {
        if (part_m[w] != NEG_INF) total += part_l[w] * expf(part_m[w] - big);
    }
    float* orow = out + ((size_t)t * n_heads + h) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.0f;
        for (int w = 0; w < WARPS; w++) {
            if (part_m[w] != NEG_INF) o += part_acc[w][d] * expf(part_m[w] - big);
        }
        orow[d] = o / total;
    }
}

#define PAGED_ATTENTION(name, E)                                                                              \
    extern "C" __global__ void name(const float* q, const E::T* k_cache, const E::T* v_cache, float* out,     \
                                    const u32* tok_seq, const u32* seq_info, const u32* block_tables,         \
                                    int block_size, int n_heads, int n_kv_heads, int head_dim, float scale) { \
        paged_attention<E>(q, k_cache, v_cache, out, tok_seq, seq_info, block_tables, block_size, n_heads,    \
                           n_kv_heads, head_dim, scale);                                                      \
    }

PAGED_ATTENTION(paged_attention_f32, ElemF32)
PAGED_ATTENTION(paged_attention_f16, ElemF16)
PAGED_ATTENTION(paged_attention_bf16, ElemBF16)
