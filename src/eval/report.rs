//! Human-readable tables for evaluation reports (the JSON is serde of the same structs).

use super::{ComparisonReport, PerplexityReport};

pub fn perplexity_table(r: &PerplexityReport) -> String {
    format!(
        "protocol   ctx  windows  scored           perplexity  tokens/s\n{:<9} {:>4} {:>8} {:>7} {:>11.4} ± {:<6.4} {:>9.1}\n",
        r.protocol.name(),
        r.ctx,
        r.windows,
        r.tokens_scored,
        r.perplexity,
        r.perplexity_stderr,
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

/// One row per model: `(name, comparison, size)`.
pub fn comparison_rows(rows: &[(String, &ComparisonReport, &SizeReport)]) -> String {
    let Some((_, first, _)) = rows.first() else { return String::new() };
    let b = &first.baseline;
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(5).max(8);
    let mut s =
        format!("protocol {} ctx {} windows {} scored {}\n", b.protocol.name(), b.ctx, b.windows, b.tokens_scored);
    s += &format!(
        "{:<w$}  {:>19}  {:>8}  {:>20}  {:>9}  {:>8}  {:>15}  {:>6}  {:>12}  {:>8}\n",
        "model",
        "perplexity",
        "delta",
        "KL(base||q)",
        "KL median",
        "KL 99%",
        "top-1 agree",
        "bits/w",
        "bytes",
        "tokens/s"
    );
    s += &format!(
        "{:<w$}  {:>10.4} ± {:<6.4}  {:>8}  {:>20}  {:>9}  {:>8}  {:>15}  {:>6}  {:>12}  {:>8.1}\n",
        "baseline",
        b.perplexity,
        b.perplexity_stderr,
        "-",
        "-",
        "-",
        "-",
        "-",
        "32",
        rows[0].2.baseline_bytes_on_disk,
        b.tokens_per_second
    );
    for (name, c, z) in rows {
        s += &format!(
            "{:<w$}  {:>10.4} ± {:<6.4}  {:>+7.2}%  {:>9.5} ± {:<8.5}  {:>9.5}  {:>8.4}  {:>6.2}% ± {:<5.2}  {:>6.3}  {:>12}  {:>8.1}\n",
            name,
            c.quantized.perplexity,
            c.quantized.perplexity_stderr,
            c.perplexity_delta_pct,
            c.mean_kl_divergence,
            c.kl_stderr,
            c.kl_median,
            c.kl_p99,
            c.top1_agreement * 100.0,
            c.top1_stderr * 100.0,
            z.bits_per_weight,
            z.bytes_on_disk,
            c.quantized.tokens_per_second
        );
    }
    s
}
