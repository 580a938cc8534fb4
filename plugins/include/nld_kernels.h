// Decode-step kernels of NLD (see nld/kernels/reference.py for the exact semantics each one must match).
// Plain launchers over raw device pointers, so the torch extension (torch/nld_ops.cpp) and TensorRT
// plugin wrappers can share them. All tensors are contiguous, row-major.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace nld {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// logits [rows, vocab] -> ids [rows] (int64), confidence [rows] (float): argmax, or with temperature > 0
// a Gumbel-max sample from a counter-based hash of (seed, row * vocab + col); confidence is the softmax
// probability of the chosen id at temperature 1. exclude_id < 0: no column excluded.
cudaError_t launch_top1_confidence(const void* logits, DType dtype, int64_t rows, int64_t vocab, int64_t exclude_id,
                                   float temperature, uint32_t seed, int64_t* ids, float* confidence,
                                   cudaStream_t stream);

// confidence [blocks, width] (float), is_mask [blocks, width] (bool), counts [blocks] (int64) ->
// commit [blocks, width] (bool): top-counts[s] masked positions by confidence (ties: lower index), or with
// use_threshold the most confident masked position plus every masked one at or above threshold.
cudaError_t launch_select_commits(const float* confidence, const bool* is_mask, const int64_t* counts,
                                  int64_t blocks, int64_t width, bool use_threshold, float threshold, bool* commit,
                                  cudaStream_t stream);

// block [sequences, width] = [seed, drafts...], verified [sequences, width] (int64) -> accepted [sequences]
// (1 + drafts matched in a row), emitted [sequences, width] (verified[:accepted], -1 after).
cudaError_t launch_accept_drafts(const int64_t* block, const int64_t* verified, int64_t sequences, int64_t width,
                                 int64_t* accepted, int64_t* emitted, cudaStream_t stream);

// In place on values [sequences, rows, positions, dim]: slot starts[s] + offsets[s, i] moves to
// starts[s] + i for i < counts[s] (offsets ascending, at most max_kept per sequence).
cudaError_t launch_kv_keep(void* values, DType dtype, int64_t sequences, int64_t rows, int64_t positions, int64_t dim,
                           const int64_t* starts, const int64_t* offsets, int64_t max_kept, const int64_t* counts,
                           cudaStream_t stream);

// In place on values [sequences, rows, positions, dim]: zero slots [new_lengths[s], lengths[s]).
cudaError_t launch_kv_crop(void* values, DType dtype, int64_t sequences, int64_t rows, int64_t positions, int64_t dim,
                           const int64_t* lengths, const int64_t* new_lengths, cudaStream_t stream);

}  // namespace nld
