//! What each checkpoint format's loaders accept, checked for every linear before any work
//! (a refusal after a 30-minute run helps nobody). Sources of each rule:
//!
//! - **Groups divide the width** (gptq, awq, compressed-tensors): compressed-tensors'
//!   `_process_quantization` raises "tensor column shape must be divisible by the given
//!   group_size"; vLLM's GPTQ/Marlin/Machete kernels and AutoAWQ's GEMM take whole groups
//!   only. This tool reads a ragged last group, so `partial` keeps one on request.
//! - **gptq**: integer codes of 2, 3, 4 or 8 bits; `in` and `out` multiples of 32
//!   (AutoGPTQ's `[in // 32 · b, out]` / `[G, out // 32 · b]` shapes).
//! - **awq**: 4-bit groups, `out` a multiple of 8 ([`super::awq::check_shape`]), one scheme
//!   for every linear (AutoAWQ's config has no per-module entries), no act-order.
//! - **compressed-tensors**: any integer width up to 8 bits packs; FP8 per channel or
//!   tensor.
//! - **gguf**: each block type's width ([`crate::quant::ggml::check_width`]).

use super::{awq, gptq, Granularity, NumberFormat, QuantScheme};
use crate::error::{Error, Result};
use crate::io::checkpoint::CheckpointFormat;

/// Group sizes among the usual ones (32 .. 256, powers of two, what the kernels take) that
/// divide `cols`, largest first.
pub fn groups_that_fit(cols: usize) -> Vec<usize> {
    [256, 128, 64, 32].into_iter().filter(|g| cols.is_multiple_of(*g)).collect()
}

/// Whether `format`'s loaders accept linear `name` (`[rows = out, cols = in]`) in `scheme`.
/// `partial_groups`: a group that does not divide `cols` was asked for (`group_fallback =
/// "partial"`), so only this tool will read the checkpoint.
pub fn check_linear(
    format: CheckpointFormat,
    name: &str,
    scheme: QuantScheme,
    rows: usize,
    cols: usize,
    partial_groups: bool,
) -> Result<()> {
    if let Some(ty) = scheme.ggml_type() {
        return crate::quant::ggml::check_width(name, ty, cols);
    }
    if let Granularity::Group(g) = scheme.granularity {
        if g > cols {
            return Err(Error::tensor(
                name,
                format!("group size {g} is wider than its {cols} input columns (--group-size, scheme.group_size)"),
            ));
        }
        if !cols.is_multiple_of(g) && (!partial_groups || format == CheckpointFormat::Awq) {
            return Err(ragged(format, name, g, cols));
        }
    }
    match format {
        CheckpointFormat::Gptq => {
            if !matches!(scheme.format, NumberFormat::Int { bits: 2 | 3 | 4 | 8 }) {
                return Err(Error::tensor(
                    name,
                    format!(
                        "gptq stores 2, 3, 4 or 8-bit integer codes, not {scheme} (use --format compressed-tensors)"
                    ),
                ));
            }
            let m = gptq::GPTQ_DIM_MULTIPLE;
            if !rows.is_multiple_of(m) || !cols.is_multiple_of(m) {
                return Err(Error::tensor(
                    name,
                    format!("gptq needs both dimensions multiples of {m}, this linear is {rows} x {cols} (use --format compressed-tensors)"),
                ));
            }
            Ok(())
        }
        CheckpointFormat::Awq => awq::check_shape(name, scheme, rows, cols).map(|_| ()),
        CheckpointFormat::CompressedTensors | CheckpointFormat::Gguf => Ok(()),
    }
}

/// The error for a group that does not divide the width, with what would fit.
fn ragged(format: CheckpointFormat, name: &str, g: usize, cols: usize) -> Error {
    let fits = groups_that_fit(cols);
    let fits_text = match fits.iter().find(|&&f| f < g) {
        Some(f) => format!(
            "group sizes that divide {cols}: {}; --group-fallback {f} (recipe: group_fallback = {f}) quantizes such \
             linears at group {f}, written as the format's per-module override",
            fits.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
        ),
        None => format!("no group of 32 to 256 divides {cols}; --group-fallback per-channel (recipe: group_fallback = \"per-channel\")"),
    };
    let partial = if format == CheckpointFormat::Awq {
        ""
    } else {
        "; --group-fallback partial keeps the ragged last group, which only this tool reads"
    };
    Error::tensor(
        name,
        format!(
            "{cols} input columns are not a multiple of group size {g}: {} refuses a ragged last group ({fits_text}{partial})",
            match format {
                CheckpointFormat::CompressedTensors => "compressed-tensors (and vLLM)",
                CheckpointFormat::Awq => "AutoAWQ (and vLLM)",
                _ => "vLLM's GPTQ/Marlin kernels",
            }
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int4(g: usize) -> QuantScheme {
        QuantScheme::int(4).unwrap().group(g).unwrap()
    }

    #[test]
    fn groups_that_fit_are_the_kernel_sizes_dividing_the_width() {
        assert_eq!(groups_that_fit(576), vec![64, 32]);
        assert_eq!(groups_that_fit(1536), vec![256, 128, 64, 32]);
        assert!(groups_that_fit(100).is_empty());
    }

    #[test]
    fn a_ragged_group_is_refused_by_every_safetensors_format_with_what_fits() {
        for f in [CheckpointFormat::Gptq, CheckpointFormat::CompressedTensors, CheckpointFormat::Awq] {
            let e = check_linear(f, "model.layers.0.self_attn.q_proj", int4(128), 576, 576, false).unwrap_err();
            let m = e.to_string();
            assert!(m.contains("q_proj") && m.contains("576") && m.contains("128"), "{m}");
            assert!(m.contains("--group-fallback 64"), "{m}");
        }
        // `partial` lets gptq and compressed-tensors keep it, never awq.
        assert!(check_linear(CheckpointFormat::Gptq, "x", int4(128), 576, 576, true).is_ok());
        assert!(check_linear(CheckpointFormat::CompressedTensors, "x", int4(128), 576, 576, true).is_ok());
        assert!(check_linear(CheckpointFormat::Awq, "x", int4(128), 576, 576, true).is_err());
        // Dividing groups pass.
        for f in [CheckpointFormat::Gptq, CheckpointFormat::CompressedTensors, CheckpointFormat::Awq] {
            assert!(check_linear(f, "x", int4(64), 576, 576, false).is_ok());
        }
        let e = check_linear(CheckpointFormat::Gptq, "x", int4(64), 576, 100, false).unwrap_err().to_string();
        assert!(e.contains("per-channel"), "{e}");
    }

    #[test]
    fn gptq_shapes_and_widths() {
        let pc = |b| QuantScheme::int(b).unwrap().per_channel();
        assert!(check_linear(CheckpointFormat::Gptq, "x", pc(3), 64, 64, false).is_ok());
        let e = check_linear(CheckpointFormat::Gptq, "x", pc(4), 48, 64, false).unwrap_err().to_string();
        assert!(e.contains("48 x 64"), "{e}");
        assert!(check_linear(CheckpointFormat::Gptq, "x", QuantScheme::fp8_e4m3(), 64, 64, false).is_err());
    }

    #[test]
    fn a_group_wider_than_the_linear_is_refused() {
        let e = check_linear(CheckpointFormat::CompressedTensors, "x", int4(128), 64, 64, true).unwrap_err();
        assert!(e.to_string().contains("wider"), "{e}");
    }
}
