// Element conversions shared by the kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "nld_kernels.h"

namespace nld {

__device__ __forceinline__ float to_float(float value) { return value; }
__device__ __forceinline__ float to_float(__half value) { return __half2float(value); }
__device__ __forceinline__ float to_float(__nv_bfloat16 value) { return __bfloat162float(value); }

template <typename T>
__device__ __forceinline__ T zero_value() {
  return T(0.0f);
}

// Runs `launch.template operator()<T>()` with T the element type named by `dtype`.
template <typename Launch>
cudaError_t dispatch_dtype(DType dtype, Launch&& launch) {
  switch (dtype) {
    case DType::kFloat32:
      return launch.template operator()<float>();
    case DType::kFloat16:
      return launch.template operator()<__half>();
    case DType::kBFloat16:
      return launch.template operator()<__nv_bfloat16>();
  }
  return cudaErrorInvalidValue;
}

}  // namespace nld
