//! The paper's finding (b): exact accuracy stays on a plateau, then rises suddenly (the
//! "critical reasoning step", grokking-like). [`critical_step`] finds the steepest rise of a
//! training curve and says whether it is sudden: a run that reaches its last step appends it to
//! `metrics.jsonl` as a `critical_step` record (for the training exact accuracy; its `step` is
//! the run's last step, `at_step` the critical one), `hrm plot` marks it on the accuracy chart,
//! and the demo reports it.
//!
//! The curve (step, value) is smoothed by a centred moving mean over `w` points (w = 1/20 of
//! the points, at least 2). The rise at point i is `smooth[i + w] - smooth[i - w]`, a window of
//! 2w points (1/10 of the run); the critical step is the centre of the largest rise. The rise
//! is *sudden* when that one window holds at least half of the curve's whole range of the
//! smoothed values (a steady climb would put about 1/10 of it there) and it is at least 0.05
//! in absolute terms.

use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;

/// The steepest rise of a curve.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CriticalStep {
    /// The step at the centre of the rise.
    pub step: f64,
    /// Smoothed value at the start and the end of the window.
    pub before: f64,
    pub after: f64,
    /// Steps from the start to the end of the window.
    pub window_steps: f64,
    /// The rise as a fraction of the smoothed curve's range (max - min).
    pub share_of_range: f64,
    pub sudden: bool,
}

/// Fewest points for a verdict: the smoothing and the window need a curve, not a handful of
/// evaluations.
pub const MIN_POINTS: usize = 20;

/// The steepest rise of `curve` (points in step order); None when the curve is too short or
/// never rises.
pub fn critical_step(curve: &[(f64, f64)]) -> Option<CriticalStep> {
    let pts: Vec<(f64, f64)> = curve.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
    let n = pts.len();
    if n < MIN_POINTS {
        return None;
    }
    let w = (n / 20).max(2);
    let smooth: Vec<f64> = (0..n)
        .map(|i| {
            let (a, b) = (i.saturating_sub(w), (i + w).min(n - 1));
            pts[a..=b].iter().map(|p| p.1).sum::<f64>() / (b - a + 1) as f64
        })
        .collect();
    let (lo, hi) = smooth.iter().fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    let (i, rise) = (w..n - w)
        .map(|i| (i, smooth[i + w] - smooth[i - w]))
        .fold((w, f64::MIN), |b, c| if c.1 > b.1 { c } else { b });
    // (a flat curve's smoothing leaves rounding differences, not a rise)
    if rise <= 1e-9 {
        return None;
    }
    let share = if hi > lo { rise / (hi - lo) } else { 0.0 };
    Some(CriticalStep {
        step: pts[i].0,
        before: smooth[i - w],
        after: smooth[i + w],
        window_steps: pts[i + w].0 - pts[i - w].0,
        share_of_range: share,
        sudden: share >= 0.5 && rise >= 0.05,
    })
}

/// The `(step, field)` points of the `train` records of a `metrics.jsonl` (lines that do not
/// parse are skipped: `hrm plot` and the resume repair report those).
pub fn train_curve(metrics: &Path, field: &str) -> Result<Vec<(f64, f64)>> {
    let text = std::fs::read_to_string(metrics).with_context(|| format!("reading {}", metrics.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"].as_str().unwrap_or("train") == "train")
        .filter_map(|v| Some((v["step"].as_f64()?, v[field].as_f64()?)))
        .collect())
}

/// The `critical_step` record of a run that ended at `last_step` (None when the curve has no
/// verdict).
pub fn record(metrics: &Path, last_step: u64) -> Result<Option<serde_json::Value>> {
    let Some(c) = critical_step(&train_curve(metrics, "exact_accuracy")?) else {
        return Ok(None);
    };
    let mut v = serde_json::to_value(&c)?;
    v["at_step"] = v["step"].take();
    v["kind"] = "critical_step".into();
    v["step"] = last_step.into();
    v["metric"] = "train/exact_accuracy".into();
    Ok(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(i: usize) -> f64 {
        // A fixed, zero-mean wiggle of amplitude 0.01.
        ((i * 7919) % 13) as f64 / 600.0 - 0.01
    }

    #[test]
    fn a_plateau_then_a_jump_is_sudden_and_found_where_it_is() {
        let curve: Vec<(f64, f64)> =
            (0..400).map(|i| (i as f64 * 10.0, if i < 250 { 0.05 } else { 0.8 } + noise(i))).collect();
        let c = critical_step(&curve).expect("a rise");
        assert!(c.sudden, "{c:?}");
        assert!((c.step - 2500.0).abs() <= 200.0, "{c:?}");
        assert!(c.before < 0.2 && c.after > 0.6, "{c:?}");
    }

    #[test]
    fn a_steady_climb_is_not_sudden() {
        let curve: Vec<(f64, f64)> = (0..400).map(|i| (i as f64, i as f64 / 400.0 + noise(i))).collect();
        let c = critical_step(&curve).expect("a rise");
        assert!(!c.sudden, "{c:?}");
        assert!(c.share_of_range < 0.2, "{c:?}");
    }

    #[test]
    fn flat_falling_or_short_curves_have_no_critical_step() {
        let flat: Vec<(f64, f64)> = (0..100).map(|i| (i as f64, 0.3)).collect();
        assert_eq!(critical_step(&flat), None);
        let falling: Vec<(f64, f64)> = (0..100).map(|i| (i as f64, 1.0 - i as f64 / 100.0)).collect();
        assert_eq!(critical_step(&falling), None);
        let short: Vec<(f64, f64)> = (0..MIN_POINTS - 1).map(|i| (i as f64, i as f64)).collect();
        assert_eq!(critical_step(&short), None);
    }

    #[test]
    fn the_record_and_the_plot_mark_the_critical_step_of_a_metrics_file() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics.jsonl");
        let mut text = String::new();
        for i in 1..=100u64 {
            let acc = if i <= 60 { 0.02 } else { 0.7 } + noise(i as usize);
            text += &format!("{{\"kind\":\"train\",\"step\":{},\"exact_accuracy\":{acc}}}\n", i * 10);
            if i % 25 == 0 {
                // Eval records and a damaged line do not enter the training curve.
                text += &format!(
                    "{{\"kind\":\"eval\",\"name\":\"x\",\"step\":{},\"exact_accuracy\":0.0}}\n",
                    i * 10
                );
                text += "not json\n";
            }
        }
        std::fs::write(&metrics, text).unwrap();
        let v = record(&metrics, 1000).unwrap().expect("a rise");
        assert_eq!((v["kind"].as_str(), v["step"].as_u64()), (Some("critical_step"), Some(1000)));
        assert_eq!(v["metric"], "train/exact_accuracy");
        let at = v["at_step"].as_f64().unwrap();
        assert!((560.0..=660.0).contains(&at) && v["sudden"] == true, "{v}");
        let files = crate::analysis::plot::plot_run(dir.path(), None).unwrap();
        let acc = files.iter().find(|f| f.ends_with("accuracy.svg")).expect("accuracy chart");
        let svg = std::fs::read_to_string(acc).unwrap();
        assert!(svg.contains(&format!("critical step (sudden rise) at step {at:.0}")), "marker missing");
    }

    #[test]
    fn a_tiny_rise_is_not_sudden() {
        // All of the range in one place, but only 0.02 of accuracy: noise, not a transition.
        let curve: Vec<(f64, f64)> =
            (0..200).map(|i| (i as f64, if i < 100 { 0.10 } else { 0.12 })).collect();
        let c = critical_step(&curve).expect("a rise");
        assert!(!c.sudden, "{c:?}");
    }
}
