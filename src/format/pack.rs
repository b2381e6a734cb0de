//! Packing of 2/3/4/8-bit codes into 32-bit words, and the raw tensors (name, dtype,
//! shape, little-endian bytes) that the on-disk layouts are made of.
//!
//! # Packing rules
//!
//! Both rules are little-endian and LSB first, and pad the last word with zero bits.
//!
//! - [`PackRule::Stream`] — GPTQ (AutoGPTQ `auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py`,
//!   `QuantLinear.pack`; the same loops in GPTQModel): the `n` codes along the packed
//!   dimension form one bit stream. Code `i` occupies stream bits `[i·b, (i+1)·b)`, and word
//!   `w` holds stream bits `[32·w, 32·w + 32)`. For `b ∈ {2, 4, 8}` a word holds exactly
//!   `32 / b` codes. For `b = 3`, 32 codes fill 3 words and two codes straddle a word
//!   boundary: code 10 is bits 30–31 of word 0 (its low 2 bits) plus bit 0 of word 1 (its high
//!   bit); code 21 is bit 31 of word 1 (low bit) plus bits 0–1 of word 2 (high 2 bits).
//!   Word count: `ceil(n·b / 32)`.
//! - [`PackRule::WordAligned`] — compressed-tensors (`compressed_tensors/compressors/
//!   quantized_compressors/pack_quantized.py`, `pack_to_int32`): `f = 32 / b` codes per word
//!   (16, 10, 8, 4 for b = 2, 3, 4, 8), code `i` in word `i / f` at bit `(i mod f)·b`; for
//!   `b = 3` the top 2 bits of every word are zero. Word count: `ceil(n / f)`.
//!
//! For `b ∈ {2, 4, 8}` both rules give identical words. Packing "along axis 0" of a
//! `[R, C]` matrix gives `[words(R), C]` (GPTQ `qweight` packs the input dimension this way,
//! from the transposed `[in, out]` codes); "along axis 1" gives `[R, words(C)]`.

use crate::error::{Error, Result};
use crate::format::{Granularity, NumberFormat, QuantizedTensor};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// How codes are laid out in 32-bit words (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackRule {
    /// One continuous LSB-first bit stream (GPTQ); 3-bit codes cross word boundaries.
    Stream,
    /// `32 / bits` codes per word, never crossing a word (compressed-tensors).
    WordAligned,
}

/// Which dimension of a row-major `[rows, cols]` matrix is packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// Pack along rows: `[rows, cols]` -> `[words(rows), cols]`.
    Rows,
    /// Pack along columns: `[rows, cols]` -> `[rows, words(cols)]`.
    Cols,
}

fn check_bits(bits: u8) {
    assert!(matches!(bits, 2 | 3 | 4 | 8), "packing of {bits}-bit codes is not defined");
}

/// Number of u32 words holding `n` codes of `bits` bits.
pub fn packed_words(n: usize, bits: u8, rule: PackRule) -> usize {
    check_bits(bits);
    match rule {
        PackRule::Stream => (n * bits as usize).div_ceil(32),
        PackRule::WordAligned => n.div_ceil(32 / bits as usize),
    }
}

/// Word index and bit offset of code `i`.
#[inline]
fn locate(i: usize, bits: u8, rule: PackRule) -> (usize, u32) {
    match rule {
        PackRule::Stream => {
            let bit = i * bits as usize;
            (bit / 32, (bit % 32) as u32)
        }
        PackRule::WordAligned => {
            let f = 32 / bits as usize;
            (i / f, ((i % f) * bits as usize) as u32)
        }
    }
}

/// OR code `q` into `words` (stride `stride` between consecutive words of one run).
#[inline]
fn put(words: &mut [u32], base: usize, stride: usize, i: usize, q: u8, bits: u8, rule: PackRule) {
    let (w, off) = locate(i, bits, rule);
    let q = q as u32;
    words[base + w * stride] |= q << off;
    if off + bits as u32 > 32 {
        words[base + (w + 1) * stride] |= q >> (32 - off);
    }
}

#[inline]
fn get(words: &[u32], base: usize, stride: usize, i: usize, bits: u8, rule: PackRule) -> u8 {
    let (w, off) = locate(i, bits, rule);
    let mut v = words[base + w * stride] >> off;
    if off + bits as u32 > 32 {
        v |= words[base + (w + 1) * stride] << (32 - off);
    }
    (v & ((1u32 << bits) - 1)) as u8
}

fn check_codes(codes: &[u8], bits: u8) {
    let maxq = (1u16 << bits) - 1;
    if let Some(i) = codes.iter().position(|&q| q as u16 > maxq) {
        panic!("code {} at index {i} does not fit in {bits} bits", codes[i]);
    }
}

/// Pack a run of codes. Panics if a code does not fit in `bits` (formats validate first).
pub fn pack(codes: &[u8], bits: u8, rule: PackRule) -> Vec<u32> {
    check_codes(codes, bits);
    let mut words = vec![0u32; packed_words(codes.len(), bits, rule)];
    for (i, &q) in codes.iter().enumerate() {
        put(&mut words, 0, 1, i, q, bits, rule);
    }
    words
}

/// Unpack the first `n` codes of a run; `None` when `words` is too short for `n` codes.
pub fn unpack(words: &[u32], bits: u8, n: usize, rule: PackRule) -> Option<Vec<u8>> {
    if words.len() < packed_words(n, bits, rule) {
        return None;
    }
    Some((0..n).map(|i| get(words, 0, 1, i, bits, rule)).collect())
}

/// Pack a row-major `[rows, cols]` code matrix along `axis`; returns the words (row-major)
/// and their shape.
pub fn pack_matrix(
    codes: &[u8],
    rows: usize,
    cols: usize,
    axis: Axis,
    bits: u8,
    rule: PackRule,
) -> (Vec<u32>, [usize; 2]) {
    assert_eq!(codes.len(), rows * cols, "pack_matrix: codes shape");
    check_codes(codes, bits);
    match axis {
        Axis::Rows => {
            let shape = [packed_words(rows, bits, rule), cols];
            let mut words = vec![0u32; shape[0] * shape[1]];
            for r in 0..rows {
                for c in 0..cols {
                    put(&mut words, c, cols, r, codes[r * cols + c], bits, rule);
                }
            }
            (words, shape)
        }
        Axis::Cols => {
            let shape = [rows, packed_words(cols, bits, rule)];
            let mut words = vec![0u32; shape[0] * shape[1]];
            for r in 0..rows {
                for c in 0..cols {
                    put(&mut words, r * shape[1], 1, c, codes[r * cols + c], bits, rule);
                }
            }
            (words, shape)
        }
    }
}

/// Inverse of [`pack_matrix`]: the `[rows, cols]` codes of words of shape `packed`.
/// Errors (naming `name`) when `packed` is not the shape `pack_matrix` gives.
#[allow(clippy::too_many_arguments)]
pub fn unpack_matrix(
    name: &str,
    words: &[u32],
    packed: [usize; 2],
    rows: usize,
    cols: usize,
    axis: Axis,
    bits: u8,
    rule: PackRule,
) -> Result<Vec<u8>> {
    let expect = match axis {
        Axis::Rows => [packed_words(rows, bits, rule), cols],
        Axis::Cols => [rows, packed_words(cols, bits, rule)],
    };
    if packed != expect || words.len() != packed[0] * packed[1] {
        return Err(Error::tensor(
            name,
            format!("packed shape {packed:?} does not hold [{rows}, {cols}] {bits}-bit codes; expected {expect:?}"),
        ));
    }
    let mut codes = vec![0u8; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            codes[r * cols + c] = match axis {
                Axis::Rows => get(words, c, cols, r, bits, rule),
                Axis::Cols => get(words, r * packed[1], 1, c, bits, rule),
            };
        }
    }
    Ok(codes)
}

/// One tensor as it is stored: safetensors dtype, shape and little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl RawTensor {
    /// Words stored as `int32` (the bit pattern of each u32).
    pub fn from_words(name: impl Into<String>, shape: &[usize], words: &[u32]) -> Self {
        let data = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        Self::checked(name.into(), Dtype::I32, shape, data)
    }

    pub fn from_i32(name: impl Into<String>, shape: &[usize], values: &[i32]) -> Self {
        let data = values.iter().flat_map(|w| w.to_le_bytes()).collect();
        Self::checked(name.into(), Dtype::I32, shape, data)
    }

    pub fn from_i64(name: impl Into<String>, shape: &[usize], values: &[i64]) -> Self {
        let data = values.iter().flat_map(|w| w.to_le_bytes()).collect();
        Self::checked(name.into(), Dtype::I64, shape, data)
    }

    /// f32 values rounded to f16 (exact for scales already rounded to f16).
    pub fn from_f16(name: impl Into<String>, shape: &[usize], values: &[f32]) -> Self {
        let data = values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
        Self::checked(name.into(), Dtype::F16, shape, data)
    }

    pub fn from_f32(name: impl Into<String>, shape: &[usize], values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::checked(name.into(), Dtype::F32, shape, data)
    }

    /// One byte per element (`U8`, `I8`, `F8_E4M3`, `F8_E5M2`).
    pub fn from_bytes(name: impl Into<String>, dtype: Dtype, shape: &[usize], bytes: Vec<u8>) -> Self {
        assert_eq!(dtype.bitsize(), 8, "from_bytes: {dtype:?} is not a one-byte dtype");
        Self::checked(name.into(), dtype, shape, bytes)
    }

    fn checked(name: String, dtype: Dtype, shape: &[usize], data: Vec<u8>) -> Self {
        let n: usize = shape.iter().product();
        assert_eq!(n * dtype.bitsize() / 8, data.len(), "raw tensor {name}: shape {shape:?} vs {} bytes", data.len());
        Self { name, dtype, shape: shape.to_vec(), data }
    }

    /// A borrowed safetensors view of this tensor.
    pub fn view(&self) -> TensorView<'_> {
        TensorView::new(self.dtype, self.shape.clone(), &self.data).expect("RawTensor shape checked at construction")
    }
}

fn expect_dtype(name: &str, view: &TensorView<'_>, allowed: &[Dtype]) -> Result<()> {
    if allowed.contains(&view.dtype()) {
        Ok(())
    } else {
        Err(Error::tensor(name, format!("dtype {:?}, expected one of {allowed:?}", view.dtype())))
    }
}

/// `int32`/`uint32` elements as u32 bit patterns.
pub fn read_words(name: &str, view: &TensorView<'_>) -> Result<Vec<u32>> {
    expect_dtype(name, view, &[Dtype::I32, Dtype::U32])?;
    Ok(view.data().chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// The `[rows, cols]` codes packed in an int32 tensor along `axis` (shape checked against
/// what [`pack_matrix`] gives, naming the tensor on mismatch).
pub fn unpack_tensor(
    name: &str,
    view: &TensorView<'_>,
    rows: usize,
    cols: usize,
    axis: Axis,
    bits: u8,
    rule: PackRule,
) -> Result<Vec<u8>> {
    let shape = match view.shape() {
        [a, b] => [*a, *b],
        other => return Err(Error::tensor(name, format!("shape {other:?} is not 2-D"))),
    };
    unpack_matrix(name, &read_words(name, view)?, shape, rows, cols, axis, bits, rule)
}

/// Integer elements (`I8`, `U8`, `I16`, `I32`, `I64`, `U32`) widened to i64.
pub fn read_ints(name: &str, view: &TensorView<'_>) -> Result<Vec<i64>> {
    let d = view.data();
    Ok(match view.dtype() {
        Dtype::I8 => d.iter().map(|&b| b as i8 as i64).collect(),
        Dtype::U8 => d.iter().map(|&b| b as i64).collect(),
        Dtype::I16 => d.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]) as i64).collect(),
        Dtype::I32 => d.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64).collect(),
        Dtype::U32 => d.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as i64).collect(),
        Dtype::I64 => d.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect(),
        other => return Err(Error::tensor(name, format!("dtype {other:?}, expected an integer dtype"))),
    })
}

/// Float elements (`F16`, `BF16`, `F32`) as f32; errors on NaN/Inf, naming the index.
pub fn read_floats(name: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    let d = view.data();
    let v: Vec<f32> = match view.dtype() {
        Dtype::F16 => d.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => d.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
        other => return Err(Error::tensor(name, format!("dtype {other:?}, expected F16, BF16 or F32"))),
    };
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::tensor(name, format!("non-finite value {} at flat index {i}", v[i])));
    }
    Ok(v)
}

/// Check a [`QuantizedTensor`] before it is packed, naming `name` and the first bad value:
/// buffer lengths, integer codes and zero points within `[0, 2^bits)`, positive finite scales
/// (exactly f16-representable for integer schemes, which every format here stores as f16),
/// `g_idx` of length `cols` with groups in range.
pub fn check_tensor(name: &str, q: &QuantizedTensor) -> Result<()> {
    let bad = |msg: String| Err(Error::tensor(name, msg));
    let n_params = match q.scheme.granularity {
        Granularity::PerTensor => 1,
        _ => q.rows * q.groups_per_row(),
    };
    if q.codes.len() != q.rows * q.cols || q.scales.len() != n_params {
        return bad(format!(
            "{} codes and {} scales for [{}, {}] in {} (expected {} and {n_params})",
            q.codes.len(),
            q.scales.len(),
            q.rows,
            q.cols,
            q.scheme,
            q.rows * q.cols
        ));
    }
    if let Some(i) = q.scales.iter().position(|s| !(*s > 0.0 && s.is_finite())) {
        return bad(format!("scale {} at index {i} is not positive and finite", q.scales[i]));
    }
    if let NumberFormat::Int { bits } = q.scheme.format {
        let maxq = q.scheme.maxq();
        if let Some(i) = q.codes.iter().position(|&c| c as u32 > maxq) {
            return bad(format!(
                "code {} at row {} col {} exceeds {bits}-bit range",
                q.codes[i],
                i / q.cols,
                i % q.cols
            ));
        }
        if let Some(i) = q.scales.iter().position(|&s| half::f16::from_f32(s).to_f32() != s) {
            return bad(format!(
                "scale {} at index {i} is not representable in f16 (scales are rounded to f16 when quantizing)",
                q.scales[i]
            ));
        }
        match &q.zeros {
            Some(z) if z.len() == n_params => {
                if let Some(i) = z.iter().position(|&v| v as u32 > maxq) {
                    return bad(format!("zero point {} at index {i} exceeds {bits}-bit range", z[i]));
                }
            }
            other => return bad(format!("{} zero points, expected {n_params}", other.as_ref().map_or(0, |z| z.len()))),
        }
    }
    if let Some(g) = &q.g_idx {
        let groups = q.groups_per_row() as u32;
        if g.len() != q.cols {
            return bad(format!("g_idx has {} entries for {} columns", g.len(), q.cols));
        }
        if let Some(c) = g.iter().position(|&v| v >= groups) {
            return bad(format!("g_idx[{c}] = {} but there are {groups} groups", g[c]));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn three_bit_stream_straddles_words_as_autogptq() {
        // Codes 0..32 with code i = i % 8: check the two straddling codes bit by bit.
        let codes: Vec<u8> = (0..32).map(|i| (i % 8) as u8).collect();
        let w = pack(&codes, 3, PackRule::Stream);
        assert_eq!(w.len(), 3);
        // code 10 (= 2 = 0b010): low 2 bits -> word0 bits 30..31, high bit -> word1 bit 0.
        assert_eq!((w[0] >> 30) & 3, 0b10);
        assert_eq!(w[1] & 1, 0);
        // code 21 (= 5 = 0b101): low bit -> word1 bit 31, high 2 bits -> word2 bits 0..1.
        assert_eq!(w[1] >> 31, 1);
        assert_eq!(w[2] & 3, 0b10);
        // code 11 (= 3) starts at word1 bit 1, code 22 (= 6) at word2 bit 2.
        assert_eq!((w[1] >> 1) & 7, 3);
        assert_eq!((w[2] >> 2) & 7, 6);
        assert_eq!(unpack(&w, 3, 32, PackRule::Stream).unwrap(), codes);
    }

    #[test]
    fn word_aligned_three_bit_leaves_top_bits_empty() {
        let codes = vec![7u8; 10];
        let w = pack(&codes, 3, PackRule::WordAligned);
        assert_eq!(w, vec![0x3FFF_FFFF]);
        assert_eq!(packed_words(11, 3, PackRule::WordAligned), 2);
        assert_eq!(packed_words(11, 3, PackRule::Stream), 2);
        assert_eq!(packed_words(32, 3, PackRule::Stream), 3);
    }

    #[test]
    fn rules_agree_for_power_of_two_bits_and_round_trip() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for bits in [2u8, 3, 4, 8] {
            for n in [0usize, 1, 7, 31, 32, 33, 100] {
                let codes: Vec<u8> = (0..n).map(|_| rng.random_range(0..(1u16 << bits)) as u8).collect();
                let s = pack(&codes, bits, PackRule::Stream);
                let a = pack(&codes, bits, PackRule::WordAligned);
                if bits != 3 {
                    assert_eq!(s, a, "bits {bits} n {n}");
                }
                assert_eq!(unpack(&s, bits, n, PackRule::Stream).unwrap(), codes);
                assert_eq!(unpack(&a, bits, n, PackRule::WordAligned).unwrap(), codes);
            }
        }
    }

    #[test]
    fn matrix_packing_matches_per_line_packing() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let (rows, cols) = (37, 5);
        for bits in [2u8, 3, 4, 8] {
            for rule in [PackRule::Stream, PackRule::WordAligned] {
                let codes: Vec<u8> = (0..rows * cols).map(|_| rng.random_range(0..(1u16 << bits)) as u8).collect();
                let (w, shape) = pack_matrix(&codes, rows, cols, Axis::Rows, bits, rule);
                for c in 0..cols {
                    let col: Vec<u8> = (0..rows).map(|r| codes[r * cols + c]).collect();
                    let packed_col: Vec<u32> = (0..shape[0]).map(|k| w[k * cols + c]).collect();
                    assert_eq!(packed_col, pack(&col, bits, rule));
                }
                assert_eq!(unpack_matrix("t", &w, shape, rows, cols, Axis::Rows, bits, rule).unwrap(), codes);
                let (w, shape) = pack_matrix(&codes, rows, cols, Axis::Cols, bits, rule);
                assert_eq!(&w[..shape[1]], &pack(&codes[..cols], bits, rule)[..]);
                assert_eq!(unpack_matrix("t", &w, shape, rows, cols, Axis::Cols, bits, rule).unwrap(), codes);
                let err = unpack_matrix("t", &w, [shape[0], shape[1] + 1], rows, cols, Axis::Cols, bits, rule);
                assert!(err.unwrap_err().to_string().contains("expected"));
            }
        }
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn oversized_code_is_refused() {
        pack(&[16], 4, PackRule::Stream);
    }
}
