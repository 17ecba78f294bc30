// Large CPU outputs in huge-page mappings with a small cache of freed ones (see large_output_cpu.h).
//
// Measured on the 2-core AMD EPYC development VM: writing 32 MiB of fresh 4 KiB pages took 20-26 ms, of
// which 2-3 ms is the write itself; with transparent huge pages it took 4.6-6.5 ms. Populating the pages
// ahead (MAP_POPULATE, MADV_POPULATE_WRITE) saved nothing there.
#include "large_output_cpu.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstdint>
#include <deque>
#include <iterator>
#include <mutex>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace rhmfast {

#if defined(__linux__)
namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kMinBytes = size_t{4} << 20;  // below this, glibc's heap serves blocks well
constexpr size_t kMaxCachedMappings = 16;
constexpr size_t kMaxCachedBytes = size_t{256} << 20;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

struct Mapping {
  void* start;
  size_t length;
};

// Freed mappings, oldest first. Never destroyed: tensors may be freed during the process's exit, after
// the destructors of static objects have run.
class MappingCache {
 public:
  // The most recently freed cached mapping of exactly `length` bytes (the likeliest to be still in the
  // caches and the TLB), or a null start.
  Mapping take(size_t length) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = free_.rbegin(); it != free_.rend(); ++it) {
      if (it->length == length) {
        const Mapping m = *it;
        bytes_ -= m.length;
        free_.erase(std::next(it).base());
        return m;
      }
    }
    return {nullptr, 0};
  }

  // Keeps m for reuse, unmapping the oldest mappings to stay within the bounds.
  void give(Mapping m) {
    std::deque<Mapping> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (m.length <= kMaxCachedBytes) {
        free_.push_back(m);
        bytes_ += m.length;
      } else {
        evicted.push_back(m);
      }
      while (free_.size() > kMaxCachedMappings || bytes_ > kMaxCachedBytes) {
        evicted.push_back(free_.front());
        bytes_ -= free_.front().length;
        free_.pop_front();
      }
    }
    for (const Mapping& e : evicted) munmap(e.start, e.length);
  }

 private:
  std::mutex mutex_;
  std::deque<Mapping> free_;
  size_t bytes_ = 0;
};

MappingCache& cache() {
  static auto* c = new MappingCache;
  return *c;
}

void release(void* context) {
  const auto* m = static_cast<Mapping*>(context);
  cache().give(*m);
  delete m;
}

// A fresh 2 MiB-aligned mapping of `length` bytes (a multiple of 2 MiB), or a null start.
Mapping map_aligned(size_t length) {
  // Over-map by one huge page, then cut head and tail: only aligned 2 MiB ranges can be huge pages.
  void* raw = mmap(nullptr, length + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return {nullptr, 0};
  const auto base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t start = round_up(base, kHugePage);
  if (start > base) munmap(raw, start - base);
  if (base + kHugePage > start) munmap(reinterpret_cast<void*>(start + length), base + kHugePage - start);
  // Advice only: where the system has no huge pages to give, the mapping works with small ones.
  madvise(reinterpret_cast<void*>(start), length, MADV_HUGEPAGE);
  return {reinterpret_cast<void*>(start), length};
}

class LargeOutputAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes) return c10::GetCPUAllocator()->allocate(n);
    const size_t length = round_up(n, kHugePage);
    Mapping m = cache().take(length);
    if (m.start == nullptr) m = map_aligned(length);
    // Out of address space: the default allocator raises torch's out-of-memory error.
    if (m.start == nullptr) return c10::GetCPUAllocator()->allocate(n);
    return {m.start, new Mapping(m), &release, c10::Device(c10::kCPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

}  // namespace

at::Tensor empty_output(at::IntArrayRef size, const at::TensorOptions& options) {
  if (!options.device().is_cpu()) return at::empty(size, options);
  static auto* allocator = new LargeOutputAllocator;
  return at::detail::empty_generic(size, allocator, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), std::nullopt);
}

#else

at::Tensor empty_output(at::IntArrayRef size, const at::TensorOptions& options) { return at::empty(size, options); }

#endif

}  // namespace rhmfast
