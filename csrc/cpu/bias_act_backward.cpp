// bias_act_backward: grad_input = grad * act'(x + bias), row by row over (N, C).
//
// The backward of bias_act (csrc/cpu/bias_act.cpp). Recomputes u = x + bias from the saved inputs (the forward
// saves nothing else) and multiplies the incoming gradient by the exact derivative of the activation, as the
// reference's autograd computes it (erf GELU: Phi(u) + u phi(u); tanh GELUs: the chain rule through tanh;
// relu: 1 where u > 0, else 0, as torch's threshold_backward). grad_input is the gradient of x and of the
// (broadcast) bias; grad_bias is its sum over rows, taken in csrc/autograd.cpp. One read of grad and x,
// one write of grad_input; parallel over rows, Vectorized<acc> chunks with a masked tail, fp32 math for
// 16-bit storage (fp64 for double).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "activation.h"
#include "cpu/isa.h"
#include "cpu/vec.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

// d act(u) / du
template <typename V>
inline V activation_derivative(const V& u, Activation act) {
  using S = typename V::value_type;
  const V half(S(0.5)), one(S(1));
  switch (act) {
    case Activation::Gelu: {
      // 0.5 (1 + erf(u / sqrt 2)) + u exp(-u^2 / 2) / sqrt(2 pi)
      const V cdf = half * (one + (u * V(S(M_SQRT1_2))).erf());
      const V pdf = (V(S(-0.5)) * u * u).exp() * V(S(0.3989422804014327));
      return at::vec::fmadd(u, pdf, cdf);
    }
    case Activation::GeluTanh:
    case Activation::GeluFast: {
      // y = 0.5 u (1 + tanh(k (u + c u^3)));  y' = 0.5 (1 + t) + 0.5 u (1 - t^2) k (1 + 3 c u^2)
      const V k(act == Activation::GeluTanh ? S(0.7978845608028654) : S(0.7978845608)), c(S(0.044715));
      const V u2 = u * u;
      const V t = (k * u * (one + c * u2)).tanh();
      const V dinner = k * (one + V(S(3)) * c * u2);
      return half * (one + t) + half * u * (one - t * t) * dinner;
    }
    case Activation::QuickGelu: {
      // y = u sigmoid(a u);  y' = s + a u s (1 - s)
      const V a(S(1.702));
      const V s = one / (one + (a.neg() * u).exp());
      return s + a * u * s * (one - s);
    }
    case Activation::Relu: return u.gt(V(S(0)));
    case Activation::Silu: {
      // y = u sigmoid(u);  y' = s (1 + u (1 - s))
      const V s = one / (one + u.neg().exp());
      return s * (one + u * (one - s));
    }
  }
  return one;
}

// grad, x: (N, C); bias: (C,); grad_input: (N, C)
void bias_act_backward_kernel(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& bias,
                              at::Tensor& grad_input, Activation act) {
  const int64_t C = x.size(-1);
  const int64_t N = C == 0 ? 0 : x.numel() / C;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bias_act_backward", [&] {
    constexpr int64_t W = vec_width<scalar_t>();
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.const_data_ptr<scalar_t>();
    scalar_t* op = grad_input.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(C, 1));
    at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* xr = xp + r * C;
        const scalar_t* gr = gp + r * C;
        scalar_t* orow = op + r * C;
        for (int64_t c = 0; c < C; c += W) {
          const int64_t n = std::min(W, C - c);
          auto u = load_acc(xr + c, n) + load_acc(bp + c, n);
          store_acc(orow + c, load_acc(gr + c, n) * activation_derivative(u, act), n);
        }
      }
    });
  });
}

}  // namespace CPU_CAPABILITY

#ifdef CPU_CAPABILITY_DEFAULT
FASTBERT_CPU_DECLARE(void bias_act_backward_kernel(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&,
                                                   Activation))

at::Tensor bias_act_backward_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& bias,
                                 c10::string_view activation) {
  Activation act;
  TORCH_CHECK_VALUE(parse_activation(std::string(activation), &act), "bias_act_backward: unknown activation '",
                    activation, "'; expected one of ", kActivationNames);
  TORCH_CHECK(x.dim() >= 1, "bias_act_backward: x must have at least 1 dimension, got ", x.dim());
  TORCH_CHECK(grad.sizes() == x.sizes(), "bias_act_backward: grad must have x's shape ", x.sizes(), ", got ",
              grad.sizes());
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == x.size(-1), "bias_act_backward: bias must have shape (", x.size(-1),
              ",) to match x's last dimension, got ", bias.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "bias_act_backward: x must be floating point, got ",
              x.scalar_type());
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "bias_act_backward: grad dtype ", grad.scalar_type(),
              " must match x dtype ", x.scalar_type());
  TORCH_CHECK(bias.scalar_type() == x.scalar_type(), "bias_act_backward: bias dtype ", bias.scalar_type(),
              " must match x dtype ", x.scalar_type());
  TORCH_CHECK(grad.device().is_cpu() && x.device().is_cpu() && bias.device().is_cpu(),
              "bias_act_backward: grad, x and bias must be CPU tensors");
  auto gc = grad.contiguous();
  auto xc = x.contiguous();
  auto bc = bias.contiguous();
  auto grad_input = at::empty_like(xc);
  if (xc.numel() > 0) FASTBERT_CPU_DISPATCH(bias_act_backward_kernel, gc, xc, bc, grad_input, act);
  return grad_input;
}

TORCH_LIBRARY_IMPL(fastbert, CPU, m) { m.impl("bias_act_backward", &bias_act_backward_cpu); }
#endif

}  // namespace fastbert::cpu
