// A persistent worker pool and a spin-then-yield barrier for the CPU kernels.
//
// ThreadPool::Global().Run(n, fn, ctx) runs fn(ctx, p) for p = 0..n-1, p = 0 on the calling thread, and
// returns when all have returned. Workers are created on first need and sleep on a condition variable
// between calls, so an idle pool costs nothing. Calls are serialized (one run at a time): XLA may run
// independent custom calls concurrently, and the second simply waits.
//
// Workers run with the caller's floating-point control state (x86 MXCSR: flush-to-zero / denormals-are-
// zero as XLA sets them for its CPU code; aarch64 FPCR), so every thread rounds alike.
//
// SpinBarrier spins briefly, then yields: on a machine shared with other jobs a descheduled thread must
// not make the others burn their time slices.
#ifndef FUMJAX_CPP_THREAD_POOL_H_
#define FUMJAX_CPP_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace fumjax {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Cores this process may run on (its affinity mask, e.g. under taskset), at least 1.
inline int AvailableCores() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int c = CPU_COUNT(&set);
    if (c > 0) return c;
  }
#endif
  const unsigned h = std::thread::hardware_concurrency();
  return h > 0 ? static_cast<int>(h) : 1;
}

// The floating-point control register (rounding, flush-to-zero) of the calling thread, and setting it.
inline uint64_t GetFpControl() {
#if defined(__x86_64__) || defined(__i386__)
  return _mm_getcsr();
#elif defined(__aarch64__)
  uint64_t fpcr;
  asm volatile("mrs %0, fpcr" : "=r"(fpcr));
  return fpcr;
#else
  return 0;
#endif
}

inline void SetFpControl(uint64_t value) {
#if defined(__x86_64__) || defined(__i386__)
  _mm_setcsr(static_cast<unsigned>(value));
#elif defined(__aarch64__)
  asm volatile("msr fpcr, %0" : : "r"(value));
#else
  (void)value;
#endif
}

class SpinBarrier {
 public:
  explicit SpinBarrier(int n) : n_(n) {}

  void Wait() {
    if (n_ <= 1) return;
    const uint32_t gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins < kSpins) {
        CpuRelax();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  static constexpr int kSpins = 4000;
  const int n_;
  alignas(64) std::atomic<int> count_{0};
  alignas(64) std::atomic<uint32_t> gen_{0};
};

class ThreadPool {
 public:
  using Fn = void (*)(void* ctx, int p);

  static ThreadPool& Global() {
    static ThreadPool* pool = new ThreadPool();  // never destroyed: workers may outlive static teardown
    return *pool;
  }

  void Run(int n, Fn fn, void* ctx) {
    if (n <= 1) {
      fn(ctx, 0);
      return;
    }
    std::lock_guard<std::mutex> run_lock(run_mutex_);
    {
      std::unique_lock<std::mutex> lock(mutex_);
      while (static_cast<int>(workers_.size()) < n - 1) {
        const int id = static_cast<int>(workers_.size()) + 1;
        workers_.emplace_back([this, id] { WorkerLoop(id); });
        workers_.back().detach();
      }
      fn_ = fn;
      ctx_ = ctx;
      fp_control_ = GetFpControl();
      active_ = n;
      pending_ = n - 1;
      ++generation_;
    }
    wake_.notify_all();
    fn(ctx, 0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
  }

 private:
  ThreadPool() = default;

  void WorkerLoop(int id) {
    uint64_t seen = 0;
    for (;;) {
      Fn fn;
      void* ctx;
      uint64_t fp_control;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen && id < active_; });
        seen = generation_;
        fn = fn_;
        ctx = ctx_;
        fp_control = fp_control_;
      }
      SetFpControl(fp_control);
      fn(ctx, id);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (--pending_ == 0) done_.notify_one();
      }
    }
  }

  std::mutex run_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  Fn fn_ = nullptr;
  void* ctx_ = nullptr;
  uint64_t fp_control_ = 0;
  int active_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
};

}  // namespace fumjax

#endif  // FUMJAX_CPP_THREAD_POOL_H_
