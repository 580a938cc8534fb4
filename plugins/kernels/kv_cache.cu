// KV cache maintenance in place: the stride gather of quadratic self-speculation, and clearing cropped slots.
#include "common.cuh"

namespace nld {
namespace {

// One thread block per (sequence, row); threads cover the head dimension. Kept slots are moved in
// ascending order with a barrier between them: slot start+i is written only after every source below
// it was read, and sources at or above it are never overwritten before they are read (offsets[i] >= i).
template <typename T>
__global__ void kv_keep_kernel(T* values, int64_t rows, int64_t positions, int64_t dim, const int64_t* starts,
                               const int64_t* offsets, int64_t max_kept, const int64_t* counts) {
  const int64_t sequence = blockIdx.x / rows;
  T* slots = values + static_cast<int64_t>(blockIdx.x) * positions * dim;
  const int64_t start = starts[sequence];
  const int64_t kept = counts[sequence];
  for (int64_t i = 0; i < kept; ++i) {
    const int64_t source = start + offsets[sequence * max_kept + i];
    const int64_t target = start + i;
    if (source != target) {
      for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) slots[target * dim + d] = slots[source * dim + d];
    }
    __syncthreads();
  }
}

template <typename T>
__global__ void kv_crop_kernel(T* values, int64_t rows, int64_t positions, int64_t dim, const int64_t* lengths,
                               const int64_t* new_lengths) {
  const int64_t sequence = blockIdx.x / rows;
  T* slots = values + static_cast<int64_t>(blockIdx.x) * positions * dim;
  const int64_t first = new_lengths[sequence] * dim;
  const int64_t last = lengths[sequence] * dim;
  for (int64_t i = first + threadIdx.x; i < last; i += blockDim.x) slots[i] = zero_value<T>();
}

unsigned threads_for(int64_t dim) { return dim >= 128 ? 128 : static_cast<unsigned>(((dim + 31) / 32) * 32); }

struct KeepLaunch {
  void* values;
  int64_t sequences, rows, positions, dim;
  const int64_t *starts, *offsets;
  int64_t max_kept;
  const int64_t* counts;
  cudaStream_t stream;
  template <typename T>
  cudaError_t operator()() const {
    kv_keep_kernel<T><<<static_cast<unsigned>(sequences * rows), threads_for(dim), 0, stream>>>(
        static_cast<T*>(values), rows, positions, dim, starts, offsets, max_kept, counts);
    return cudaGetLastError();
  }
};

struct CropLaunch {
  void* values;
  int64_t sequences, rows, positions, dim;
  const int64_t *lengths, *new_lengths;
  cudaStream_t stream;
  template <typename T>
  cudaError_t operator()() const {
    kv_crop_kernel<T><<<static_cast<unsigned>(sequences * rows), 256, 0, stream>>>(
        static_cast<T*>(values), rows, positions, dim, lengths, new_lengths);
    return cudaGetLastError();
  }
};

}  // namespace

cudaError_t launch_kv_keep(void* values, DType dtype, int64_t sequences, int64_t rows, int64_t positions, int64_t dim,
                           const int64_t* starts, const int64_t* offsets, int64_t max_kept, const int64_t* counts,
                           cudaStream_t stream) {
  if (sequences == 0 || rows == 0) return cudaSuccess;
  return dispatch_dtype(dtype, KeepLaunch{values, sequences, rows, positions, dim, starts, offsets, max_kept, counts, stream});
}

cudaError_t launch_kv_crop(void* values, DType dtype, int64_t sequences, int64_t rows, int64_t positions, int64_t dim,
                           const int64_t* lengths, const int64_t* new_lengths, cudaStream_t stream) {
  if (sequences == 0 || rows == 0) return cudaSuccess;
  return dispatch_dtype(dtype, CropLaunch{values, sequences, rows, positions, dim, lengths, new_lengths, stream});
}

}  // namespace nld
