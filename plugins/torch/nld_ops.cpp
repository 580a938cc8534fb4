// CUDA implementations of the nld:: torch custom ops (defined, with their CPU references, in
// nld/kernels/ops.py): thin wrappers that check the tensors and call the launchers of plugins/kernels.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "nld_kernels.h"

namespace {

nld::DType element_type(const at::Tensor& tensor) {
  switch (tensor.scalar_type()) {
    case at::kFloat:
      return nld::DType::kFloat32;
    case at::kHalf:
      return nld::DType::kFloat16;
    case at::kBFloat16:
      return nld::DType::kBFloat16;
    default:
      TORCH_CHECK(false, "nld kernels take float32, float16 or bfloat16 tensors, got ", tensor.scalar_type());
  }
}

void check_launch(cudaError_t status, const char* kernel) {
  TORCH_CHECK(status == cudaSuccess, "nld::", kernel, " launch failed: ", cudaGetErrorString(status));
}

void check_cuda(const at::Tensor& tensor, const char* name, int64_t dims) {
  TORCH_CHECK(tensor.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(tensor.dim() == dims, name, " must have ", dims, " dimensions, got ", tensor.dim());
}

std::tuple<at::Tensor, at::Tensor> top1_confidence(const at::Tensor& logits, int64_t exclude_id, double temperature,
                                                   int64_t seed) {
  check_cuda(logits, "logits", 2);
  const at::Tensor rows = logits.contiguous();
  at::Tensor ids = at::empty({rows.size(0)}, rows.options().dtype(at::kLong));
  at::Tensor confidence = at::empty({rows.size(0)}, rows.options().dtype(at::kFloat));
  check_launch(nld::launch_top1_confidence(rows.data_ptr(), element_type(rows), rows.size(0), rows.size(1), exclude_id,
                                           static_cast<float>(temperature), static_cast<uint32_t>(seed & 0xffffffff),
                                           ids.data_ptr<int64_t>(), confidence.data_ptr<float>(),
                                           c10::cuda::getCurrentCUDAStream()),
               "top1_confidence");
  return {ids, confidence};
}

at::Tensor select_commits(const at::Tensor& confidence, const at::Tensor& is_mask, const at::Tensor& counts,
                          bool use_threshold, double threshold) {
  check_cuda(confidence, "confidence", 2);
  check_cuda(is_mask, "is_mask", 2);
  const at::Tensor scores = confidence.to(at::kFloat).contiguous();
  const at::Tensor masked = is_mask.to(at::kBool).contiguous();
  const at::Tensor limits = counts.to(confidence.device(), at::kLong).contiguous();
  at::Tensor commit = at::empty_like(masked);
  check_launch(nld::launch_select_commits(scores.data_ptr<float>(), masked.data_ptr<bool>(), limits.data_ptr<int64_t>(),
                                          scores.size(0), scores.size(1), use_threshold,
                                          static_cast<float>(threshold), commit.data_ptr<bool>(),
                                          c10::cuda::getCurrentCUDAStream()),
               "select_commits");
  return commit;
}

std::tuple<at::Tensor, at::Tensor> accept_drafts(const at::Tensor& block, const at::Tensor& verified) {
  check_cuda(block, "block", 2);
  check_cuda(verified, "verified", 2);
  const at::Tensor drafted = block.to(at::kLong).contiguous();
  const at::Tensor checked = verified.to(at::kLong).contiguous();
  at::Tensor accepted = at::empty({drafted.size(0)}, drafted.options());
  at::Tensor emitted = at::empty_like(drafted);
  check_launch(nld::launch_accept_drafts(drafted.data_ptr<int64_t>(), checked.data_ptr<int64_t>(), drafted.size(0),
                                         drafted.size(1), accepted.data_ptr<int64_t>(), emitted.data_ptr<int64_t>(),
                                         c10::cuda::getCurrentCUDAStream()),
               "accept_drafts");
  return {accepted, emitted};
}

at::Tensor kv_keep_(at::Tensor& values, const at::Tensor& starts, const at::Tensor& offsets, const at::Tensor& counts) {
  check_cuda(values, "values", 4);
  TORCH_CHECK(values.is_contiguous(), "values must be contiguous (the gather works in place)");
  const at::Tensor first = starts.to(values.device(), at::kLong).contiguous();
  const at::Tensor moved = offsets.to(values.device(), at::kLong).contiguous();
  const at::Tensor kept = counts.to(values.device(), at::kLong).contiguous();
  check_launch(nld::launch_kv_keep(values.data_ptr(), element_type(values), values.size(0), values.size(1),
                                   values.size(2), values.size(3), first.data_ptr<int64_t>(), moved.data_ptr<int64_t>(),
                                   moved.size(1), kept.data_ptr<int64_t>(), c10::cuda::getCurrentCUDAStream()),
               "kv_keep_");
  return first + kept;
}

at::Tensor kv_crop_(at::Tensor& values, const at::Tensor& lengths, const at::Tensor& new_lengths) {
  check_cuda(values, "values", 4);
  TORCH_CHECK(values.is_contiguous(), "values must be contiguous (the crop works in place)");
  const at::Tensor old_end = lengths.to(values.device(), at::kLong).contiguous();
  const at::Tensor new_end = new_lengths.to(values.device(), at::kLong).contiguous();
  check_launch(nld::launch_kv_crop(values.data_ptr(), element_type(values), values.size(0), values.size(1),
                                   values.size(2), values.size(3), old_end.data_ptr<int64_t>(),
                                   new_end.data_ptr<int64_t>(), c10::cuda::getCurrentCUDAStream()),
               "kv_crop_");
  return new_end.clone();
}

}  // namespace

TORCH_LIBRARY_IMPL(nld, CUDA, m) {
  m.impl("top1_confidence", &top1_confidence);
  m.impl("select_commits", &select_commits);
  m.impl("accept_drafts", &accept_drafts);
  m.impl("kv_keep_", &kv_keep_);
  m.impl("kv_crop_", &kv_crop_);
}
