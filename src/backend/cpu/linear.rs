//! Linear layers without bias, `y = x W^T` with `W` stored [out, in] as in PyTorch, and their
//! gradients. All three products go through the `gemm` crate (strided, so no transposes are
//! materialized). Cost: 2*rows*in*out FLOPs per product.

use gemm::{Parallelism, gemm};

fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    // Below ~1 MFLOP the thread start-up costs more than it saves.
    if m * n * k < 1 << 18 { Parallelism::None } else { Parallelism::Rayon(rayon::current_num_threads()) }
}

/// `y[rows, out] = x[rows, in] * w[out, in]^T` (overwrites y).
pub fn linear_fwd(x: &[f32], w: &[f32], y: &mut [f32], rows: usize, din: usize, dout: usize) {
    assert_eq!(x.len(), rows * din, "linear_fwd: x");
    assert_eq!(w.len(), dout * din, "linear_fwd: w");
    assert_eq!(y.len(), rows * dout, "linear_fwd: y");
    // SAFETY: the slices have exactly the lengths the strides below address.
    unsafe {
        gemm(
            rows,
            dout,
            din,
            y.as_mut_ptr(),
            1,
            dout as isize,
            false,
            x.as_ptr(),
            1,
            din as isize,
            w.as_ptr(),
            din as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism(rows, dout, din),
        );
    }
}

/// `dx[rows, in] (+)= dy[rows, out] * w[out, in]`; accumulates when `accumulate`.
pub fn linear_bwd_x(
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    rows: usize,
    din: usize,
    dout: usize,
    accumulate: bool,
) {
    assert_eq!(dy.len(), rows * dout, "linear_bwd_x: dy");
    assert_eq!(w.len(), dout * din, "linear_bwd_x: w");
    assert_eq!(dx.len(), rows * din, "linear_bwd_x: dx");
    // SAFETY: as above.
    unsafe {
        gemm(
            rows,
            din,
            dout,
            dx.as_mut_ptr(),
            1,
            din as isize,
            accumulate,
            dy.as_ptr(),
            1,
            dout as isize,
            w.as_ptr(),
            1,
            din as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(rows, din, dout),
        );
    }
}

/// `dw[out, in] += dy[rows, out]^T * x[rows, in]` (weight gradients always accumulate).
pub fn linear_bwd_w(dy: &[f32], x: &[f32], dw: &mut [f32], rows: usize, din: usize, dout: usize) {
    assert_eq!(dy.len(), rows * dout, "linear_bwd_w: dy");
    assert_eq!(x.len(), rows * din, "linear_bwd_w: x");
    assert_eq!(dw.len(), dout * din, "linear_bwd_w: dw");
    // SAFETY: as above; dy is read transposed (row stride 1, column stride dout).
    unsafe {
        gemm(
            dout,
            din,
            rows,
            dw.as_mut_ptr(),
            1,
            din as isize,
            true,
            dy.as_ptr(),
            dout as isize,
            1,
            x.as_ptr(),
            1,
            din as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(dout, din, rows),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], w: &[f32], rows: usize, din: usize, dout: usize) -> Vec<f32> {
        let mut y = vec![0.0; rows * dout];
        for r in 0..rows {
            for o in 0..dout {
                y[r * dout + o] = (0..din).map(|i| x[r * din + i] * w[o * din + i]).sum();
            }
        }
        y
    }

    #[test]
    fn products_match_naive_loops() {
        let (rows, din, dout) = (7, 13, 5);
        let x: Vec<f32> = (0..rows * din).map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0).collect();
        let w: Vec<f32> = (0..dout * din).map(|i| ((i * 17 % 13) as f32 - 6.0) / 5.0).collect();
        let mut y = vec![f32::NAN; rows * dout];
        linear_fwd(&x, &w, &mut y, rows, din, dout);
        for (a, b) in y.iter().zip(naive(&x, &w, rows, din, dout)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // dx = dy W: compare with the naive product against W^T.
        let dy: Vec<f32> = (0..rows * dout).map(|i| (i as f32 * 0.3).sin()).collect();
        let mut wt = vec![0.0; din * dout];
        for o in 0..dout {
            for i in 0..din {
                wt[i * dout + o] = w[o * din + i];
            }
        }
        let mut dx = vec![f32::NAN; rows * din];
        linear_bwd_x(&dy, &w, &mut dx, rows, din, dout, false);
        for (a, b) in dx.iter().zip(naive(&dy, &wt, rows, dout, din)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let mut dw = vec![1.0; dout * din];
        linear_bwd_w(&dy, &x, &mut dw, rows, din, dout);
        for o in 0..dout {
            for i in 0..din {
                let want: f32 = 1.0 + (0..rows).map(|r| dy[r * dout + o] * x[r * din + i]).sum::<f32>();
                assert!((dw[o * din + i] - want).abs() < 1e-5);
            }
        }
    }
}
