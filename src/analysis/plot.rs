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

/// One SVG line chart of `series` (label, points) against `x_desc`, written like every output
/// (`fsutil::write_atomic`); nothing is written when there is no finite point.
pub fn chart_xy(path: &Path, title: &str, x_desc: &str, series: &[(&str, &Series)]) -> Result<()> {
    chart_marked(path, title, x_desc, series, None)
}

/// [`chart_xy`] with a labelled vertical line at x = `marker.0`.
pub fn chart_marked(
    path: &Path,
    title: &str,
    x_desc: &str,
    series: &[(&str, &Series)],
    marker: Option<(f64, &str)>,
) -> Result<()> {
    let mut svg = String::new();
    if draw_svg(&mut svg, title, x_desc, series, marker)? {
        crate::fsutil::write_atomic(path, svg.as_bytes())?;
    }
    Ok(())
}

/// Draws the chart into `svg`; false when there is no finite point to draw.
fn draw_svg(
    svg: &mut String,
    title: &str,
    x_desc: &str,
    series: &[(&str, &Series)],
    marker: Option<(f64, &str)>,
) -> Result<bool> {
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
    if let Some((mx, label)) = marker {
        let style = BLACK.stroke_width(1);
        c.draw_series(LineSeries::new([(mx, y0 - pad), (mx, y1 + pad)], style))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
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
    // The steepest rise of the training exact accuracy (the critical step), computed afresh.
    let critical = super::critical::critical_step(&get("train/exact_accuracy")).map(|c| {
        let kind = if c.sudden { "critical step (sudden rise)" } else { "steepest rise (gradual)" };
        (c.step, format!("{kind} at step {:.0}: {:.2} -> {:.2}", c.step, c.before, c.after))
    });
    let mut files = Vec::new();
    let mut draw = |file: &str,
                    title: &str,
                    keys: Vec<(String, String)>,
                    marker: Option<&(f64, String)>|
     -> Result<()> {
        let data: Vec<(String, Series)> = keys.into_iter().map(|(label, k)| (label, get(&k))).collect();
        let refs: Vec<(&str, &Series)> =
            data.iter().filter(|(_, s)| !s.is_empty()).map(|(l, s)| (l.as_str(), s)).collect();
        if !refs.is_empty() {
            let p = out.join(file);
            chart_marked(&p, title, "step", &refs, marker.map(|(x, l)| (*x, l.as_str())))?;
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
        None,
    )?;
    let mut acc = vec![l("train exact", "train/exact_accuracy"), l("train cells", "train/accuracy")];
    for k in m.keys().filter(|k| k.starts_with("eval/") && k.ends_with("/exact_accuracy")) {
        acc.push((k.trim_end_matches("/exact_accuracy").replace('/', " ") + " exact", k.clone()));
    }
    draw(accuracy, "exact accuracy", acc, critical.as_ref())?;
    draw(halting, "mean halting step", vec![l("train", "train/mean_halt_steps")], None)?;
    draw(throughput, "throughput (tokens/s)", vec![l("tokens/s", "train/tokens_per_s")], None)?;
    Ok(files)
}

/// The landscape view ([`super::landscape`]): each run's z_H path in the plane of the first two
/// principal components, coloured by its final answer (the right answer green), a small ring at
/// its start and a dot at its end. Written like every output.
pub fn landscape_svg(path: &Path, r: &super::landscape::LandscapeReport) -> Result<()> {
    let e = |e: &dyn std::fmt::Debug| anyhow::anyhow!("{e:?}");
    let pts: Vec<[f64; 2]> = r.per_run.iter().flat_map(|p| p.path.iter().copied()).collect();
    if pts.is_empty() {
        bail!("landscape: no points to draw");
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in &pts {
        (x0, x1, y0, y1) = (x0.min(p[0]), x1.max(p[0]), y0.min(p[1]), y1.max(p[1]));
    }
    let (px, py) = (((x1 - x0) * 0.05).max(1e-9), ((y1 - y0) * 0.05).max(1e-9));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 640)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let title = format!(
            "{} puzzle {}: z_H from {} noisy starts, {} segments",
            r.name, r.puzzle, r.runs, r.segments
        );
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d((x0 - px)..(x1 + px), (y0 - py)..(y1 + py))
            .map_err(|x| e(&x))?;
        c.configure_mesh()
            .x_desc(format!("PC1 ({:.1}% of the variance)", 100.0 * r.explained_variance[0]))
            .y_desc(format!("PC2 ({:.1}%)", 100.0 * r.explained_variance[1]))
            .draw()
            .map_err(|x| e(&x))?;
        let mut wrong = 0;
        let colors: Vec<RGBAColor> = r
            .answers
            .iter()
            .map(|a| {
                if a.correct {
                    RGBColor(0, 150, 60).to_rgba()
                } else {
                    wrong += 1;
                    // Palette99's first colours, skipping its green.
                    Palette99::pick(if wrong >= 2 { wrong + 1 } else { wrong - 1 }).to_rgba()
                }
            })
            .collect();
        for (i, a) in r.answers.iter().enumerate() {
            let color = colors[i];
            let kind = match (a.correct, a.valid) {
                (true, _) => "right",
                (false, true) => "wrong (another valid grid)",
                (false, false) => "wrong (invalid grid)",
            };
            let label = format!("answer {i}: {kind}, {} run{}", a.runs, if a.runs == 1 { "" } else { "s" });
            let mut first = true;
            for run in r.per_run.iter().filter(|p| p.answer == i) {
                let path: Vec<(f64, f64)> = run.path.iter().map(|p| (p[0], p[1])).collect();
                let s =
                    c.draw_series(LineSeries::new(path.clone(), color.stroke_width(1))).map_err(|x| e(&x))?;
                if first {
                    s.label(label.clone()).legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
                    first = false;
                }
                let (start, end) = (path[0], path[path.len() - 1]);
                c.draw_series([Circle::new(start, 3, color.stroke_width(1))]).map_err(|x| e(&x))?;
                c.draw_series([Circle::new(end, 5, color.filled())]).map_err(|x| e(&x))?;
            }
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    crate::fsutil::write_atomic(path, svg.as_bytes())
}
