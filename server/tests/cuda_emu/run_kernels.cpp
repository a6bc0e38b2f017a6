// Runs the server's CUDA kernels (paged_attention.cu, unchanged) under the SIMT emulation of simt.hpp.
//
// usage: run_kernels IN OUT
// IN (little-endian): i32 dtype (0 f32, 1 f16, 2 bf16), block_size, n_heads, n_kv_heads, head_dim, slots, steps;
// then per step: i32 tokens, n_seqs, n_tables; f32 q[tokens*n_heads*head_dim], k[tokens*row], v[tokens*row];
// u32 slot_mapping[tokens], tok_seq[tokens], seq_info[4*n_seqs], tables[n_tables].
// OUT: per step f32 out[tokens*n_heads*head_dim]. The caches persist across steps, as in the server.
#include "simt.hpp"
#include "../../src/kv_cache/paged_attention.cu"

#include <cstdio>
#include <vector>

template <class T>
static std::vector<T> take(FILE* f, size_t n) {
    std::vector<T> v(n);
    if (n && std::fread(v.data(), sizeof(T), n, f) != n) {
        std::fprintf(stderr, "run_kernels: short input\n");
        std::exit(2);
    }
    return v;
}

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: run_kernels IN OUT\n");
        return 2;
    }
    FILE* in = std::fopen(argv[1], "rb");
    FILE* out = std::fopen(argv[2], "wb");
    if (!in || !out) return 2;
    auto h = take<int32_t>(in, 7);
    const int dtype = h[0], block_size = h[1], n_heads = h[2], n_kv = h[3], hd = h[4], slots = h[5], steps = h[6];
    const int row = n_kv * hd;
    std::vector<float> kc32((size_t)slots * row), vc32((size_t)slots * row);
    std::vector<uint16_t> kc16((size_t)slots * row), vc16((size_t)slots * row);
    const float scale = 1.0f / std::sqrt((float)hd);
    for (int s = 0; s < steps; s++) {
        auto dims = take<int32_t>(in, 3);
        const int tokens = dims[0], n_seqs = dims[1], n_tables = dims[2];
        auto q = take<float>(in, (size_t)tokens * n_heads * hd);
        auto k = take<float>(in, (size_t)tokens * row);
        auto v = take<float>(in, (size_t)tokens * row);
        auto slot_mapping = take<uint32_t>(in, tokens);
        auto tok_seq = take<uint32_t>(in, tokens);
        auto seq_info = take<uint32_t>(in, 4 * (size_t)n_seqs);
        auto tables = take<uint32_t>(in, n_tables);
        std::vector<float> o((size_t)tokens * n_heads * hd, NAN);
        const Dim3 write_grid{(unsigned)tokens, 1, 1}, write_block{(unsigned)std::min(row, 1024), 1, 1};
        const Dim3 attn_grid{(unsigned)tokens, (unsigned)n_heads, 1}, attn_block{32 * WARPS, 1, 1};
        auto attend = [&](auto kernel, auto* kc, auto* vc) {
            emu_launch(attn_grid, attn_block, [&] {
                kernel(q.data(), kc, vc, o.data(), tok_seq.data(), seq_info.data(), tables.data(), block_size,
                       n_heads, n_kv, hd, scale);
            });
        };
        switch (dtype) {
            case 0:
                emu_launch(write_grid, write_block, [&] { reshape_and_cache_f32(k.data(), kc32.data(), slot_mapping.data(), row); });
                emu_launch(write_grid, write_block, [&] { reshape_and_cache_f32(v.data(), vc32.data(), slot_mapping.data(), row); });
                attend(paged_attention_f32, kc32.data(), vc32.data());
                break;
            case 1:
                emu_launch(write_grid, write_block, [&] { reshape_and_cache_f16(k.data(), kc16.data(), slot_mapping.data(), row); });
                emu_launch(write_grid, write_block, [&] { reshape_and_cache_f16(v.data(), vc16.data(), slot_mapping.data(), row); });
                attend(paged_attention_f16, kc16.data(), vc16.data());
                break;
            default:
                emu_launch(write_grid, write_block, [&] { reshape_and_cache_bf16(k.data(), kc16.data(), slot_mapping.data(), row); });
                emu_launch(write_grid, write_block, [&] { reshape_and_cache_bf16(v.data(), vc16.data(), slot_mapping.data(), row); });
                attend(paged_attention_bf16, kc16.data(), vc16.data());
        }
        std::fwrite(o.data(), sizeof(float), o.size(), out);
    }
    std::fclose(out);
    return 0;
}
