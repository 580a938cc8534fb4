// Top-1 id and confidence per row of logits: one thread block per row, two passes over the vocabulary.
#include <cfloat>

#include "common.cuh"

namespace nld {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ uint32_t mix32(uint32_t x) {  // lowbias32, as reference.uniform_noise
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

__device__ __forceinline__ float uniform(uint32_t seed, uint32_t index) {
  const uint32_t bits = mix32(mix32(index) ^ seed);
  return (static_cast<float>(bits >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

// Better candidate: higher score, or the same score at a lower index.
__device__ __forceinline__ bool better(float score, int64_t index, float best, int64_t best_index) {
  return score > best || (score == best && index < best_index);
}

template <typename T>
__global__ void top1_kernel(const T* logits, int64_t vocab, int64_t exclude_id, float temperature, uint32_t seed,
                            int64_t* ids, float* confidence) {
  __shared__ float best_score[kThreads];
  __shared__ int64_t best_index[kThreads];
  __shared__ float row_max[kThreads];
  __shared__ float row_sum[kThreads];
  const int64_t row = blockIdx.x;
  const T* x = logits + row * vocab;
  float score = -INFINITY, maximum = -INFINITY;
  int64_t index = vocab;
  for (int64_t col = threadIdx.x; col < vocab; col += blockDim.x) {
    if (col == exclude_id) continue;
    const float value = to_float(x[col]);
    maximum = fmaxf(maximum, value);
    float candidate = value;
    if (temperature > 0.0f) {
      const float u = uniform(seed, static_cast<uint32_t>(row * vocab + col));
      candidate = value / temperature - logf(-logf(u));
    }
    if (better(candidate, col, score, index)) {
      score = candidate;
      index = col;
    }
  }
  best_score[threadIdx.x] = score;
  best_index[threadIdx.x] = index;
  row_max[threadIdx.x] = maximum;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      const int other = threadIdx.x + stride;
      if (better(best_score[other], best_index[other], best_score[threadIdx.x], best_index[threadIdx.x])) {
        best_score[threadIdx.x] = best_score[other];
        best_index[threadIdx.x] = best_index[other];
      }
      row_max[threadIdx.x] = fmaxf(row_max[threadIdx.x], row_max[other]);
    }
    __syncthreads();
  }
  const float shift = row_max[0];
  float total = 0.0f;
  for (int64_t col = threadIdx.x; col < vocab; col += blockDim.x) {
    if (col != exclude_id) total += expf(to_float(x[col]) - shift);
  }
  row_sum[threadIdx.x] = total;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) row_sum[threadIdx.x] += row_sum[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const int64_t chosen = best_index[0] < vocab ? best_index[0] : 0;
    ids[row] = chosen;
    confidence[row] = expf(to_float(x[chosen]) - shift) / row_sum[0];
  }
}

struct Top1Launch {
  const void* logits;
  int64_t rows, vocab, exclude_id;
  float temperature;
  uint32_t seed;
  int64_t* ids;
  float* confidence;
  cudaStream_t stream;
  template <typename T>
  cudaError_t operator()() const {
    top1_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        static_cast<const T*>(logits), vocab, exclude_id, temperature, seed, ids, confidence);
    return cudaGetLastError();
  }
};

}  // namespace

cudaError_t launch_top1_confidence(const void* logits, DType dtype, int64_t rows, int64_t vocab, int64_t exclude_id,
                                   float temperature, uint32_t seed, int64_t* ids, float* confidence,
                                   cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return dispatch_dtype(dtype, Top1Launch{logits, rows, vocab, exclude_id, temperature, seed, ids, confidence, stream});
}

}  // namespace nld
