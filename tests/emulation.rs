//! Self-test of the CPU emulation (the stand-in driver that runs the host-compiled kernels, see
//! emu/): it gets correct kernels right, and it CATCHES deliberately broken ones
//! (kernels/selftest.cu): a missing `__syncthreads`, an off-by-one index, a barrier only some
//! threads reach. The broken kernels only run under the emulation (on a real GPU their
//! behaviour is undefined); the correct ones run on either.

mod kernel_common;
use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use hrm::backend::cuda::module::{MODULES, RESOURCES};
use hrm::backend::cuda::{CudaDevice, DeviceKind};
use kernel_common::*;
use rand::Rng;

fn cfg(grid: u32, block: u32, smem: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: smem }
}

/// Launches `kernel(x, y, n)` and returns the launch result.
fn launch_xyn(
    dev: &CudaDevice,
    kernel: &'static str,
    x: &CudaSlice<f32>,
    y: &mut CudaSlice<f32>,
    n: i32,
    c: LaunchConfig,
) -> anyhow::Result<()> {
    let f = dev.func("selftest", kernel)?;
    let mut b = dev.stream.launch_builder(&f);
    b.arg(x).arg(y).arg(&n);
    // SAFETY: matches the kernel signature (const float*, float*, int).
    unsafe { b.launch(c) }.map_err(|e| anyhow::anyhow!("{e}"))?;
    dev.sync()
}

fn emulated(dev: &CudaDevice, test: &str) -> bool {
    if dev.kind == DeviceKind::Gpu {
        eprintln!("{test}: broken-kernel check runs under the CPU emulation only");
        return false;
    }
    true
}

#[test]
fn block_reduction_correct_and_missing_sync_caught() {
    let Some(dev) = device("emulation") else {
        return;
    };
    let mut r = rng(7);
    for trial in 0..5 {
        let n = 1000 + 77 * trial;
        let x = randn(&mut r, n, 1.0);
        let want: f64 = x.iter().map(|&v| v as f64).sum();
        let xd = upload(&dev, &x);
        let mut out = poisoned_f32(&dev, 1);
        launch_xyn(&dev, "selftest_block_sum", &xd, &mut out, n as i32, cfg(1, 256, 0)).unwrap();
        let got = download(&dev, &out)[0] as f64;
        // f32 sum of ~1000 values of size ~1: error far below 1e-3.
        assert!((got - want).abs() < 1e-3, "correct reduction: got {got}, want {want}");
        if !emulated(&dev, "missing_sync") {
            continue;
        }
        let mut out = poisoned_f32(&dev, 1);
        launch_xyn(&dev, "selftest_block_sum_missing_sync", &xd, &mut out, n as i32, cfg(1, 256, 0)).unwrap();
        let bad = download(&dev, &out)[0] as f64;
        assert!(
            (bad - want).abs() > 1e-2,
            "trial {trial}: a missing __syncthreads went unnoticed (got {bad}, want {want})"
        );
    }
}

#[test]
fn off_by_one_write_is_reported() {
    let Some(dev) = device("emulation") else {
        return;
    };
    let n = 1000;
    let x = randn(&mut rng(8), n, 1.0);
    let xd = upload(&dev, &x);
    let mut y = poisoned_f32(&dev, n);
    launch_xyn(&dev, "selftest_scale", &xd, &mut y, n as i32, cfg(4, 256, 0)).unwrap();
    let got = download(&dev, &y);
    assert!(got.iter().zip(&x).all(|(g, v)| *g == 2.0 * v));
    if !emulated(&dev, "off_by_one") {
        return;
    }
    let mut y = poisoned_f32(&dev, n);
    let err = launch_xyn(&dev, "selftest_scale_off_by_one", &xd, &mut y, n as i32, cfg(4, 256, 0))
        .expect_err("an out-of-bounds write went unnoticed");
    let msg = format!("{err:#}");
    assert!(msg.contains("out-of-bounds write"), "unexpected error: {msg}");
    assert!(msg.contains("past the end"), "unexpected error: {msg}");
}

/// The blocks of a grid run in a different order at every launch, so a kernel whose result
/// depends on the block order (the last writer of a cell, float atomics from several blocks)
/// gives different results: order-dependent kernels cannot pass a determinism test here.
#[test]
fn block_order_changes_between_launches() {
    let Some(dev) = device("emulation") else {
        return;
    };
    if !emulated(&dev, "block_order") {
        return;
    }
    let n = 64usize;
    let mut r = rng(12);
    // magnitudes over eight decades: the f32 sum's rounding depends on the order
    let x: Vec<f32> = (0..n).map(|i| (r.gen_range(-1.0f32..1.0)) * 10f32.powi(i as i32 % 8 - 4)).collect();
    let xd = upload(&dev, &x);
    let mut last = std::collections::HashSet::new();
    let mut sums = std::collections::HashSet::new();
    for _ in 0..8 {
        let mut y = upload(&dev, &[0.0f32, 0.0]);
        launch_xyn(&dev, "selftest_block_order", &xd, &mut y, n as i32, cfg(n as u32, 32, 0)).unwrap();
        let got = download(&dev, &y);
        last.insert(got[0].to_bits());
        sums.insert(got[1].to_bits());
    }
    assert!(last.len() > 1, "the same block ran last in 8 launches: blocks are not shuffled");
    assert!(sums.len() > 1, "8 launches summed in one order: float atomics across blocks look deterministic");
}

#[test]
fn shuffle_block_sum() {
    let Some(dev) = device("emulation") else {
        return;
    };
    let mut r = rng(9);
    for (n, block) in [(1000usize, 256u32), (45, 96), (1, 32), (5000, 1024)] {
        let x = randn(&mut r, n, 1.0);
        let want: f64 = x.iter().map(|&v| v as f64).sum();
        let xd = upload(&dev, &x);
        let mut out = poisoned_f32(&dev, 1);
        launch_xyn(&dev, "selftest_shuffle_sum", &xd, &mut out, n as i32, cfg(1, block, 0)).unwrap();
        let got = download(&dev, &out)[0] as f64;
        assert!((got - want).abs() < 1e-3, "n {n} block {block}: got {got}, want {want}");
    }
}

#[test]
fn dynamic_shared_memory_and_missing_barrier() {
    let Some(dev) = device("emulation") else {
        return;
    };
    let (blocks, block) = (3u32, 128u32);
    let n = (blocks * block) as usize;
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let xd = upload(&dev, &x);
    let run = |sync: i32| -> Vec<f32> {
        let mut y = poisoned_f32(&dev, n);
        let f = dev.func("selftest", "selftest_reverse_dyn").unwrap();
        let mut b = dev.stream.launch_builder(&f);
        b.arg(&xd).arg(&mut y).arg(&sync);
        // SAFETY: (const float*, float*, int); dynamic shared memory = one float per thread.
        unsafe { b.launch(cfg(blocks, block, block * 4)) }.unwrap();
        download(&dev, &y)
    };
    let want: Vec<f32> = (0..n)
        .map(|i| {
            let (b, t) = (i / block as usize, i % block as usize);
            (b * block as usize + block as usize - 1 - t) as f32
        })
        .collect();
    assert_eq!(run(1), want);
    if emulated(&dev, "reverse_dyn") {
        assert_ne!(run(0), want, "a missing barrier before reading shared memory went unnoticed");
    }
}

#[test]
fn divergent_barrier_is_reported() {
    let Some(dev) = device("emulation") else {
        return;
    };
    if !emulated(&dev, "divergent_barrier") {
        return;
    }
    let mut y = poisoned_f32(&dev, 64);
    let f = dev.func("selftest", "selftest_divergent_barrier").unwrap();
    let mut b = dev.stream.launch_builder(&f);
    b.arg(&mut y);
    // SAFETY: (float*).
    let err = unsafe { b.launch(cfg(1, 64, 0)) }.expect_err("a divergent barrier went unnoticed");
    assert!(format!("{err}").contains("divergent __syncthreads"), "unexpected error: {err}");
}

#[test]
fn every_kernel_loads_from_ptx_and_cubin() {
    let Some(dev) = device("emulation") else {
        return;
    };
    assert!(!RESOURCES.is_empty());
    for m in MODULES {
        let names: Vec<_> = RESOURCES.iter().filter(|r| r.file == m.name).collect();
        assert!(!names.is_empty(), "module {} has no kernels", m.name);
        for image in [Ptx::from_src(m.ptx), Ptx::from_binary(m.cubin_sm90a.to_vec())] {
            let module = dev.ctx.load_module(image).unwrap();
            for r in &names {
                module
                    .load_function(r.kernel)
                    .unwrap_or_else(|e| panic!("{} in {}: {e:?}", r.kernel, m.name));
            }
            assert!(module.load_function("no_such_kernel").is_err());
        }
    }
}

#[test]
fn pointer_arguments_must_be_device_allocations() {
    let Some(dev) = device("emulation") else {
        return;
    };
    if !emulated(&dev, "pointer_arguments") {
        return;
    }
    let xd = upload(&dev, &[1.0f32; 8]);
    let y = poisoned_f32(&dev, 8);
    let (py, _g) = y.device_ptr(&dev.stream);
    let bogus = py + (1 << 40); // far outside any allocation
    let f = dev.func("selftest", "selftest_scale").unwrap();
    let mut b = dev.stream.launch_builder(&f);
    let n = 8i32;
    b.arg(&xd).arg(&bogus).arg(&n);
    // SAFETY: the emulation refuses the launch before running it.
    let err = unsafe { b.launch(cfg(1, 32, 0)) }.expect_err("a wild pointer went unnoticed");
    assert!(format!("{err}").contains("not in a live device allocation"));
}

#[test]
fn events_time_a_launch_and_streams_are_independent() {
    let Some(dev) = device("emulation") else {
        return;
    };
    let x = upload(&dev, &vec![1.0f32; 4096]);
    let mut y = poisoned_f32(&dev, 4096);
    let ms = dev.time_ms(|d| launch_xyn(d, "selftest_scale", &x, &mut y, 4096, cfg(16, 256, 0))).unwrap();
    assert!(ms.is_finite() && ms >= 0.0, "elapsed {ms} ms");
    assert!(download(&dev, &y).iter().all(|&v| v == 2.0));
    // a second stream: copy there, synchronize it, read back
    let s2 = dev.new_stream().unwrap();
    let z = s2.clone_htod(&[3.0f32; 5]).unwrap();
    s2.synchronize().unwrap();
    assert_eq!(s2.clone_dtoh(&z).unwrap(), vec![3.0f32; 5]);
}

// ---------------------------------------------------------------------------------------------
// Launch limits, shared-memory poisoning and CUDA graphs (capture and replay).

use cudarc::driver::sys::{
    CUfunction_attribute_enum as FuncAttr, CUgraphInstantiate_flags, CUstreamCaptureMode,
};
use hrm::backend::cuda::gemm::Gemm;

/// A freshly loaded copy of a selftest kernel (function attributes start at their defaults).
fn fresh_selftest_fn(dev: &CudaDevice, kernel: &str, cubin: bool) -> cudarc::driver::CudaFunction {
    let m = MODULES.iter().find(|m| m.name == "selftest").expect("selftest module");
    let image = if cubin { Ptx::from_binary(m.cubin_sm90a.to_vec()) } else { Ptx::from_src(m.ptx) };
    dev.ctx.load_module(image).unwrap().load_function(kernel).unwrap()
}

#[test]
fn static_shared_memory_is_poisoned_for_every_block() {
    let Some(dev) = device("emulation") else {
        return;
    };
    let (blocks, block) = (3usize, 64usize);
    let x: Vec<f32> = (0..block).map(|i| i as f32 + 0.5).collect();
    let xd = upload(&dev, &x);
    let run = |kernel: &'static str| -> Vec<f32> {
        let mut y = poisoned_f32(&dev, blocks * block);
        let f = dev.func("selftest", kernel).unwrap();
        let mut b = dev.stream.launch_builder(&f);
        b.arg(&xd).arg(&mut y);
        // SAFETY: (const float*, float*); x holds blockDim.x values, y one per thread.
        unsafe { b.launch(cfg(blocks as u32, block as u32, 0)) }.unwrap();
        download(&dev, &y)
    };
    // correct: every block fills its own shared buffer
    let own = run("selftest_smem_own");
    for (i, v) in own.iter().enumerate() {
        assert_eq!(*v, x[block - 1 - i % block], "element {i}");
    }
    if !emulated(&dev, "smem_stale") {
        return;
    }
    // planted bug: blocks 1.. read shared memory only block 0 wrote
    let stale = run("selftest_smem_stale");
    assert_eq!(&stale[..block], &x[..], "block 0 wrote its own buffer");
    assert!(
        stale[block..].iter().all(|v| v.is_nan()),
        "a block read shared memory an earlier block left behind and it went unnoticed: {:?}",
        &stale[block..block + 4]
    );
}

#[test]
fn dynamic_shared_memory_above_48k_needs_opt_in() {
    let Some(dev) = device("emulation") else {
        return;
    };
    let block = 128u32;
    let x: Vec<f32> = (0..block).map(|i| i as f32).collect();
    let xd = upload(&dev, &x);
    let want: Vec<f32> = x.iter().rev().copied().collect();
    for cubin in [true, false] {
        let f = fresh_selftest_fn(&dev, "selftest_reverse_dyn", cubin);
        let run = |smem: u32| -> anyhow::Result<Vec<f32>> {
            let mut y = poisoned_f32(&dev, block as usize);
            let mut b = dev.stream.launch_builder(&f);
            let sync = 1i32;
            b.arg(&xd).arg(&mut y).arg(&sync);
            // SAFETY: (const float*, float*, int); smem >= one float per thread.
            unsafe { b.launch(cfg(1, block, smem)) }.map_err(|e| anyhow::anyhow!("{e}"))?;
            dev.sync()?;
            Ok(download(&dev, &y))
        };
        assert_eq!(run(48 * 1024).unwrap(), want, "48 KiB needs no opt-in");
        let err = run(64 * 1024).expect_err("64 KiB of dynamic shared memory without opt-in ran");
        if dev.kind == DeviceKind::Emulation {
            assert!(format!("{err}").contains("MAX_DYNAMIC_SHARED_SIZE_BYTES"), "{err}");
        }
        f.set_attribute(FuncAttr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 64 * 1024).unwrap();
        assert_eq!(run(64 * 1024).unwrap(), want, "64 KiB after opting in");
        assert!(run(96 * 1024).is_err(), "96 KiB above the opted-in 64 KiB ran");
        assert!(
            f.set_attribute(FuncAttr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 300 * 1024).is_err(),
            "an opt-in above the 227 KiB of sm_90 was accepted"
        );
    }
}

#[test]
fn launch_bounds_are_enforced() {
    let Some(dev) = device("emulation") else {
        return;
    };
    let n = 256usize;
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let xd = upload(&dev, &x);
    for cubin in [true, false] {
        let f = fresh_selftest_fn(&dev, "selftest_bounded64", cubin);
        assert_eq!(f.get_attribute(FuncAttr::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK).unwrap(), 64);
        let run = |block: u32| -> anyhow::Result<Vec<f32>> {
            let mut y = poisoned_f32(&dev, n);
            let mut b = dev.stream.launch_builder(&f);
            let ni = n as i32;
            b.arg(&xd).arg(&mut y).arg(&ni);
            // SAFETY: (const float*, float*, int).
            unsafe { b.launch(cfg(n as u32 / block, block, 0)) }.map_err(|e| anyhow::anyhow!("{e}"))?;
            dev.sync()?;
            Ok(download(&dev, &y))
        };
        let want: Vec<f32> = x.iter().map(|v| v + 1.0).collect();
        assert_eq!(run(64).unwrap(), want);
        assert_eq!(run(32).unwrap(), want);
        let err = run(128).expect_err("a launch above __launch_bounds__(64) ran");
        if dev.kind == DeviceKind::Emulation {
            assert!(format!("{err}").contains("__launch_bounds__"), "{err}");
        }
    }
    // every model kernel states its bound, and the loaded image reports it
    for r in RESOURCES.iter().filter(|r| r.file != "selftest") {
        let f = dev.func(MODULES.iter().find(|m| m.name == r.file).unwrap().name, r.kernel).unwrap();
        let bound = f.get_attribute(FuncAttr::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK).unwrap();
        assert!(bound > 0 && bound <= 1024, "{}: max threads {bound}", r.kernel);
    }
}

fn capture_mode() -> CUstreamCaptureMode {
    // THREAD_LOCAL: tests of this binary allocate in parallel threads; GLOBAL would refuse that.
    CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
}

#[test]
fn graph_capture_replays_kernels_copies_memsets_and_gemms_in_order() {
    let Some(dev) = device("emulation") else {
        return;
    };
    // its own stream: other tests of this binary use the device's stream concurrently
    let s = dev.new_stream().unwrap();
    let n = 256usize;
    let (m, k, nn) = (8usize, 16usize, 8usize);
    let mut r = rng(11);
    let x1 = randn(&mut r, n, 1.0);
    let mut x = s.clone_htod(&x1).unwrap();
    let mut y = s.clone_htod(&vec![f32::NAN; n]).unwrap();
    let mut z = s.clone_htod(&vec![f32::NAN; n]).unwrap();
    let mut w = s.clone_htod(&vec![f32::NAN; n]).unwrap();
    let mut u = s.clone_htod(&vec![f32::NAN; n]).unwrap();
    let a1 = round_bf16(&randn(&mut r, m * k, 1.0));
    let b = round_bf16(&randn(&mut r, k * nn, 1.0));
    let mut ad = s.clone_htod(&to_bf16(&a1)).unwrap();
    let bd = s.clone_htod(&to_bf16(&b)).unwrap();
    let mut cd = s.clone_htod(&vec![f32::NAN; m * nn]).unwrap();
    let gemm = Gemm::new(s.clone()).unwrap();
    gemm.matmul(m, nn, k, &ad, false, &bd, false, &mut cd, 1.0, 0.0).unwrap(); // plan outside
    s.memcpy_htod(&vec![f32::NAN; m * nn], &mut cd).unwrap();
    s.synchronize().unwrap();

    let scale = dev.func("selftest", "selftest_scale").unwrap();
    let plus1 = dev.func("selftest", "selftest_bounded64").unwrap();
    let ni = n as i32;
    s.begin_capture(capture_mode()).unwrap();
    {
        let mut l = s.launch_builder(&scale);
        l.arg(&x).arg(&mut y).arg(&ni);
        // SAFETY: (const float*, float*, int), n elements each.
        unsafe { l.launch(cfg(1, 256, 0)) }.unwrap(); // y = 2x
    }
    s.memcpy_dtod(&y, &mut z).unwrap(); // z = 2x
    {
        let mut l = s.launch_builder(&plus1);
        l.arg(&z).arg(&mut u).arg(&ni);
        // SAFETY: as above; 64 threads per block (its bound).
        unsafe { l.launch(cfg(4, 64, 0)) }.unwrap(); // u = 2x + 1
    }
    s.memset_zeros(&mut w).unwrap();
    gemm.matmul(m, nn, k, &ad, false, &bd, false, &mut cd, 1.0, 0.0).unwrap();
    let graph = s.end_capture(CUgraphInstantiate_flags(0)).unwrap().expect("a graph");
    // capture recorded and ran nothing
    assert!(s.clone_dtoh(&y).unwrap().iter().all(|v| v.is_nan()), "a captured launch ran at capture");
    assert!(s.clone_dtoh(&cd).unwrap().iter().all(|v| v.is_nan()), "a captured GEMM ran at capture");

    let check = |xs: &[f32], a: &[f32], y: &CudaSlice<f32>, w: &CudaSlice<f32>| {
        let yv = s.clone_dtoh(y).unwrap();
        let zv = s.clone_dtoh(&z).unwrap();
        let uv = s.clone_dtoh(&u).unwrap();
        let wv = s.clone_dtoh(w).unwrap();
        for i in 0..n {
            assert_eq!(yv[i], 2.0 * xs[i], "y[{i}]");
            assert_eq!(zv[i], 2.0 * xs[i], "z[{i}]");
            assert_eq!(uv[i], 2.0 * xs[i] + 1.0, "u[{i}]");
            assert_eq!(wv[i], 0.0, "w[{i}]");
        }
        let cv = s.clone_dtoh(&cd).unwrap();
        let mut want = vec![0.0f32; m * nn];
        for i in 0..m {
            for j in 0..nn {
                want[i * nn + j] = (0..k).map(|p| a[i * k + p] * b[p * nn + j]).sum();
            }
        }
        // bf16 operands are exact in f32; k = 16 products summed in f32: ~1e-6 relative.
        assert_close("captured gemm", &cv, &want, 1e-5, 1e-3);
    };
    graph.launch().unwrap();
    s.synchronize().unwrap();
    check(&x1, &a1, &y, &w);
    // new inputs, same graph: the replay reads them
    let x2 = randn(&mut r, n, 3.0);
    let a2 = round_bf16(&randn(&mut r, m * k, 2.0));
    s.memcpy_htod(&x2, &mut x).unwrap();
    s.memcpy_htod(&to_bf16(&a2), &mut ad).unwrap();
    s.memcpy_htod(&vec![f32::NAN; n], &mut y).unwrap();
    s.memcpy_htod(&vec![f32::NAN; n], &mut w).unwrap();
    graph.launch().unwrap();
    graph.launch().unwrap(); // idempotent graph: twice gives the same
    s.synchronize().unwrap();
    check(&x2, &a2, &y, &w);
    drop(graph);
}

#[test]
fn capture_refuses_synchronisation_and_host_copies() {
    let Some(dev) = device("emulation") else {
        return;
    };
    let s = dev.new_stream().unwrap();
    let x = s.clone_htod(&[1.0f32; 64]).unwrap();
    let mut y = s.clone_htod(&[f32::NAN; 64]).unwrap();
    s.synchronize().unwrap();
    // synchronising a capturing stream fails and invalidates the capture
    s.begin_capture(capture_mode()).unwrap();
    s.memcpy_dtod(&x, &mut y).unwrap();
    assert!(s.synchronize().is_err(), "cuStreamSynchronize during capture was accepted");
    assert!(s.end_capture(CUgraphInstantiate_flags(0)).is_err(), "an invalidated capture ended well");
    assert!(s.clone_dtoh(&y).unwrap().iter().all(|v| v.is_nan()), "the captured copy ran");
    if !emulated(&dev, "capture_host_copies") {
        return;
    }
    // host-to-device copies cannot be captured (pageable host memory)
    s.begin_capture(capture_mode()).unwrap();
    let err = s.memcpy_htod(&[2.0f32; 64], &mut y).expect_err("a host copy was captured");
    assert!(format!("{err}").contains("capturing stream"), "{err}");
    assert!(s.end_capture(CUgraphInstantiate_flags(0)).is_err());
    // allocation during a (non-relaxed) capture in this thread is refused
    s.begin_capture(capture_mode()).unwrap();
    let err = s.alloc_zeros::<f32>(16).expect_err("an allocation during capture was accepted");
    assert!(format!("{err}").contains("stream capture"), "{err}");
    assert!(s.end_capture(CUgraphInstantiate_flags(0)).is_err());
    // the stream works normally afterwards
    s.memcpy_dtod(&x, &mut y).unwrap();
    assert_eq!(s.clone_dtoh(&y).unwrap(), vec![1.0f32; 64]);
}

/// The race-checking emulation (`HRM_EMU_RACECHECK=1`, loaded once per process, so the checks
/// run in a child process): a missing `__syncthreads` between threads that write and read the
/// same shared memory is reported as a race naming both threads, in static and in dynamic
/// shared memory; the correct twins pass.
#[test]
fn race_checker_catches_a_missing_barrier() {
    let Some(dev) = device("emulation") else {
        return;
    };
    if !emulated(&dev, "race_checker") {
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["race_check_in_child", "--exact", "--include-ignored", "--nocapture", "--test-threads=1"])
        .env("HRM_EMU_RACECHECK", "1")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "race-check child failed:\n{text}");
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
}

#[test]
#[ignore = "run by race_checker_catches_a_missing_barrier with HRM_EMU_RACECHECK=1"]
fn race_check_in_child() {
    assert!(hrm::backend::cuda::device::race_check(), "HRM_EMU_RACECHECK=1 not set");
    let dev = device("emulation").expect("the emulation");
    let n = 1000;
    let x = randn(&mut rng(13), n, 1.0);
    let xd = upload(&dev, &x);
    let mut out = poisoned_f32(&dev, 1);
    launch_xyn(&dev, "selftest_block_sum", &xd, &mut out, n as i32, cfg(1, 256, 0)).expect("correct kernel");
    let mut out = poisoned_f32(&dev, 1);
    let err = launch_xyn(&dev, "selftest_block_sum_missing_sync", &xd, &mut out, n as i32, cfg(1, 256, 0))
        .expect_err("a missing barrier in static shared memory went unnoticed");
    let msg = format!("{err:#}");
    assert!(msg.contains("shared-memory race") && msg.contains("static"), "{msg}");
    // dynamic shared memory: each thread reads another thread's slot, with and without a barrier
    let (blocks, block) = (2u32, 64u32);
    let xs: Vec<f32> = (0..blocks * block).map(|i| i as f32).collect();
    let xsd = upload(&dev, &xs);
    let run = |sync: i32| -> anyhow::Result<()> {
        let mut y = poisoned_f32(&dev, xs.len());
        let f = dev.func("selftest", "selftest_reverse_dyn")?;
        let mut b = dev.stream.launch_builder(&f);
        b.arg(&xsd).arg(&mut y).arg(&sync);
        // SAFETY: (const float*, float*, int); one float of dynamic shared memory per thread.
        unsafe { b.launch(cfg(blocks, block, block * 4)) }.map_err(|e| anyhow::anyhow!("{e}"))?;
        dev.sync()
    };
    run(1).expect("the reversal with its barrier");
    let msg = format!("{:#}", run(0).expect_err("a missing barrier in dynamic shared memory went unnoticed"));
    assert!(msg.contains("shared-memory race") && msg.contains("dynamic"), "{msg}");
}

/// Device rules a GPU enforces and x86 does not: a misaligned 16-byte vector access faults,
/// ldmatrix reads shared memory only. Each broken twin fails its launch here.
#[test]
fn misaligned_vectors_and_ldmatrix_outside_shared_memory_fail() {
    let Some(dev) = device("emulation") else {
        return;
    };
    let x: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let xd = upload(&dev, &x);
    let mut y = poisoned_f32(&dev, 8);
    launch_xyn(&dev, "selftest_vector_load", &xd, &mut y, 0, cfg(1, 32, 0)).expect("aligned load");
    assert_eq!(download(&dev, &y), x[..8].to_vec());
    let xb = upload(&dev, &to_bf16(&(0..64).map(|i| i as f32).collect::<Vec<f32>>()));
    let ldsm = |from_global: i32| -> anyhow::Result<()> {
        let mut y = poisoned_f32(&dev, 32);
        let f = dev.func("selftest", "selftest_ldmatrix_space")?;
        let mut b = dev.stream.launch_builder(&f);
        b.arg(&xb).arg(&mut y).arg(&from_global);
        // SAFETY: (const bf16*, float*, int), one warp.
        unsafe { b.launch(cfg(1, 32, 0)) }.map_err(|e| anyhow::anyhow!("{e}"))?;
        dev.sync()
    };
    ldsm(0).expect("ldmatrix from shared memory");
    if !emulated(&dev, "vector_alignment") {
        return;
    }
    let err = launch_xyn(&dev, "selftest_vector_load", &xd, &mut y, 1, cfg(1, 32, 0))
        .expect_err("a misaligned 16-byte load went unnoticed");
    assert!(format!("{err:#}").contains("misaligned 16-byte vector load"), "{err:#}");
    let err = ldsm(1).expect_err("ldmatrix from global memory went unnoticed");
    assert!(format!("{err:#}").contains("not in shared memory"), "{err:#}");
}

/// Static shared memory counts against the per-block limit: a kernel with 256 bytes of static
/// shared memory may take 48 KiB - 256 of dynamic shared memory without opting in, not 48 KiB.
#[test]
fn static_and_dynamic_shared_memory_share_the_limit() {
    let Some(dev) = device("emulation") else {
        return;
    };
    if !emulated(&dev, "static_smem_limit") {
        return;
    }
    let f = fresh_selftest_fn(&dev, "selftest_smem_own", true);
    assert_eq!(f.get_attribute(FuncAttr::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES).unwrap(), 256);
    let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let xd = upload(&dev, &x);
    let run = |smem: u32| -> anyhow::Result<()> {
        let mut y = poisoned_f32(&dev, 64);
        let mut b = dev.stream.launch_builder(&f);
        b.arg(&xd).arg(&mut y);
        // SAFETY: (const float*, float*); the kernel uses no dynamic shared memory.
        unsafe { b.launch(cfg(1, 64, smem)) }.map_err(|e| anyhow::anyhow!("{e}"))?;
        dev.sync()
    };
    run(48 * 1024 - 256).expect("static + dynamic = 48 KiB");
    let err = run(48 * 1024).expect_err("static + dynamic above 48 KiB without opt-in ran");
    assert!(format!("{err}").contains("256 static"), "{err}");
}

/// Allocations as the driver makes them: 256-byte aligned, 0 bytes refused, and memory pools
/// (every H100/H200 has them) hand a freed block out again at the same address. A graph that
/// captured a pointer into a block freed since then fails at replay instead of reading the
/// block's new owner.
#[test]
fn pool_allocations_and_stale_graph_pointers() {
    let Some(dev) = device("emulation") else {
        return;
    };
    if !emulated(&dev, "pools") {
        return;
    }
    let s = dev.new_stream().unwrap();
    for n in [1usize, 3, 77, 1000] {
        let a = s.alloc_zeros::<u8>(n).unwrap();
        let (p, _g) = a.device_ptr(&s);
        assert_eq!(p % 256, 0, "an allocation of {n} bytes is not 256-byte aligned");
    }
    assert!(s.alloc_zeros::<f32>(0).is_err(), "a 0-byte allocation was accepted");
    // an odd size on its own stream: no other test takes the freed block in between
    let n = 4099;
    let x = s.clone_htod(&vec![1.0f32; n]).unwrap();
    let y = s.alloc_zeros::<f32>(n).unwrap();
    let addr = {
        let (p, _g) = y.device_ptr(&s);
        p
    };
    // record a copy into y, free y, allocate the same size again: the pool returns its address
    let mut y = y;
    s.begin_capture(capture_mode()).unwrap();
    s.memcpy_dtod(&x, &mut y).unwrap();
    let graph = s.end_capture(CUgraphInstantiate_flags(0)).unwrap().unwrap();
    drop(y);
    let z = s.alloc_zeros::<f32>(n).unwrap();
    let (pz, _g) = z.device_ptr(&s);
    assert_eq!(pz, addr, "the pool did not hand the freed block out again");
    let err = graph.launch().expect_err("a graph replayed into memory freed since its capture");
    assert!(format!("{err:?}").contains("ILLEGAL_ADDRESS"), "{err:?}");
    s.synchronize().ok();
}
