//! Human-readable tables for evaluation reports (the JSON is serde of the same structs).

use super::{ComparisonReport, PerplexityReport};

pub fn perplexity_table(r: &PerplexityReport) -> String {
    format!(
        "protocol   ctx  windows  scored  perplexity  tokens/s\n{:<9} {:>4} {:>8} {:>7} {:>11.4} {:>9.1}\n",
        r.protocol.name(),
        r.ctx,
        r.windows,
        r.tokens_scored,
        r.perplexity,
        r.tokens_per_second
    )
}

/// Size of the quantized model, for the comparison table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SizeReport {
    /// Bits per weight over the quantized block linears (codes, scales, zeros, g_idx).
    pub bits_per_weight: f64,
    pub bytes_on_disk: u64,
    pub baseline_bytes_on_disk: u64,
}

pub fn comparison_table(c: &ComparisonReport, size: Option<&SizeReport>) -> String {
    let mut s = format!("protocol {} ctx {} windows {} scored {}\n", c.baseline.protocol.name(), c.baseline.ctx, c.baseline.windows, c.baseline.tokens_scored);
    s += "model      perplexity    delta     KL(base||q)  top-1 agree  tokens/s\n";
    s += &format!("baseline  {:>11.4}        -             -            -  {:>8.1}\n", c.baseline.perplexity, c.baseline.tokens_per_second);
    s += &format!(
        "quantized {:>11.4} {:>+7.2}%  {:>12.5}  {:>10.2}%  {:>8.1}\n",
        c.quantized.perplexity,
        c.perplexity_delta_pct,
        c.mean_kl_divergence,
        c.top1_agreement * 100.0,
        c.quantized.tokens_per_second
    );
    if let Some(z) = size {
        s += &format!("bits/weight (block linears) {:.3}; bytes on disk {} (baseline {})\n", z.bits_per_weight, z.bytes_on_disk, z.baseline_bytes_on_disk);
    }
    s
}
