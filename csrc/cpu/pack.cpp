// pack / unpack: between a padded (B, L) batch and its real tokens (T rows), the padding-free data path's ends.
//
// pack counts each row's kept tokens (parallel over rows), prefix-sums them into cu_seqlens and writes each
// token's flat index b*L+l and position l. unpack scatters (T, H) rows into a zeroed (B, L, H) tensor,
// parallel over tokens. Index work only, no arithmetic: these need no per-ISA variants (DEFAULT compile only).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstring>

namespace fastbert::cpu {
#ifdef CPU_CAPABILITY_DEFAULT

std::tuple<at::Tensor, at::Tensor, at::Tensor> pack_cpu(const at::Tensor& attention_mask) {
  TORCH_CHECK(attention_mask.dim() == 2, "pack: attention_mask must have shape (batch, seqlen), got ",
              attention_mask.sizes());
  TORCH_CHECK(attention_mask.device().is_cpu(), "pack: attention_mask must be a CPU tensor");
  const int64_t B = attention_mask.size(0), L = attention_mask.size(1);
  auto keep = attention_mask.scalar_type() == at::kBool ? attention_mask.contiguous() : attention_mask.ne(0);
  const bool* kp = keep.const_data_ptr<bool>();
  auto cu_seqlens = at::empty({B + 1}, attention_mask.options().dtype(at::kInt));
  int32_t* cu = cu_seqlens.mutable_data_ptr<int32_t>();
  cu[0] = 0;
  at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      int32_t n = 0;
      for (int64_t l = 0; l < L; ++l) n += kp[b * L + l];
      cu[b + 1] = n;
    }
  });
  int64_t total = 0;
  for (int64_t b = 0; b < B; ++b) {
    total += cu[b + 1];
    TORCH_CHECK(total <= INT32_MAX, "pack: more than 2^31-1 real tokens in one batch");
    cu[b + 1] = static_cast<int32_t>(total);
  }
  auto indices = at::empty({total}, attention_mask.options().dtype(at::kLong));
  auto positions = at::empty({total}, attention_mask.options().dtype(at::kLong));
  int64_t* ip = indices.mutable_data_ptr<int64_t>();
  int64_t* pp = positions.mutable_data_ptr<int64_t>();
  at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      int64_t t = cu[b];
      for (int64_t l = 0; l < L; ++l) {
        if (kp[b * L + l]) {
          ip[t] = b * L + l;
          pp[t] = l;
          ++t;
        }
      }
    }
  });
  return {indices, cu_seqlens, positions};
}

at::Tensor unpack_cpu(const at::Tensor& x, const at::Tensor& indices, int64_t batch, int64_t seqlen) {
  TORCH_CHECK(x.dim() == 2, "unpack: x must have shape (tokens, H), got ", x.sizes());
  TORCH_CHECK(x.device().is_cpu() && indices.device().is_cpu(), "unpack: x and indices must be CPU tensors");
  TORCH_CHECK(indices.dim() == 1 && indices.scalar_type() == at::kLong && indices.size(0) == x.size(0),
              "unpack: indices must be an int64 tensor of shape (", x.size(0), ",), got ", indices.scalar_type(), " ",
              indices.sizes());
  TORCH_CHECK_VALUE(batch >= 0 && seqlen >= 0, "unpack: batch and seqlen must be >= 0, got ", batch, ", ", seqlen);
  const int64_t T = x.size(0), H = x.size(1), N = batch * seqlen;
  auto xc = x.contiguous();
  auto ic = indices.contiguous();
  auto out = at::zeros({batch, seqlen, H}, x.options());
  const int64_t* ip = ic.const_data_ptr<int64_t>();
  const int64_t row_bytes = H * static_cast<int64_t>(x.element_size());
  const char* src = static_cast<const char*>(xc.const_data_ptr());
  char* dst = static_cast<char*>(out.mutable_data_ptr());
  at::parallel_for(0, T, std::max<int64_t>(1, 65536 / std::max<int64_t>(row_bytes, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t t = begin; t < end; ++t) {
                       TORCH_CHECK_INDEX(ip[t] >= 0 && ip[t] < N, "unpack: indices[", t, "] = ", ip[t],
                                         " is out of range [0, ", N, ")");
                       std::memcpy(dst + ip[t] * row_bytes, src + t * row_bytes, row_bytes);
                     }
                   });
  return out;
}

TORCH_LIBRARY_IMPL(fastbert, CPU, m) {
  m.impl("pack", &pack_cpu);
  m.impl("unpack", &unpack_cpu);
}

#endif  // CPU_CAPABILITY_DEFAULT
}  // namespace fastbert::cpu
