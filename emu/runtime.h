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
uint64_t mem_alloc(size_t bytes);
bool mem_free(uint64_t ptr);
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

}  // namespace emu
