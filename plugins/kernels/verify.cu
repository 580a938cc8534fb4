// Self-speculation verify: one thread per sequence walks its draft until the first mismatch.
#include "common.cuh"

namespace nld {
namespace {

__global__ void accept_drafts_kernel(const int64_t* block, const int64_t* verified, int64_t sequences, int64_t width,
                                     int64_t* accepted, int64_t* emitted) {
  const int64_t sequence = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (sequence >= sequences) return;
  const int64_t* drafted = block + sequence * width;
  const int64_t* checked = verified + sequence * width;
  int64_t matched = 0;
  while (matched < width - 1 && checked[matched] == drafted[matched + 1]) ++matched;
  accepted[sequence] = matched + 1;  // the verifier's token after the last match is the bonus
  for (int64_t i = 0; i < width; ++i) emitted[sequence * width + i] = i <= matched ? checked[i] : -1;
}

}  // namespace

cudaError_t launch_accept_drafts(const int64_t* block, const int64_t* verified, int64_t sequences, int64_t width,
                                 int64_t* accepted, int64_t* emitted, cudaStream_t stream) {
  if (sequences == 0) return cudaSuccess;
  constexpr unsigned kThreads = 128;
  const unsigned grid = static_cast<unsigned>((sequences + kThreads - 1) / kThreads);
  accept_drafts_kernel<<<grid, kThreads, 0, stream>>>(block, verified, sequences, width, accepted, emitted);
  return cudaGetLastError();
}

}  // namespace nld
