// Internal interface of the CPU emulation runtime (emu/runtime.cpp), used by the stand-in
// driver (emu/driver.cpp). Not seen by kernels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "cuda_emu.h"

namespace emu {

// Device memory: every allocation is its own mapping; the bytes after the end (rounded up to
// 16) up to the next page are a checked red zone, followed by an inaccessible page (reads or
// writes past the end fault at once); a checked red zone and an inaccessible page also sit
// before the start. Fresh memory is filled with 0xFF bytes (NaN as f32 and bf16); red zones
// hold a signaling-NaN pattern (see runtime.cpp).
// Allocations start on a 256-byte boundary, as the driver's do; 0 bytes is refused (returns 0).
uint64_t mem_alloc(size_t bytes);
bool mem_free(uint64_t ptr);
// Memory pools (cuMemAllocAsync / cuMemFreeAsync): a freed block is kept (dead: pointers into
// it are invalid) and handed out again at the same address to the next allocation of the same
// size on the same stream; mem_pool_trim releases the blocks freed on `stream` (or all), as the
// driver does at synchronisations.
uint64_t mem_pool_alloc(size_t bytes, uint64_t stream);
bool mem_pool_free(uint64_t ptr, uint64_t stream);
void mem_pool_trim(uint64_t stream, bool all);
// A unique id of the live allocation holding ptr (0 when none): a pool block handed out again
// gets a new id, so a pointer kept across a free can be told from one into a new allocation.
uint64_t mem_alloc_id(uint64_t ptr);
// True when [ptr, ptr + bytes) lies inside one live allocation.
bool mem_range_ok(uint64_t ptr, size_t bytes);
// Checks the red zones of the allocation holding ptr; appends a message when damaged.
bool mem_guards_ok(uint64_t ptr, std::string* msg);
size_t mem_live_allocations();
// The emulated device's memory (16 GiB, or HRM_EMU_DEVICE_MEM_MB) and what is allocated of it;
// an allocation past the capacity fails as CUDA_ERROR_OUT_OF_MEMORY.
size_t mem_capacity();
size_t mem_live_bytes();

const KernelEntry* find_kernel(const char* name);

struct LaunchDims {
  U3 grid;
  U3 block;
  unsigned dyn_smem_bytes;
};
// Runs a whole launch now, block after block. Returns 0 (CUDA_SUCCESS) or a CUresult code;
// the reason is printed to stderr and kept in last_error().
int launch(const KernelEntry* k, const LaunchDims& dims, void** params);
// The same with arguments already copied out by k->pack (a captured graph node); `packed`
// stays owned by the caller.
int launch_packed(const KernelEntry* k, const LaunchDims& dims, const void* packed);
// Checks grid/block/dynamic-shared-memory limits of a launch (0 or a CUresult code, with
// last_error() set).
int check_launch_dims(const KernelEntry* k, const LaunchDims& dims);
const std::string& last_error();
// Sets last_error() (and prints it) for a failure found by the driver; returns `code`.
int set_error(int code, const std::string& what);
void clear_error();
// Bytes of static shared memory (all kernels together) re-poisoned before every block.
size_t static_smem_bytes();

void install_fault_handler();

// What the shared-memory race checker (emu/racecheck.cpp, linked only into the race-checking
// build of the emulation) needs to know about the running CUDA thread.
struct RaceView {
  int tid;                // linear index of the thread in its block
  int warp;               // tid / 32
  unsigned block_gen;     // __syncthreads barriers opened in this block so far
  unsigned warp_gen;      // warp-level synchronisations (shuffles, __syncwarp, mma) of its warp
  uint64_t block_serial;  // unique per block run (shadow state of an earlier block is stale)
  const char* static_begin;
  const char* static_end;  // static __shared__ memory
  const char* dyn_begin;
  const char* dyn_end;  // the launch's dynamic shared memory
};
// False outside a running kernel block.
bool race_view(RaceView* v);
// The running thread's coordinates, for messages.
void current_thread(U3* block, U3* thread);

}  // namespace emu
