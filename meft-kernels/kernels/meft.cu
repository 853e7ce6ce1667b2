// MEFT device kernels (f32). Compiled to PTX by meft-kernels' build script with the pinned nvcc
// (feature `cuda`) and loaded through the driver API. Every kernel has a CPU reference in
// meft-core (`kernels_ref` and `rows`/`optim`); the device tests compare against them.
//
// Layouts: row-major; a "row" is `row_len` floats; a "slot" is a row of the device working set.
// Sparse pairs are grouped by token (CSR): the pairs of token t are token_ptr[t]..token_ptr[t+1].

#include <stdint.h>

#define MEFT_BLOCK 256

// Sum of `v` over the block; every thread gets the result. `red` has MEFT_BLOCK/32 floats.
__device__ float meft_block_sum(float v, float* red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float s = 0.0f;
    int nw = (blockDim.x + 31) >> 5;
    for (int w = 0; w < nw; ++w) s += red[w];
    return s;
}

// (a) Place staged rows into device slots: dst[slots[i]] = staged[i]. `staged` is the device copy
// of the pinned host staging buffer (filled by the host gather, copied on the transfer stream).
extern "C" __global__ void meft_place_rows(const float* __restrict__ staged,
                                           const uint32_t* __restrict__ slots, uint32_t n_rows,
                                           uint32_t row_len, float* __restrict__ dst) {
    uint64_t total = (uint64_t)n_rows * row_len;
    for (uint64_t k = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; k < total;
         k += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t i = k / row_len, j = k - i * row_len;
        dst[(uint64_t)slots[i] * row_len + j] = staged[k];
    }
}

// (c) Pack slot rows into a contiguous buffer: out[i] = src[slots[i]] (row gradients, device->host).
extern "C" __global__ void meft_pack_rows(const float* __restrict__ src,
                                          const uint32_t* __restrict__ slots, uint32_t n_rows,
                                          uint32_t row_len, float* __restrict__ out) {
    uint64_t total = (uint64_t)n_rows * row_len;
    for (uint64_t k = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; k < total;
         k += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t i = k / row_len, j = k - i * row_len;
        out[k] = src[(uint64_t)slots[i] * row_len + j];
    }
}

// (b) Sparse adapter forward, one block per token:
//   kx_p = k_{r_p}·x_t, s_p = kx_p·g_p, y_t = Σ_p ReLU(s_p)·v_{r_p}.
// Writes y (T×d) and kx (per pair, kept for backward).
extern "C" __global__ void meft_sparse_fwd(const float* __restrict__ x, const float* __restrict__ keys,
                                           const float* __restrict__ values,
                                           const uint32_t* __restrict__ token_ptr,
                                           const uint32_t* __restrict__ pair_row,
                                           const float* __restrict__ pair_gate, uint32_t d,
                                           float* __restrict__ y, float* __restrict__ kx) {
    __shared__ float red[MEFT_BLOCK / 32];
    uint32_t t = blockIdx.x;
    const float* xt = x + (uint64_t)t * d;
    float* yt = y + (uint64_t)t * d;
    for (uint32_t j = threadIdx.x; j < d; j += blockDim.x) yt[j] = 0.0f;
    for (uint32_t p = token_ptr[t]; p < token_ptr[t + 1]; ++p) {
        const float* k = keys + (uint64_t)pair_row[p] * d;
        float part = 0.0f;
        for (uint32_t j = threadIdx.x; j < d; j += blockDim.x) part += k[j] * xt[j];
        float dot = meft_block_sum(part, red);
        if (threadIdx.x == 0) kx[p] = dot;
        float a = fmaxf(dot * pair_gate[p], 0.0f);
        if (a != 0.0f) {
            const float* v = values + (uint64_t)pair_row[p] * d;
            for (uint32_t j = threadIdx.x; j < d; j += blockDim.x) yt[j] += a * v[j];
        }
    }
}

// (b) Sparse adapter backward, per pair (one block per pair, pairs in CSR order, token known):
//   da_p = dy_t·v_r, ds_p = da_p·[s_p > 0], dkx_p = ds_p·g_p, dgate_p = ds_p·kx_p,
//   dk_r += dkx_p·x_t, dv_r += ReLU(s_p)·dy_t (atomic: a row may serve several tokens).
extern "C" __global__ void meft_sparse_bwd_pairs(const float* __restrict__ x, const float* __restrict__ values,
                                                 const float* __restrict__ dy,
                                                 const uint32_t* __restrict__ pair_token,
                                                 const uint32_t* __restrict__ pair_row,
                                                 const float* __restrict__ pair_gate,
                                                 const float* __restrict__ kx, uint32_t d,
                                                 float* __restrict__ dkx, float* __restrict__ dgate,
                                                 float* __restrict__ dkeys, float* __restrict__ dvalues) {
    __shared__ float red[MEFT_BLOCK / 32];
    uint32_t p = blockIdx.x, t = pair_token[p], r = pair_row[p];
    const float* dyt = dy + (uint64_t)t * d;
    const float* v = values + (uint64_t)r * d;
    float part = 0.0f;
    for (uint32_t j = threadIdx.x; j < d; j += blockDim.x) part += dyt[j] * v[j];
    float da = meft_block_sum(part, red);
    float g = pair_gate[p], s = kx[p] * g;
    float ds = s > 0.0f ? da : 0.0f;
    float a = fmaxf(s, 0.0f);
    if (threadIdx.x == 0) { dkx[p] = ds * g; dgate[p] = ds * kx[p]; }
    const float* xt = x + (uint64_t)t * d;
    float* dk = dkeys + (uint64_t)r * d;
    float* dv = dvalues + (uint64_t)r * d;
    for (uint32_t j = threadIdx.x; j < d; j += blockDim.x) {
        if (ds != 0.0f) atomicAdd(dk + j, ds * g * xt[j]);
        if (a != 0.0f) atomicAdd(dv + j, a * dyt[j]);
    }
}

// (b) Sparse adapter backward, input gradient, one block per token: dx_t = Σ_p dkx_p·k_{r_p}.
extern "C" __global__ void meft_sparse_bwd_x(const float* __restrict__ keys,
                                             const uint32_t* __restrict__ token_ptr,
                                             const uint32_t* __restrict__ pair_row,
                                             const float* __restrict__ dkx, uint32_t d,
                                             float* __restrict__ dx) {
    uint32_t t = blockIdx.x;
    float* dxt = dx + (uint64_t)t * d;
    for (uint32_t j = threadIdx.x; j < d; j += blockDim.x) {
        float acc = 0.0f;
        for (uint32_t p = token_ptr[t]; p < token_ptr[t + 1]; ++p)
            acc += dkx[p] * keys[(uint64_t)pair_row[p] * d + j];
        dxt[j] = acc;
    }
}

// (d) AdamW with decoupled weight decay (PyTorch formulas), for the gate matrices on device.
//   p ← p·(1−lr·wd); m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²;
//   p ← p − (lr/bc1)·m / (√v/√bc2 + eps), bc1 = 1−β₁ᵗ, bc2 = 1−β₂ᵗ (passed as sqrt_bc2).
extern "C" __global__ void meft_adamw(float* __restrict__ p, const float* __restrict__ g,
                                      float* __restrict__ m, float* __restrict__ v, uint64_t n,
                                      float lr, float beta1, float beta2, float eps, float wd,
                                      float bc1, float sqrt_bc2) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
         i += (uint64_t)gridDim.x * blockDim.x) {
        float gi = g[i];
        float pi = p[i] * (1.0f - lr * wd);
        float mi = m[i] + (1.0f - beta1) * (gi - m[i]);
        float vi = v[i] * beta2 + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - (lr / bc1) * mi / (sqrtf(vi) / sqrt_bc2 + eps);
    }
}
