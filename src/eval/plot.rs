//! The SVG plot of `quantize report`: perplexity increase (log scale) against bits per
//! weight, one point per checkpoint, a colour per method, peers as grey triangles. Drawn with plotters' SVG backend (no fonts or system libraries needed).

use super::merge::{Entry, Peer};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Increases below this (%) are drawn at it: the log axis has no zero.
pub const FLOOR_PCT: f64 = 0.05;

/// ColorBrewer's Set1 without its yellow (unreadable on white), one per method.
const SERIES_COLORS: [RGBColor; 7] = [
    RGBColor(228, 26, 28),
    RGBColor(77, 175, 74),
    RGBColor(255, 127, 0),
    RGBColor(55, 126, 184),
    RGBColor(152, 78, 163),
    RGBColor(166, 86, 40),
    RGBColor(247, 129, 191),
];

/// Pixels between two label lines.
const LINE_PX: i32 = 13;

/// A point's label: where it is drawn (`y`, in pixels) may move off its point to clear others.
struct Label {
    at: (f64, f64),
    point: (i32, i32),
    y: i32,
    text: String,
    /// Drawn to the left of the point.
    left: bool,
}

impl Label {
    fn new(at: (f64, f64), point: (i32, i32), text: String, left: bool) -> Self {
        Self { at, point, y: point.1, text, left }
    }
}

/// A label's horizontal extent in pixels (12 px sans-serif: about 6.5 px a character).
fn extent(l: &Label) -> (i32, i32) {
    let w = (l.text.chars().count() as f64 * 6.5) as i32;
    if l.left {
        (l.point.0 - 9 - w, l.point.0 - 9)
    } else {
        (l.point.0 + 9, l.point.0 + 9 + w)
    }
}

/// Move labels to the nearest line where no two whose extents meet print over each other
/// (greedy, top to bottom).
fn spread(labels: &mut [Label]) {
    labels.sort_by_key(|l| (l.point.1, l.point.0));
    for i in 0..labels.len() {
        let (a0, a1) = extent(&labels[i]);
        let free = |y: i32| {
            !labels[..i].iter().any(|o| {
                let (b0, b1) = extent(o);
                a0 < b1 && b0 < a1 && (o.y - y).abs() < LINE_PX
            })
        };
        // The nearest free line, below first, then above.
        let p = labels[i].point.1;
        let y = (0..).flat_map(|d| [p + d, p - d]).find(|&y| free(y)).expect("some line is free");
        labels[i].y = y;
    }
}

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
    let root = SVGBackend::with_string(out, (1000, 760)).into_drawing_area();
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
    let mut methods: Vec<(String, Vec<&Entry>)> = Vec::new();
    for e in entries {
        let m = e.series();
        match methods.iter_mut().find(|(name, _)| *name == m) {
            Some((_, points)) => points.push(e),
            None => methods.push((m, vec![e])),
        }
    }
    let label = ("sans-serif", 12).into_font();
    // Labels: ours to the right of their point, peers' to the left; placed in pixels so
    // that near points do not print over each other.
    let mut labels: Vec<Label> = Vec::new();
    for (i, (method, points)) in methods.into_iter().enumerate() {
        let color = SERIES_COLORS[i % SERIES_COLORS.len()];
        chart
            .draw_series(points.iter().map(|e| Circle::new((e.bits_per_weight, y(e.delta_pct)), 5, color.filled())))?
            .label(method)
            .legend(move |(x, y)| Circle::new((x, y), 5, color.filled()));
        for e in points {
            let at = (e.bits_per_weight, y(e.delta_pct));
            labels.push(Label::new(at, chart.backend_coord(&at), format!("{} {:+.1}%", e.name, e.delta_pct), false));
        }
    }
    let grey = RGBColor(110, 110, 110);
    if !peers.is_empty() {
        chart
            .draw_series(
                peers.iter().map(|p| TriangleMarker::new((p.bits_per_weight, y(p.delta_pct)), 6, grey.filled())),
            )?
            .label("peers (docs/peers.csv)")
            .legend(move |(x, y)| TriangleMarker::new((x, y), 6, grey.filled()));
        for p in peers {
            let at = (p.bits_per_weight, y(p.delta_pct));
            labels.push(Label::new(at, chart.backend_coord(&at), format!("{} {:+.1}%", p.name, p.delta_pct), true));
        }
    }
    spread(&mut labels);
    for l in &labels {
        let (style, dx, anchor) = match l.left {
            false => (label.clone().color(&BLACK), 9, Pos::new(HPos::Left, VPos::Center)),
            true => (label.clone().color(&grey), -9, Pos::new(HPos::Right, VPos::Center)),
        };
        let text = Text::new(l.text.clone(), (dx, l.y - l.point.1), style.pos(anchor));
        chart.draw_series(std::iter::once(EmptyElement::at(l.at) + text))?;
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
        assert_eq!(s.matches("<circle").count(), 3 + 2, "a circle per point and per legend entry (rtn, gptq)");
    }

    #[test]
    fn labels_of_near_points_do_not_overlap() {
        let text = "a label of twenty ch".to_string(); // 130 px
        let mut labels: Vec<Label> = [(100, 50), (110, 52), (400, 51), (105, 200)]
            .iter()
            .map(|&p| Label::new((0.0, 0.0), p, text.clone(), false))
            .collect();
        labels.push(Label::new((0.0, 0.0), (100, 50), text.clone(), true));
        spread(&mut labels);
        let y = |x: i32, left: bool| labels.iter().find(|l| l.point.0 == x && l.left == left).unwrap().y;
        assert_eq!(y(100, false), 50);
        assert_eq!(y(110, false), 50 + LINE_PX, "pushed below its neighbour");
        assert_eq!(y(400, false), 51, "far apart: stays");
        assert_eq!(y(105, false), 200, "well below: stays");
        assert_eq!(y(100, true), 50, "the other side does not clash");
    }
}
