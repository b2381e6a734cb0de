//! The SVG plot of `quantize report`: perplexity increase (log scale) against bits per
//! weight, one point per checkpoint, a colour and a line per method, peers as grey
//! triangles. Drawn with plotters' SVG backend (no fonts or system libraries needed).

use super::merge::{Entry, Peer};
use plotters::prelude::*;
use std::collections::BTreeMap;

/// Increases below this (%) are drawn at it: the log axis has no zero.
pub const FLOOR_PCT: f64 = 0.05;

/// The SVG text of the plot.
pub fn svg(entries: &[Entry], peers: &[Peer], title: &str) -> Result<String, String> {
    let mut out = String::new();
    draw(&mut out, entries, peers, title).map_err(|e| format!("drawing the plot: {e}"))?;
    Ok(out)
}

fn draw(out: &mut String, entries: &[Entry], peers: &[Peer], title: &str) -> Result<(), Box<dyn std::error::Error>> {
    let y = |d: f64| d.max(FLOOR_PCT);
    let xs = entries.iter().map(|e| e.bits_per_weight).chain(peers.iter().map(|p| p.bits_per_weight));
    let ys = entries.iter().map(|e| y(e.delta_pct)).chain(peers.iter().map(|p| y(p.delta_pct)));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let (y0, y1) = ys.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let root = SVGBackend::with_string(out, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d((x0 - 0.4).floor()..(x1 + 0.6).ceil(), (y0 / 1.6..y1 * 1.6).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("bits per weight (quantized linears: codes, scales, zero points)")
        .y_desc("perplexity increase over f32, % (log scale)")
        .y_label_formatter(&|v| if *v >= 1.0 { format!("{v:.0}") } else { format!("{v:.2}") })
        .draw()?;
    // One series per method, in order of first appearance.
    let mut methods: BTreeMap<usize, (String, Vec<&Entry>)> = BTreeMap::new();
    let mut index: Vec<String> = Vec::new();
    for e in entries {
        let m = e.series();
        let i = index.iter().position(|x| *x == m).unwrap_or_else(|| {
            index.push(m.clone());
            index.len() - 1
        });
        methods.entry(i).or_insert_with(|| (m, vec![])).1.push(e);
    }
    let label = ("sans-serif", 12).into_font();
    for (i, (method, mut points)) in methods {
        let color = Palette99::pick(i).to_rgba();
        points.sort_by(|a, b| a.bits_per_weight.total_cmp(&b.bits_per_weight));
        chart
            .draw_series(LineSeries::new(points.iter().map(|e| (e.bits_per_weight, y(e.delta_pct))), color.mix(0.5)))?;
        chart
            .draw_series(points.iter().map(|e| Circle::new((e.bits_per_weight, y(e.delta_pct)), 5, color.filled())))?
            .label(method)
            .legend(move |(x, y)| Circle::new((x, y), 5, color.filled()));
        chart.draw_series(points.iter().map(|e| {
            EmptyElement::at((e.bits_per_weight, y(e.delta_pct)))
                + Text::new(format!("{} {:+.1}%", e.name, e.delta_pct), (8, -6), label.clone())
        }))?;
    }
    if !peers.is_empty() {
        let grey = RGBColor(110, 110, 110);
        chart
            .draw_series(
                peers.iter().map(|p| TriangleMarker::new((p.bits_per_weight, y(p.delta_pct)), 6, grey.filled())),
            )?
            .label("peers (docs/peers.csv)")
            .legend(move |(x, y)| TriangleMarker::new((x, y), 6, grey.filled()));
        chart.draw_series(peers.iter().map(|p| {
            EmptyElement::at((p.bits_per_weight, y(p.delta_pct)))
                + Text::new(format!("{} {:+.1}%", p.name, p.delta_pct), (8, 6), label.clone().color(&grey))
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::merge::Setting;
    use super::*;

    fn entry(name: &str, method: &str, bits: f64, delta: f64) -> Entry {
        Entry {
            name: name.into(),
            method: Some(method.into()),
            format: None,
            bits_per_weight: bits,
            perplexity: 40.0,
            perplexity_stderr: 0.5,
            delta_pct: delta,
            kl: 0.1,
            top1: 0.8,
            setting: Setting { protocol: "llama.cpp".into(), ctx: 512, windows: 40, baseline_perplexity: 38.0 },
            source: "r.json".into(),
        }
    }

    #[test]
    fn the_plot_has_a_point_and_a_label_per_checkpoint_and_peer() {
        let entries = [
            entry("rtn-int4", "rtn", 4.17, 31.9),
            entry("gptq-int4", "gptq", 4.17, 19.2),
            entry("gptq-int8", "gptq", 8.02, -0.01),
        ];
        let peers = [Peer { name: "Q4_0+imatrix".into(), bits_per_weight: 4.5, delta_pct: 8.4, protocol: "x".into() }];
        let s = svg(&entries, &peers, "SmolLM2").unwrap();
        assert!(s.starts_with("<svg"), "{}", &s[..80.min(s.len())]);
        for text in ["rtn-int4 +31.9%", "gptq-int4 +19.2%", "gptq-int8 -0.0%", "Q4_0+imatrix +8.4%", "SmolLM2", "peers"]
        {
            assert!(s.contains(text), "missing {text:?}");
        }
        // 3 checkpoints + 3 legend circles (rtn, gptq... one per series) as circles.
        assert_eq!(s.matches("<circle").count(), 3 + 2, "a circle per point and per legend entry");
    }
}
