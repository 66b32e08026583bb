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
