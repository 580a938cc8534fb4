// Diffusion commit selection: one thread block per block of the batch, one thread per position.
#include "common.cuh"

namespace nld {
namespace {

__global__ void select_commits_kernel(const float* confidence, const bool* is_mask, const int64_t* counts,
                                      int64_t width, bool use_threshold, float threshold, bool* commit) {
  const int64_t block = blockIdx.x;
  const float* scores = confidence + block * width;
  const bool* masked = is_mask + block * width;
  for (int64_t j = threadIdx.x; j < width; j += blockDim.x) {
    bool chosen = false;
    if (masked[j]) {
      const float mine = scores[j];
      int64_t rank = 0;  // masked positions ranked above j: higher confidence, or equal at a lower index
      for (int64_t i = 0; i < width; ++i) {
        if (masked[i] && (scores[i] > mine || (scores[i] == mine && i < j))) ++rank;
      }
      chosen = use_threshold ? (rank == 0 || mine >= threshold) : rank < counts[block];
    }
    commit[block * width + j] = chosen;
  }
}

}  // namespace

cudaError_t launch_select_commits(const float* confidence, const bool* is_mask, const int64_t* counts,
                                  int64_t blocks, int64_t width, bool use_threshold, float threshold, bool* commit,
                                  cudaStream_t stream) {
  if (blocks == 0) return cudaSuccess;
  const unsigned threads = width < 1024 ? static_cast<unsigned>(((width + 31) / 32) * 32) : 1024;
  select_commits_kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(confidence, is_mask, counts, width,
                                                                              use_threshold, threshold, commit);
  return cudaGetLastError();
}

}  // namespace nld
