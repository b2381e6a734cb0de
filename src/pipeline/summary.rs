//! The table printed at the end of a run: per kind of linear (`self_attn.q_proj`, ...)
//! its size and its error against RTN's of the same weights, and where the time went.

use super::driver::Timings;
use super::progress::clock;
use super::LayerReport;
use std::collections::BTreeMap;

/// Median of `v` (the lower middle for an even count; 0 for none).
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

/// Stored bits per weight of `layers` together (each weighted by its weight count).
pub fn bits_per_weight<'a>(layers: impl IntoIterator<Item = &'a LayerReport>) -> f64 {
    let (bits, weights) = layers.into_iter().fold((0.0, 0.0), |(b, w), l| {
        let n = (l.shape[0] * l.shape[1]) as f64;
        (b + l.bits_per_weight * n, w + n)
    });
    bits / f64::max(weights, 1.0)
}

/// `model.layers.3.self_attn.q_proj` -> (`self_attn.q_proj`, Some(3)).
fn kind_and_block(name: &str) -> (String, Option<usize>) {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["model", "layers", b, rest @ ..] if !rest.is_empty() => (rest.join("."), b.parse().ok()),
        _ => (name.to_string(), None),
    }
}

/// The summary table of `layers` and `timings` (`seconds`: the whole run's wall time).
pub fn table(layers: &[LayerReport], timings: &Timings, seconds: f64) -> String {
    let mut kinds: BTreeMap<String, Vec<&LayerReport>> = BTreeMap::new();
    let mut order = Vec::new();
    for l in layers {
        let (kind, _) = kind_and_block(&l.name);
        if !kinds.contains_key(&kind) {
            order.push(kind.clone());
        }
        kinds.entry(kind).or_default().push(l);
    }
    let metric = match layers.first().map(|l| l.error_metric) {
        Some("output") => "output error on the calibration inputs",
        _ => "weight error",
    };
    let ratio = |l: &LayerReport| l.error / l.rtn_error.max(f64::MIN_POSITIVE);
    let mut s = format!(
        "{:<22} {:>5} {:>7} {:>11} {:>11} {:>9} {:>15} {:>9}\n",
        "linear", "count", "bits/w", "error", "RTN's", "x RTN", "worst x RTN", "time"
    );
    let row = |s: &mut String, name: &str, ls: &[&LayerReport]| {
        let bits = bits_per_weight(ls.iter().copied());
        let worst = ls.iter().max_by(|a, b| ratio(a).total_cmp(&ratio(b))).expect("non-empty");
        let at = match kind_and_block(&worst.name).1 {
            Some(b) => format!(" (blk {b})"),
            None => String::new(),
        };
        *s += &format!(
            "{:<22} {:>5} {:>7.3} {:>11.5} {:>11.5} {:>9.3} {:>15} {:>9}\n",
            name,
            ls.len(),
            bits,
            median(ls.iter().map(|l| l.error).collect()),
            median(ls.iter().map(|l| l.rtn_error).collect()),
            median(ls.iter().map(|l| ratio(l)).collect()),
            format!("{:.3}{at}", ratio(worst)),
            clock(ls.iter().map(|l| l.seconds).sum()),
        );
    };
    for k in &order {
        row(&mut s, k, &kinds[k]);
    }
    if kinds.len() > 1 {
        let all: Vec<&LayerReport> = layers.iter().collect();
        row(&mut s, "all", &all);
    }
    let t = timings;
    let other = seconds - (t.load + t.forward + t.statistics + t.transform + t.quantize);
    s += &format!(
        "columns: error = relative {metric}, medians over blocks; x RTN below 1 beats rounding\n\
         time: load {}, forward {}, statistics {}, transforms {}, quantize {}, tokenize/write/other {}; total {}\n",
        clock(t.load),
        clock(t.forward),
        clock(t.statistics),
        clock(t.transform),
        clock(t.quantize),
        clock(other.max(0.0)),
        clock(seconds)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, error: f64, rtn_error: f64) -> LayerReport {
        LayerReport {
            name: name.into(),
            shape: [4, 8],
            loss: 0.0,
            damp: None,
            damp_retries: 0,
            refit: None,
            seconds: 1.0,
            bits_per_weight: 4.5,
            error,
            rtn_error,
            error_metric: "output",
        }
    }

    #[test]
    fn rows_per_kind_with_medians_and_the_worst_block() {
        let layers = [
            layer("model.layers.0.self_attn.q_proj", 0.1, 0.2),
            layer("model.layers.1.self_attn.q_proj", 0.3, 0.4),
            layer("model.layers.2.self_attn.q_proj", 0.2, 0.2),
            layer("model.layers.0.mlp.down_proj", 0.5, 1.0),
        ];
        let t = table(&layers, &Timings { quantize: 4.0, ..Default::default() }, 10.0);
        let q = t.lines().find(|l| l.starts_with("self_attn.q_proj")).expect(&t);
        assert!(q.contains(" 3 ") && q.contains("4.500"), "{q}");
        assert!(q.contains("0.20000") && q.contains("0.750"), "median error 0.2, median ratio 0.75: {q}");
        assert!(q.contains("1.000 (blk 2)"), "worst ratio in block 2: {q}");
        assert!(t.lines().any(|l| l.starts_with("mlp.down_proj")), "{t}");
        assert!(t.lines().any(|l| l.starts_with("all ") && l.contains(" 4 ")), "{t}");
        assert!(t.contains("quantize 4s") && t.contains("other 6s") && t.contains("total 10s"), "{t}");
        assert!(t.contains("output error"), "{t}");
    }
}
