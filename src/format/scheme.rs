//! `QuantScheme`: what a quantized weight looks like, as a small `Copy` value.
//! Algorithms (RTN, GPTQ, AWQ) produce tensors in a scheme; formats store them.
//!
//! Integer convention (the one GPTQ's `quant.py` uses, and every format here can store):
//! unsigned codes `q` in `[0, 2^bits - 1]`, `w ≈ scale * (q - zero)`.
//! Symmetric schemes fix `zero = 2^(bits-1)` and `scale = 2·max|w| / (2^bits - 1)`;
//! asymmetric ones take `scale = (max - min) / (2^bits - 1)`, `zero = round(-min / scale)`.
//! Integer scales are rounded to f16 *before* codes are computed, so what is evaluated
//! in memory is exactly what a checkpoint with f16 scales stores.

use crate::error::{Error, Result};
use crate::format::ggml::encode as ggml_encode;
use crate::format::ggml::GgmlType;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NumberFormat {
    /// Unsigned integer codes of 2, 3, 4 or 8 bits.
    Int { bits: u8 },
    /// FP8 E4M3 "fn" variant (no infinities, max 448).
    Fp8E4M3,
    /// FP8 E5M2 (IEEE-like, max finite 57344).
    Fp8E5M2,
    /// A ggml block type (GGUF export): affine grids per sub-block
    /// ([`crate::format::ggml::encode`]), granularity `Group(sub_block)`.
    Ggml(GgmlType),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Granularity {
    /// One scale for the whole matrix.
    PerTensor,
    /// One scale per output row.
    PerChannel,
    /// One scale per output row and per run of N input columns; the last group of a
    /// row may be shorter when N does not divide the width.
    Group(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QuantScheme {
    pub format: NumberFormat,
    pub granularity: Granularity,
    pub symmetric: bool,
}

impl QuantScheme {
    /// Integer scheme, symmetric, per output channel. Refuses bits outside {2,3,4,8}.
    pub fn int(bits: u8) -> Result<Self> {
        if !matches!(bits, 2 | 3 | 4 | 8) {
            return Err(Error::option("--bits", format!("{bits} is not supported; use 2, 3, 4 or 8")));
        }
        Ok(Self { format: NumberFormat::Int { bits }, granularity: Granularity::PerChannel, symmetric: true })
    }

    pub fn fp8_e4m3() -> Self {
        Self { format: NumberFormat::Fp8E4M3, granularity: Granularity::PerChannel, symmetric: true }
    }

    pub fn fp8_e5m2() -> Self {
        Self { format: NumberFormat::Fp8E5M2, granularity: Granularity::PerChannel, symmetric: true }
    }

    /// Groups of `n` input columns. Refuses 0; FP8 takes only per-tensor/per-channel scales.
    pub fn group(mut self, n: usize) -> Result<Self> {
        if n == 0 {
            return Err(Error::option("--group-size", "0 is not a valid group size (use -1 for per-channel)"));
        }
        if self.is_fp8() {
            return Err(Error::option(
                "--group-size",
                format!("FP8 weights take per-tensor or per-channel scales, not groups of {n}"),
            ));
        }
        self.granularity = Granularity::Group(n);
        Ok(self)
    }

    pub fn per_channel(mut self) -> Self {
        self.granularity = Granularity::PerChannel;
        self
    }

    pub fn per_tensor(mut self) -> Self {
        self.granularity = Granularity::PerTensor;
        self
    }

    /// Asymmetric (zero point) integer scheme. FP8 is symmetric by construction.
    pub fn asymmetric(mut self) -> Result<Self> {
        if self.is_fp8() {
            return Err(Error::option(
                "--asym",
                "FP8 weights are symmetric; asymmetric FP8 is not a scheme any format stores",
            ));
        }
        self.symmetric = false;
        Ok(self)
    }

    pub fn symmetric(mut self) -> Self {
        self.symmetric = true;
        self
    }

    /// A ggml block type (refused where it is not writable).
    pub fn ggml(ty: GgmlType) -> Result<Self> {
        if !ggml_encode::is_writable(ty) {
            let names: Vec<&str> = ggml_encode::WRITABLE.iter().map(|t| t.name()).collect();
            return Err(Error::option(
                "--scheme",
                format!("{ty} is not a type this tool writes ({})", names.join(", ")),
            ));
        }
        Ok(Self {
            format: NumberFormat::Ggml(ty),
            granularity: Granularity::Group(ggml_encode::sub_block(ty)),
            symmetric: ggml_encode::is_symmetric(ty),
        })
    }

    pub fn ggml_type(&self) -> Option<GgmlType> {
        match self.format {
            NumberFormat::Ggml(t) => Some(t),
            _ => None,
        }
    }

    pub fn is_fp8(&self) -> bool {
        matches!(self.format, NumberFormat::Fp8E4M3 | NumberFormat::Fp8E5M2)
    }

    /// Bits per stored code (8 for FP8).
    pub fn bits(&self) -> u8 {
        match self.format {
            NumberFormat::Int { bits } => bits,
            NumberFormat::Ggml(t) => (ggml_encode::maxq(t) + 1).trailing_zeros() as u8,
            _ => 8,
        }
    }

    /// Largest integer code, `2^bits - 1`.
    pub fn maxq(&self) -> u32 {
        (1u32 << self.bits()) - 1
    }

    /// Number of scale groups along an input row of `cols` columns.
    pub fn groups_per_row(&self, cols: usize) -> usize {
        match self.granularity {
            Granularity::PerTensor | Granularity::PerChannel => 1,
            Granularity::Group(n) => cols.div_ceil(n),
        }
    }

    /// Group width in columns (`cols` for per-tensor and per-channel).
    pub fn group_width(&self, cols: usize) -> usize {
        match self.granularity {
            Granularity::Group(n) => n,
            _ => cols.max(1),
        }
    }

    /// Affine parameters for a group whose values span `[min, max]`
    /// (the range is first widened to include 0, as every integer format here does).
    /// A group of zeros gets scale 1 so that codes and dequantization stay finite.
    pub fn int_params(&self, min: f32, max: f32) -> IntParams {
        let maxq = self.maxq() as f32;
        let (min, max) = (min.min(0.0), max.max(0.0));
        if self.symmetric {
            let amax = (-min).max(max);
            let scale = f16_round(2.0 * amax / maxq);
            let zero = ((self.maxq() + 1) / 2) as u8;
            if !(scale > 0.0) || !scale.is_finite() {
                return IntParams { scale: 1.0, zero };
            }
            IntParams { scale, zero }
        } else {
            let scale = f16_round((max - min) / maxq);
            if !(scale > 0.0) || !scale.is_finite() {
                return IntParams { scale: 1.0, zero: ((self.maxq() + 1) / 2) as u8 };
            }
            let zero = (-min / scale).round().clamp(0.0, maxq) as u8;
            if zero == 0 {
                // A group with nothing below zero. The gptq format stores `zero - 1` and
                // cannot hold 0 (AutoGPTQ writes -1 and corrupts the neighbouring
                // fields), so such groups use zero 1 and the remaining `maxq - 1` steps.
                let scale = f16_round(max / (maxq - 1.0));
                if !(scale > 0.0) || !scale.is_finite() {
                    return IntParams { scale: 1.0, zero: ((self.maxq() + 1) / 2) as u8 };
                }
                return IntParams { scale, zero: 1 };
            }
            IntParams { scale, zero }
        }
    }
}

impl std::fmt::Display for QuantScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fmt = match self.format {
            NumberFormat::Int { bits } => format!("int{bits}"),
            NumberFormat::Fp8E4M3 => "fp8-e4m3".into(),
            NumberFormat::Fp8E5M2 => "fp8-e5m2".into(),
            NumberFormat::Ggml(t) => return f.write_str(&t.name().to_lowercase()),
        };
        let gran = match self.granularity {
            Granularity::PerTensor => "tensor".to_string(),
            Granularity::PerChannel => "channel".to_string(),
            Granularity::Group(n) => format!("g{n}"),
        };
        let sym = if self.is_fp8() {
            ""
        } else if self.symmetric {
            "-sym"
        } else {
            "-asym"
        };
        write!(f, "{fmt}-{gran}{sym}")
    }
}

/// `w ≈ scale * (q - zero)` for one integer group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IntParams {
    pub scale: f32,
    pub zero: u8,
}

impl IntParams {
    /// Nearest code in `[0, maxq]` (ties away from zero, as `f32::round`).
    #[inline]
    pub fn quantize(&self, w: f32, maxq: u32) -> u8 {
        ((w / self.scale).round() + self.zero as f32).clamp(0.0, maxq as f32) as u8
    }

    #[inline]
    pub fn dequantize(&self, q: u8) -> f32 {
        self.scale * (q as f32 - self.zero as f32)
    }
}

/// Round an f32 to the nearest f16-representable value (kept as f32).
#[inline]
pub fn f16_round(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_schemes_are_refused_with_reason() {
        assert!(QuantScheme::int(5).unwrap_err().to_string().contains("5"));
        assert!(QuantScheme::int(4).unwrap().group(0).is_err());
        assert!(QuantScheme::fp8_e4m3().group(128).is_err());
        assert!(QuantScheme::fp8_e4m3().asymmetric().is_err());
    }

    #[test]
    fn zero_group_gets_valid_scale() {
        let s = QuantScheme::int(4).unwrap().asymmetric().unwrap();
        let p = s.int_params(0.0, 0.0);
        assert!(p.scale > 0.0 && p.scale.is_finite());
        assert_eq!(p.dequantize(p.quantize(0.0, s.maxq())), 0.0);
    }

    #[test]
    fn asymmetric_zero_point_is_never_zero() {
        let s = QuantScheme::int(4).unwrap().asymmetric().unwrap();
        let p = s.int_params(0.5, 3.0);
        assert_eq!(p.zero, 1);
        assert_eq!(p.dequantize(p.quantize(3.0, 15)), p.scale * 14.0);
        assert!((p.dequantize(p.quantize(3.0, 15)) - 3.0).abs() <= p.scale / 2.0);
        let p = s.int_params(-1.0, 3.0);
        assert!(p.zero >= 1);
    }

    #[test]
    fn symmetric_grid_matches_gptq_convention() {
        let s = QuantScheme::int(4).unwrap();
        let p = s.int_params(-1.5, 0.75);
        assert_eq!(p.zero, 8);
        assert_eq!(p.scale, f16_round(3.0 / 15.0));
        // -1.5 / f16(0.2) = -7.502 rounds to -8: code 0.
        assert_eq!(p.quantize(-1.5, 15), 0);
        assert_eq!(s.groups_per_row(130), 1);
        assert_eq!(s.group(64).unwrap().groups_per_row(130), 3);
    }
}
