//! `hrm plot RUN_DIR`: the run's curves from `metrics.jsonl` as SVG charts (plotters):
//! loss terms, train and eval exact accuracy, mean halting step, throughput, against step.

use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub type Series = Vec<(f64, f64)>;

/// The charts `hrm plot` draws (and the only files `train --overwrite` removes from `plots/`).
pub const PLOT_FILES: &[&str] = &["loss.svg", "accuracy.svg", "halting.svg", "throughput.svg"];

/// Read `metrics.jsonl`: series keyed by "kind/name/field" (eval lines carry the set name).
pub fn read_metrics(path: &Path) -> Result<BTreeMap<String, Series>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out: BTreeMap<String, Series> = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    // A run killed while writing a record leaves an unterminated last line: skip it.
    let torn = !text.is_empty() && !text.ends_with('\n');
    for (i, line) in lines.iter().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) if torn && i + 1 == lines.len() => {
                eprintln!("{}:{}: skipped a torn (unterminated) last line", path.display(), i + 1);
                continue;
            }
            // A damaged line (no writer of ours makes one) costs its point, not the charts.
            Err(e) => {
                eprintln!("{}:{}: skipped a line that is not a JSON object ({e})", path.display(), i + 1);
                continue;
            }
        };
        let Some(step) = v["step"].as_f64() else {
            eprintln!("{}:{}: skipped a record without a step", path.display(), i + 1);
            continue;
        };
        let kind = v["kind"].as_str().unwrap_or("train");
        let prefix = match kind {
            "eval" => format!("eval/{}", v["name"].as_str().unwrap_or("set")),
            k => k.to_string(),
        };
        if let Some(obj) = v.as_object() {
            for (k, x) in obj {
                if let Some(x) = x.as_f64()
                    && k != "step"
                {
                    out.entry(format!("{prefix}/{k}")).or_default().push((step, x));
                }
            }
        }
    }
    Ok(out)
}

fn chart(path: &Path, title: &str, series: &[(&str, &Series)]) -> Result<()> {
    chart_xy(path, title, "step", series)
}

/// One SVG line chart of `series` (label, points) against `x_desc`, written like every output
/// (`fsutil::write_atomic`); nothing is written when there is no finite point.
pub fn chart_xy(path: &Path, title: &str, x_desc: &str, series: &[(&str, &Series)]) -> Result<()> {
    let mut svg = String::new();
    if draw_svg(&mut svg, title, x_desc, series)? {
        crate::fsutil::write_atomic(path, svg.as_bytes())?;
    }
    Ok(())
}

/// Draws the chart into `svg`; false when there is no finite point to draw.
fn draw_svg(svg: &mut String, title: &str, x_desc: &str, series: &[(&str, &Series)]) -> Result<bool> {
    let pts: Vec<&(f64, f64)> =
        series.iter().flat_map(|(_, s)| s.iter()).filter(|p| p.1.is_finite()).collect();
    if pts.is_empty() {
        return Ok(false);
    }
    let (x0, x1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let pad = ((y1 - y0) * 0.05).max(1e-9);
    let root = SVGBackend::with_string(svg, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    c.configure_mesh().x_desc(x_desc).draw().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for (k, (name, s)) in series.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        c.draw_series(LineSeries::new(s.iter().copied(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(true)
}

/// Draw the standard charts of a run into `out_dir` (default: RUN_DIR/plots); returns the files.
pub fn plot_run(run: &Path, out_dir: Option<&Path>) -> Result<Vec<PathBuf>> {
    let metrics = run.join("metrics.jsonl");
    let out = out_dir.map(Path::to_path_buf).unwrap_or_else(|| run.join("plots"));
    crate::fsutil::check_output_dir("--out", &out, PLOT_FILES, &[("metrics file", &metrics)])?;
    let m = read_metrics(&metrics)?;
    if m.is_empty() {
        bail!("{}: no metrics to plot", metrics.display());
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let get = |k: &str| m.get(k).cloned().unwrap_or_default();
    let mut files = Vec::new();
    let mut draw = |file: &str, title: &str, keys: Vec<(String, String)>| -> Result<()> {
        let data: Vec<(String, Series)> = keys.into_iter().map(|(label, k)| (label, get(&k))).collect();
        let refs: Vec<(&str, &Series)> =
            data.iter().filter(|(_, s)| !s.is_empty()).map(|(l, s)| (l.as_str(), s)).collect();
        if !refs.is_empty() {
            let p = out.join(file);
            chart(&p, title, &refs)?;
            files.push(p);
        }
        Ok(())
    };
    let l = |a: &str, b: &str| (a.to_string(), b.to_string());
    let [loss, accuracy, halting, throughput] = PLOT_FILES else { unreachable!("four charts") };
    draw(
        loss,
        "loss terms (per puzzle)",
        vec![
            l("lm", "train/lm_loss"),
            l("q_halt", "train/q_halt_loss"),
            l("q_continue", "train/q_continue_loss"),
        ],
    )?;
    let mut acc = vec![l("train exact", "train/exact_accuracy"), l("train cells", "train/accuracy")];
    for k in m.keys().filter(|k| k.starts_with("eval/") && k.ends_with("/exact_accuracy")) {
        acc.push((k.trim_end_matches("/exact_accuracy").replace('/', " ") + " exact", k.clone()));
    }
    draw(accuracy, "exact accuracy", acc)?;
    draw(halting, "mean halting step", vec![l("train", "train/mean_halt_steps")])?;
    draw(throughput, "throughput (tokens/s)", vec![l("tokens/s", "train/tokens_per_s")])?;
    Ok(files)
}
