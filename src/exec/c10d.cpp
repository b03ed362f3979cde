// A C interface over PyTorch's c10d (the distributed runtime inside libtorch), for src/exec/c10d.rs.
//
// tch has no bindings for c10d (tch-rs #936), so this shim builds a process group (TCPStore
// rendezvous; ProcessGroupGloo on CPU, ProcessGroupNCCL on CUDA) and exposes the collectives the
// trainer uses. Every entry point catches C++ exceptions and returns them as a message, so a dead
// peer, a timeout or "no GPUs found" reaches the user as an error, never as an abort.
//
// Tensors cross as `at::Tensor*`, which is what tch's `C_tensor` pointers are.

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef RECIPE_WITH_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

struct RecipeGroup {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  // NCCL: work->wait() makes the current stream wait (no host sync); a wait with a timeout would
  // poll on the host. Its timeout is the process group's own (the options' timeout).
  bool device_side;
};

namespace {

char* copy_message(const std::string& text) {
  char* out = static_cast<char*>(std::malloc(text.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, text.c_str(), text.size() + 1);
  }
  return out;
}

// Runs `body`; on a C++ exception writes its message to *err and returns false.
template <typename F>
bool guarded(char** err, F&& body) {
  try {
    body();
    return true;
  } catch (const c10::Error& e) {
    *err = copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = copy_message(e.what());
  } catch (...) {
    *err = copy_message("unknown C++ exception in c10d");
  }
  return false;
}

void finish(RecipeGroup* g, const c10::intrusive_ptr<c10d::Work>& work) {
  if (g->device_side) {
    work->wait();
  } else {
    work->wait(g->timeout);
  }
}

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 1:
      return c10d::ReduceOp(c10d::ReduceOp::MAX);
    case 2:
      return c10d::ReduceOp(c10d::ReduceOp::MIN);
    default:
      return c10d::ReduceOp(c10d::ReduceOp::SUM);
  }
}

}  // namespace

extern "C" {

// Joins (rank 0 with `store_server`: hosts) the TCPStore at host:port, then builds the backend:
// Every rank waits at the store for all `world_size` unless `wait_workers` is 0.
// backend 0 = Gloo (CPU tensors), 1 = NCCL (CUDA tensors). `prefix` namespaces the store's keys
// (torchrun's agent store is shared between restarts). `gloo_interface`: a network interface for
// Gloo (GLOO_SOCKET_IFNAME), else `gloo_hostname` (the address to bind), else the default device.
// `cuda_device`: NCCL's GPU (made the current device).
RecipeGroup* recipe_c10d_new(int backend, const char* host, int port, int rank, int world_size, int store_server, int wait_workers,
                             const char* prefix, long long timeout_ms, const char* gloo_interface,
                             const char* gloo_hostname, int cuda_device, char** err) {
  RecipeGroup* out = nullptr;
  guarded(err, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = store_server != 0;
    // As torch.distributed's rendezvous: every rank counts itself in and waits for the others
    // (a launcher's agent store is already up, and its count may hold earlier attempts).
    opts.numWorkers = world_size;
    opts.waitWorkers = wait_workers != 0;
    opts.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    c10::intrusive_ptr<c10d::Backend> made;
    if (backend == 0) {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      if (gloo_interface != nullptr && gloo_interface[0] != '\0') {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(gloo_interface));
      } else if (gloo_hostname != nullptr && gloo_hostname[0] != '\0') {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(gloo_hostname));
      } else {
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      made = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, options);
    } else {
#ifdef RECIPE_WITH_NCCL
      // This rank's GPU is the current device, so NCCL's communicator and barriers use it.
      if (c10::cuda::device_count() > 0) {
        c10::cuda::set_device(static_cast<c10::DeviceIndex>(cuda_device));
      }
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      made = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size, options);
#else
      throw std::runtime_error("this build of recipe has no NCCL (built without the CUDA headers)");
#endif
    }
    out = new RecipeGroup{store, made, timeout, backend != 0};
  });
  return out;
}

void recipe_c10d_free(RecipeGroup* g) {
  try {
    // NCCL's communicators are torn down explicitly (as destroy_process_group does).
    if (g != nullptr && g->device_side) {
      g->backend->shutdown();
    }
    delete g;
  } catch (...) {
    // Leaving a broken group at exit: nothing more to do.
  }
}

void recipe_c10d_free_message(char* message) { std::free(message); }

// In place: `tensor` becomes the elementwise sum (op 0), max (1) or min (2) over the ranks.
int recipe_c10d_all_reduce(RecipeGroup* g, at::Tensor* tensor, int op, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions opts;
    opts.reduceOp = reduce_op(op);
    opts.timeout = g->timeout;
    finish(g, g->backend->allreduce(tensors, opts));
  });
}

// In place: every rank's `tensor` becomes rank `root`'s.
int recipe_c10d_broadcast(RecipeGroup* g, at::Tensor* tensor, int root, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.timeout = g->timeout;
    finish(g, g->backend->broadcast(tensors, opts));
  });
}

// `output` (world_size × input's numel, flat) receives every rank's `input`, in rank order.
int recipe_c10d_all_gather(RecipeGroup* g, at::Tensor* output, at::Tensor* input, char** err) {
  return guarded(err, [&] {
    c10d::AllgatherOptions opts;
    opts.timeout = g->timeout;
    finish(g, g->backend->_allgather_base(*output, *input, opts));
  });
}

// `output` (input's numel / world_size, flat) receives this rank's slice of the sum over ranks.
int recipe_c10d_reduce_scatter(RecipeGroup* g, at::Tensor* output, at::Tensor* input, char** err) {
  return guarded(err, [&] {
    c10d::ReduceScatterOptions opts;
    opts.timeout = g->timeout;
    finish(g, g->backend->_reduce_scatter_base(*output, *input, opts));
  });
}

int recipe_c10d_barrier(RecipeGroup* g, char** err) {
  return guarded(err, [&] {
    c10d::BarrierOptions opts;
    opts.timeout = g->timeout;
    finish(g, g->backend->barrier(opts));
  });
}

}  // extern "C"
