// libtorch operations tch does not bind, for src/exec/torch_ops.rs: a backward pass seeded with a
// given gradient (tch's `backward()` seeds a scalar with 1), `pin_memory()` without the device
// argument libtorch deprecates (tch always passes one), and the fused AdamW kernel. Compiled by build.rs beside the
// c10d shim, against the same headers. Every entry point catches C++ exceptions and returns them
// as a message.
//
// Tensors cross as `at::Tensor*`, which is what tch's `C_tensor` pointers are.

#include <torch/csrc/autograd/autograd.h>
#include <ATen/ATen.h>

#include <ATen/ops/_flash_attention_forward.h>
#include <ATen/ops/_fused_adamw.h>

#ifdef RECIPE_WITH_NCCL
// The CUDA runtime headers are present (build.rs adds them with NCCL's): streams and events.
// Only c10's device-generic event and guard (calls through c10_cuda): ATen's CUDAEvent would call
// the CUDA runtime inline, a library the binary does not link.
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <cstdlib>
#include <vector>
#include <cstring>
#include <stdexcept>
#include <string>

namespace {

char* copy_text(const std::string& text) {
  char* out = static_cast<char*>(std::malloc(text.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, text.c_str(), text.size() + 1);
  }
  return out;
}

template <typename F>
int guarded_op(char** err, F&& body) {
  try {
    body();
    return 1;
  } catch (const c10::Error& e) {
    *err = copy_text(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = copy_text(e.what());
  } catch (...) {
    *err = copy_text("unknown C++ exception");
  }
  return 0;
}

}  // namespace

extern "C" {

// The backward pass from `output` seeded with `grad` (same shape): gradients accumulate into the
// leaves, as `output.backward(grad)` in Python. The graph is freed.
int recipe_backward_with_grad(at::Tensor* output, at::Tensor* grad, char** err) {
  return guarded_op(err, [&] { torch::autograd::backward({*output}, {*grad}); });
}

// A page-locked copy of the CPU tensor `src` for the current accelerator, as `Tensor.pin_memory()`
// (no device argument). Null with *err set on failure (no accelerator, no pinned memory).
at::Tensor* recipe_pin_memory(at::Tensor* src, char** err) {
  at::Tensor* out = nullptr;
  guarded_op(err, [&] { out = new at::Tensor(src->pin_memory()); });
  return out;
}

// libtorch's fused AdamW (`torch._fused_adamw_`, as `torch.optim.AdamW(fused=True)` calls it) over
// `n` parameters with their gradients and fp32 moments, in place; `step` (fp32 scalar, already
// counting this step) is every parameter's step count; with `found_inf` (nullable, fp32 [1]) set
// the kernel leaves everything as it is.
int recipe_fused_adamw(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs, at::Tensor** exp_avg_sqs,
                       int n, at::Tensor* step, double lr, double beta1, double beta2, double weight_decay,
                       double eps, at::Tensor* found_inf, char** err) {
  return guarded_op(err, [&] {
    std::vector<at::Tensor> p, g, m, v, steps;
    for (int i = 0; i < n; ++i) {
      p.push_back(*params[i]);
      g.push_back(*grads[i]);
      m.push_back(*exp_avgs[i]);
      v.push_back(*exp_avg_sqs[i]);
      steps.push_back(*step);
    }
    std::optional<at::Tensor> inf;
    if (found_inf != nullptr) {
      inf = *found_inf;
    }
    at::_fused_adamw_(p, g, m, v, {}, steps, lr, beta1, beta2, weight_decay, eps, /*amsgrad=*/false,
                      /*maximize=*/false, std::nullopt, inf);
  });
}


// Causal flash attention over packed samples (varlen): q [tokens, heads, d], k and v [tokens,
// kv heads, d] (grouped heads taken as they are), samples cut at `cu_seqlens` (int32 [n + 1]),
// `max_seqlen` at least the longest. Through the dispatcher, so autograd records it
// (FlashAttentionBackward0 runs `_flash_attention_backward`). CUDA only: elsewhere libtorch
// throws, and the message comes back. Null with *err set on failure.
at::Tensor* recipe_flash_attention_varlen(at::Tensor* q, at::Tensor* k, at::Tensor* v, at::Tensor* cu_seqlens,
                                          int64_t max_seqlen, char** err) {
  at::Tensor* out = nullptr;
  guarded_op(err, [&] {
    auto result = at::_flash_attention_forward(*q, *k, *v, *cu_seqlens, *cu_seqlens, max_seqlen, max_seqlen,
                                               /*dropout_p=*/0.0, /*is_causal=*/true, /*return_debug_mask=*/false);
    out = new at::Tensor(std::get<0>(result));
  });
  return out;
}

// A side stream from libtorch's pool on CUDA device `device`, for host-to-device batch copies.
// Null with *err set where CUDA is absent (or the shim was built without its headers).
void* recipe_copy_stream_new(int device, char** err) {
  void* out = nullptr;
  guarded_op(err, [&] {
#ifdef RECIPE_WITH_NCCL
    out = new c10::cuda::CUDAStream(c10::cuda::getStreamFromPool(false, static_cast<c10::DeviceIndex>(device)));
#else
    (void)device;
    throw std::runtime_error("built without the CUDA headers: no side stream");
#endif
  });
  return out;
}

void recipe_copy_stream_free(void* stream) {
#ifdef RECIPE_WITH_NCCL
  delete static_cast<c10::cuda::CUDAStream*>(stream);
#else
  (void)stream;
#endif
}

// Copies the pinned CPU tensor `src` to the side stream's device on that stream, records an event
// there and makes the device's current stream wait for it, so the copy overlaps whatever the
// current stream still runs (the previous step's kernels) while later kernels see the data. The
// copy is marked as used by the current stream, so the caching allocator does not hand its memory
// to the side stream again before that use is done. Null with *err set on failure.
at::Tensor* recipe_copy_on_stream(void* stream, at::Tensor* src, char** err) {
  at::Tensor* out = nullptr;
  guarded_op(err, [&] {
#ifdef RECIPE_WITH_NCCL
    auto& side = *static_cast<c10::cuda::CUDAStream*>(stream);
    auto current = c10::cuda::getCurrentCUDAStream(side.device_index());
    at::Tensor copy;
    {
      c10::StreamGuard guard(side.unwrap());
      copy = src->to(at::Device(at::kCUDA, side.device_index()), /*non_blocking=*/true);
    }
    c10::Event copied(c10::DeviceType::CUDA);
    copied.record(side.unwrap());
    copied.block(current.unwrap());
    copy.record_stream(current.unwrap());
    out = new at::Tensor(copy);
#else
    (void)stream;
    (void)src;
    throw std::runtime_error("built without the CUDA headers: no side stream");
#endif
  });
  return out;
}

// Sets `tensor.grad` to `grad`, or leaves it undefined when `grad` is null (`tensor.grad = None`),
// which frees a gradient that was reduce-scattered away (exec/shard.rs) and hands the optimizer a
// shard's gradient.
int recipe_set_grad(at::Tensor* tensor, at::Tensor* grad, char** err) {
  return guarded_op(err, [&] {
    if (grad == nullptr) {
      tensor->mutable_grad().reset();
    } else {
      tensor->mutable_grad() = *grad;
    }
  });
}
}  // extern "C"
