//! FP8 E4M3 ("fn": no infinities, max 448) and E5M2 (max 57344) conversion, through
//! the `float8` crate: round-to-nearest-even, saturating to the largest finite value.

use super::scheme::NumberFormat;
use std::sync::OnceLock;

/// Largest finite value of an FP8 format.
pub fn fp8_max(format: NumberFormat) -> f32 {
    match format {
        NumberFormat::Fp8E4M3 => 448.0,
        NumberFormat::Fp8E5M2 => 57344.0,
        NumberFormat::Int { .. } | NumberFormat::Ggml(_) => panic!("fp8_max of an integer format"),
    }
}

/// f32 -> FP8 byte, round-to-nearest-even, saturating (NaN stays NaN).
pub fn encode(format: NumberFormat, x: f32) -> u8 {
    match format {
        NumberFormat::Fp8E4M3 => float8::F8E4M3::from_f32(x.clamp(-448.0, 448.0)).to_bits(),
        NumberFormat::Fp8E5M2 => float8::F8E5M2::from_f32(x.clamp(-57344.0, 57344.0)).to_bits(),
        NumberFormat::Int { .. } | NumberFormat::Ggml(_) => panic!("fp8 encode of an integer format"),
    }
}

/// FP8 byte -> f32, for all 256 codes.
pub fn decode_table(format: NumberFormat) -> &'static [f32; 256] {
    static E4M3: OnceLock<[f32; 256]> = OnceLock::new();
    static E5M2: OnceLock<[f32; 256]> = OnceLock::new();
    match format {
        NumberFormat::Fp8E4M3 => {
            E4M3.get_or_init(|| std::array::from_fn(|b| float8::F8E4M3::from_bits(b as u8).to_f32()))
        }
        NumberFormat::Fp8E5M2 => {
            E5M2.get_or_init(|| std::array::from_fn(|b| float8::F8E5M2::from_bits(b as u8).to_f32()))
        }
        NumberFormat::Int { .. } | NumberFormat::Ggml(_) => panic!("fp8 decode table of an integer format"),
    }
}

#[cfg(test)]
mod tests {
    //! Exhaustive checks of the `float8` crate over all 256 codes of both formats, against
    //! an independent bit-level decoder and a brute-force nearest-value encoder.
    use super::*;

    const FORMATS: [NumberFormat; 2] = [NumberFormat::Fp8E4M3, NumberFormat::Fp8E5M2];

    /// Reference decoder from the bit layout (OCP FP8 spec; E4M3 is the "fn" variant).
    fn reference_decode(format: NumberFormat, b: u8) -> f32 {
        let (ebits, mbits, bias) = match format {
            NumberFormat::Fp8E4M3 => (4u32, 3u32, 7i32),
            _ => (5, 2, 15),
        };
        let sign = if b & 0x80 != 0 { -1.0f64 } else { 1.0 };
        let e = ((b as u32) >> mbits) & ((1 << ebits) - 1);
        let m = (b as u32) & ((1 << mbits) - 1);
        let emax = (1 << ebits) - 1;
        let v = match format {
            NumberFormat::Fp8E4M3 if e == emax && m == (1 << mbits) - 1 => return f32::NAN,
            NumberFormat::Fp8E5M2 if e == emax => return if m == 0 { (sign * f64::INFINITY) as f32 } else { f32::NAN },
            _ if e == 0 => m as f64 / (1 << mbits) as f64 * 2f64.powi(1 - bias),
            _ => (1.0 + m as f64 / (1 << mbits) as f64) * 2f64.powi(e as i32 - bias),
        };
        (sign * v) as f32
    }

    /// All finite non-negative values with their codes, ascending (+0 first).
    fn positive_finite(format: NumberFormat) -> Vec<(f32, u8)> {
        let t = decode_table(format);
        let mut v: Vec<(f32, u8)> = (0u8..0x80).map(|b| (t[b as usize], b)).filter(|(x, _)| x.is_finite()).collect();
        v.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        v
    }

    #[test]
    fn decode_table_matches_bit_layout_for_all_codes() {
        for f in FORMATS {
            let t = decode_table(f);
            for b in 0..=255u8 {
                let (got, want) = (t[b as usize], reference_decode(f, b));
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "{f:?} code {b:#04x}: {got} vs {want}"
                );
            }
            assert_eq!(positive_finite(f).last().unwrap().0, fp8_max(f));
        }
        assert_eq!(decode_table(NumberFormat::Fp8E4M3)[0x7E], 448.0);
        assert_eq!(decode_table(NumberFormat::Fp8E4M3)[0x01], 2f32.powi(-9));
        assert_eq!(decode_table(NumberFormat::Fp8E5M2)[0x7B], 57344.0);
        assert_eq!(decode_table(NumberFormat::Fp8E5M2)[0x01], 2f32.powi(-16));
    }

    #[test]
    fn every_finite_code_round_trips() {
        for f in FORMATS {
            let t = decode_table(f);
            for b in 0..=255u8 {
                let x = t[b as usize];
                if x.is_finite() {
                    assert_eq!(encode(f, x), b, "{f:?} code {b:#04x} = {x}");
                }
            }
        }
    }

    #[test]
    fn midpoints_round_to_even_and_neighbours_to_nearest() {
        for f in FORMATS {
            let v = positive_finite(f);
            for w in v.windows(2) {
                let ((a, ca), (b, cb)) = (w[0], w[1]);
                let mid = (a + b) / 2.0; // exact: both are short binary fractions
                let even = if ca & 1 == 0 { ca } else { cb };
                assert_eq!(encode(f, mid), even, "{f:?} midpoint of {a} and {b}");
                assert_eq!(encode(f, -mid), even | 0x80, "{f:?} midpoint of -{a} and -{b}");
                let below = f32::from_bits(mid.to_bits() - 1);
                let above = f32::from_bits(mid.to_bits() + 1);
                assert_eq!(encode(f, below), ca, "{f:?} just below midpoint of {a} and {b}");
                assert_eq!(encode(f, above), cb, "{f:?} just above midpoint of {a} and {b}");
            }
        }
    }

    #[test]
    fn huge_values_and_infinities_saturate_nan_stays_nan() {
        for f in FORMATS {
            let (max, t) = (fp8_max(f), decode_table(f));
            for x in [max * 1.01, max * 2.0, 1e30, f32::MAX, f32::INFINITY] {
                assert_eq!(t[encode(f, x) as usize], max, "{f:?} {x}");
                assert_eq!(t[encode(f, -x) as usize], -max, "{f:?} -{x}");
            }
            // NaN is not a weight (RTN refuses it before encoding); documented: it encodes to
            // a NaN code (E4M3: 0x7F / 0xFF, E5M2: an exponent-31 code with non-zero mantissa).
            assert!(t[encode(f, f32::NAN) as usize].is_nan(), "{f:?}");
            // Below half the smallest subnormal: zero; exactly half: ties to even (zero).
            let min_sub = positive_finite(f)[1].0;
            assert_eq!(encode(f, min_sub / 2.0), 0);
            assert_eq!(encode(f, min_sub / 4.0), 0);
            assert_eq!(encode(f, -min_sub / 4.0), 0x80);
            assert_eq!(encode(f, f32::from_bits((min_sub / 2.0).to_bits() + 1)), 1);
        }
    }

    #[test]
    fn encode_is_nearest_value_on_a_dense_sweep() {
        for f in FORMATS {
            let v = positive_finite(f);
            let t = decode_table(f);
            let max = fp8_max(f);
            let mut x = v[1].0 / 8.0;
            while x < max * 1.2 {
                let got = t[encode(f, x) as usize];
                let best = v.iter().map(|p| (p.0 - x.min(max)).abs()).fold(f32::INFINITY, f32::min);
                assert_eq!((got - x.min(max)).abs(), best, "{f:?} {x} -> {got}");
                x *= 1.0037;
            }
        }
    }
}
