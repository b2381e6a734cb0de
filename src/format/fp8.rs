//! FP8 E4M3 ("fn": no infinities, max 448) and E5M2 (max 57344) conversion, through
//! the `float8` crate: round-to-nearest-even, saturating to the largest finite value.

use super::scheme::NumberFormat;
use std::sync::OnceLock;

/// Largest finite value of an FP8 format.
pub fn fp8_max(format: NumberFormat) -> f32 {
    match format {
        NumberFormat::Fp8E4M3 => 448.0,
        NumberFormat::Fp8E5M2 => 57344.0,
        NumberFormat::Int { .. } => panic!("fp8_max of an integer format"),
    }
}

/// f32 -> FP8 byte, round-to-nearest-even, saturating (NaN stays NaN).
pub fn encode(format: NumberFormat, x: f32) -> u8 {
    match format {
        NumberFormat::Fp8E4M3 => float8::F8E4M3::from_f32(x.clamp(-448.0, 448.0)).to_bits(),
        NumberFormat::Fp8E5M2 => float8::F8E5M2::from_f32(x.clamp(-57344.0, 57344.0)).to_bits(),
        NumberFormat::Int { .. } => panic!("fp8 encode of an integer format"),
    }
}

/// FP8 byte -> f32, for all 256 codes.
pub fn decode_table(format: NumberFormat) -> &'static [f32; 256] {
    static E4M3: OnceLock<[f32; 256]> = OnceLock::new();
    static E5M2: OnceLock<[f32; 256]> = OnceLock::new();
    match format {
        NumberFormat::Fp8E4M3 => E4M3.get_or_init(|| std::array::from_fn(|b| float8::F8E4M3::from_bits(b as u8).to_f32())),
        NumberFormat::Fp8E5M2 => E5M2.get_or_init(|| std::array::from_fn(|b| float8::F8E5M2::from_bits(b as u8).to_f32())),
        NumberFormat::Int { .. } => panic!("fp8 decode table of an integer format"),
    }
}
