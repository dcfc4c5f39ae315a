//! Soak: the replicas' resources sampled every few seconds, written as a CSV and a PNG, and
//! judged for growth without bound.
//!
//! A leak shows as a series that keeps rising after the load has reached its steady state, so
//! each series is fitted by least squares over the second half of the run (per replica, and
//! only since its last restart, since a restart resets every series) and fails above a stated
//! slope. Store usage and budget in use are meant to grow up to their configured bounds; they
//! are judged against those bounds instead.

use crate::replica::Replica;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One series: its name, unit, and the slope (units per second) above which it fails.
///
/// A series fails when its second-half slope is above `max_slope` *and* that slope adds up to
/// more than `min_growth` over the second half: in a short run a few samples' noise makes
/// steep slopes of no size (four more fds in a minute), which is not growth without bound.
pub struct Series {
    pub name: &'static str,
    pub unit: &'static str,
    pub max_slope: Option<f64>,
    pub min_growth: f64,
    /// From `/metrics`, or from /proc.
    pub metric: Option<&'static str>,
    /// The name of a bound from `/metrics` the value must stay within.
    pub bound: Option<&'static str>,
}

/// The series sampled and their thresholds (stated here, printed in the report).
///
/// RSS: 0.125 MiB/s is 450 MiB an hour, far above what a bounded cache drifts (its memory is
/// the budget, the small-chunk cache and the hot cache, all capped), and 16 MiB of growth is
/// more than allocator noise. Fds and tasks: one leaked per request would be tens per second
/// here; the thresholds sit well below that and well above the noise of a steady load.
pub const SERIES: &[Series] = &[
    Series {
        name: "rss_mib",
        unit: "MiB",
        max_slope: Some(0.125),
        min_growth: 16.0,
        metric: None,
        bound: None,
    },
    Series {
        name: "open_fds",
        unit: "fds",
        max_slope: Some(0.05),
        min_growth: 16.0,
        metric: None,
        bound: None,
    },
    Series {
        name: "runtime_tasks",
        unit: "tasks",
        max_slope: Some(0.5),
        min_growth: 64.0,
        metric: Some("shoal_runtime_tasks"),
        bound: None,
    },
    Series {
        name: "background_tasks",
        unit: "tasks",
        max_slope: Some(0.1),
        min_growth: 16.0,
        metric: Some("shoal_background_tasks"),
        bound: None,
    },
    Series {
        name: "connections",
        unit: "conns",
        max_slope: Some(0.5),
        min_growth: 64.0,
        metric: Some("shoal_connections"),
        bound: None,
    },
    Series {
        name: "origin_inflight",
        unit: "requests",
        max_slope: Some(0.1),
        min_growth: 8.0,
        metric: Some("shoal_origin_inflight"),
        bound: None,
    },
    Series {
        name: "budget_used_mib",
        unit: "MiB",
        max_slope: None,
        min_growth: 0.0,
        metric: Some("shoal_budget_used_bytes"),
        bound: Some("shoal_budget_bytes"),
    },
    Series {
        name: "store_mib",
        unit: "MiB",
        max_slope: None,
        min_growth: 0.0,
        metric: Some("shoal_store_bytes"),
        bound: Some("shoal_store_capacity_bytes"),
    },
];

/// One sample of one replica.
#[derive(Clone, Debug)]
pub struct Sample {
    pub t: f64,
    pub replica: usize,
    /// Which start of the replica this came from.
    pub start: u32,
    pub values: Vec<Option<f64>>,
    pub bounds: Vec<Option<f64>>,
}

fn proc_rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn proc_fds(pid: u32) -> Option<f64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as f64)
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

pub async fn sample(http: &reqwest::Client, t0: Instant, r: &Replica) -> Option<Sample> {
    let pid = r.pid.load(Ordering::SeqCst);
    if pid == 0 || r.avail() != crate::replica::Avail::Up {
        return None;
    }
    let url = format!("http://127.0.0.1:{}/metrics", r.ops_port);
    let text = tokio::time::timeout(Duration::from_secs(5), async {
        http.get(url).send().await.ok()?.text().await.ok()
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default();
    let mib = |v: Option<f64>| v.map(|b| b / (1 << 20) as f64);
    let mut values = Vec::new();
    let mut bounds = Vec::new();
    for s in SERIES {
        let v = match (s.name, s.metric) {
            ("rss_mib", _) => proc_rss_mib(pid),
            ("open_fds", _) => proc_fds(pid),
            (n, Some(m)) if n.ends_with("_mib") => mib(metric(&text, m)),
            (_, Some(m)) => metric(&text, m),
            _ => None,
        };
        values.push(v);
        bounds.push(s.bound.and_then(|b| mib(metric(&text, b))));
    }
    Some(Sample {
        t: t0.elapsed().as_secs_f64(),
        replica: r.idx,
        start: r.starts.load(Ordering::SeqCst),
        values,
        bounds,
    })
}

/// Least-squares slope of (t, v).
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 4 {
        return None;
    }
    let n = points.len() as f64;
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mv = points.iter().map(|p| p.1).sum::<f64>() / n;
    let cov: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - mv)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    (var > 0.0).then(|| cov / var)
}

/// One verdict per series and replica.
pub struct Judgement {
    pub lines: Vec<String>,
    pub failures: Vec<String>,
    pub json: serde_json::Value,
}

pub fn judge(samples: &[Sample], run_secs: f64, replicas: usize) -> Judgement {
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    let mut json = Vec::new();
    let half = run_secs / 2.0;
    for (si, s) in SERIES.iter().enumerate() {
        for r in 0..replicas {
            let mine: Vec<&Sample> = samples.iter().filter(|x| x.replica == r).collect();
            let Some(last_start) = mine.iter().map(|x| x.start).max() else {
                continue;
            };
            let pts: Vec<(f64, f64)> = mine
                .iter()
                .filter(|x| x.start == last_start && x.t >= half)
                .filter_map(|x| Some((x.t, x.values[si]?)))
                .collect();
            let max = mine
                .iter()
                .filter_map(|x| x.values[si])
                .fold(f64::NAN, f64::max);
            let sl = slope(&pts);
            let mut verdict = "ok".to_owned();
            if let (Some(limit), Some(v)) = (s.max_slope, sl) {
                let span = pts.last().map_or(0.0, |l| l.0) - pts.first().map_or(0.0, |f| f.0);
                let grew = v * span;
                if v > limit && grew > s.min_growth {
                    verdict = format!(
                        "FAIL: slope {v:.4} {}/s > {limit} and {grew:.1} {} of growth > {}",
                        s.unit, s.unit, s.min_growth
                    );
                }
            }
            if s.bound.is_some() {
                for x in &mine {
                    if let (Some(v), Some(b)) = (x.values[si], x.bounds[si]) {
                        if v > b {
                            verdict =
                                format!("FAIL: {v:.1} above its bound {b:.1} at {:.0} s", x.t);
                            break;
                        }
                    }
                }
            }
            if pts.len() < 4 && s.max_slope.is_some() {
                verdict = format!(
                    "not judged: {} samples since the last restart in the second half",
                    pts.len()
                );
            }
            let line = format!(
                "{:<18} replica {r}: max {max:.1} {}, second-half slope {} ({} points): {verdict}",
                s.name,
                s.unit,
                sl.map_or("-".into(), |v| format!("{v:+.4} {}/s", s.unit)),
                pts.len()
            );
            if verdict.starts_with("FAIL") {
                failures.push(line.clone());
            }
            json.push(serde_json::json!({
                "series": s.name, "replica": r, "unit": s.unit, "max": max,
                "slope_per_s": sl, "points": pts.len(), "threshold_per_s": s.max_slope,
                "min_growth": s.min_growth,
                "bounded_by": s.bound, "verdict": verdict,
            }));
            lines.push(line);
        }
    }
    Judgement {
        lines,
        failures,
        json: serde_json::Value::Array(json),
    }
}

pub fn write_csv(path: &Path, samples: &[Sample]) -> std::io::Result<()> {
    let mut out = String::from("t_s,replica,start");
    for s in SERIES {
        let _ = write!(out, ",{}", s.name);
    }
    out.push('\n');
    for x in samples {
        let _ = write!(out, "{:.1},{},{}", x.t, x.replica, x.start);
        for v in &x.values {
            match v {
                Some(v) => {
                    let _ = write!(out, ",{v:.3}");
                }
                None => out.push(','),
            }
        }
        out.push('\n');
    }
    std::fs::write(path, out)
}

/// One small chart per series, a line per replica. Text needs a TrueType font: DejaVu Sans
/// when the system has it, else the charts go without labels.
pub fn write_png(path: &Path, samples: &[Sample], replicas: usize) -> Result<(), String> {
    use plotters::prelude::*;
    let font = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ]
    .iter()
    .find_map(|p| std::fs::read(p).ok());
    let text = match font {
        Some(bytes) => {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        }
        None => false,
    };
    let root = BitMapBackend::new(path, (1600, 1200)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((4, 2));
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
    ];
    let tmax = samples.iter().map(|s| s.t).fold(1.0, f64::max);
    for (si, (s, area)) in SERIES.iter().zip(areas.iter()).enumerate() {
        let vmax = samples
            .iter()
            .filter_map(|x| x.values[si])
            .fold(0.0, f64::max)
            * 1.1
            + 1e-9;
        let mut b = ChartBuilder::on(area);
        b.margin(10);
        if text {
            b.caption(format!("{} ({})", s.name, s.unit), ("sans-serif", 18))
                .x_label_area_size(25)
                .y_label_area_size(50);
        }
        let mut chart = b
            .build_cartesian_2d(0.0..tmax, 0.0..vmax)
            .map_err(|e| e.to_string())?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("s").label_style(("sans-serif", 12));
        } else {
            // No font: no labels (drawing one would fail).
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(|e| e.to_string())?;
        for r in 0..replicas {
            let pts: Vec<(f64, f64)> = samples
                .iter()
                .filter(|x| x.replica == r)
                .filter_map(|x| Some((x.t, x.values[si]?)))
                .collect();
            let series = chart
                .draw_series(LineSeries::new(pts, colors[r % 3].stroke_width(2)))
                .map_err(|e| e.to_string())?;
            if text {
                let c = colors[r % 3];
                series
                    .label(format!("replica {r}"))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], c));
            }
        }
        if text {
            chart
                .configure_series_labels()
                .border_style(BLACK)
                .background_style(WHITE.mix(0.8))
                .label_font(("sans-serif", 12))
                .draw()
                .map_err(|e| e.to_string())?;
        }
    }
    root.present().map_err(|e| e.to_string())
}

/// Samples every replica every `every` until `stop`.
pub async fn sampler(
    replicas: Vec<Arc<Replica>>,
    t0: Instant,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<Sample> {
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return out,
        }
        for r in &replicas {
            if let Some(s) = sample(&http, t0, r).await {
                out.push(s);
            }
        }
    }
}
