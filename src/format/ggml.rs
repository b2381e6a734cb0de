//! GGML tensor types: ids, block sizes, block layouts and dequantizers.
//!
//! Source: ggml `ggml-common.h` (block structs) and `ggml-quants.c`
//! (`dequantize_row_*`). Every dequantizer here reproduces the reference loop
//! exactly, element order included. All multi-byte fields are little-endian;
//! `f16` fields are IEEE half precision.
//!
//! A tensor of `n` elements of a block type holds `n / QK` blocks back to back;
//! element `i` of the (row-major) tensor is element `i % QK` of block `i / QK`.

use crate::error::{Error, Result};
use half::{bf16, f16};
use rayon::prelude::*;
use std::mem::size_of;

/// Super-block size of the k-quants.
pub const QK_K: usize = 256;

/// A GGML tensor type id as stored in GGUF tensor infos (`enum ggml_type`).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

/// (type, id, name, elements per block, bytes per block), from `ggml.c`'s `type_traits`.
const TYPES: [(GgmlType, u32, &str, usize, usize); 32] = {
    use GgmlType::*;
    [
        (F32, 0, "F32", 1, 4),
        (F16, 1, "F16", 1, 2),
        (Q4_0, 2, "Q4_0", 32, 18),
        (Q4_1, 3, "Q4_1", 32, 20),
        (Q5_0, 6, "Q5_0", 32, 22),
        (Q5_1, 7, "Q5_1", 32, 24),
        (Q8_0, 8, "Q8_0", 32, 34),
        (Q8_1, 9, "Q8_1", 32, 36),
        (Q2_K, 10, "Q2_K", QK_K, 84),
        (Q3_K, 11, "Q3_K", QK_K, 110),
        (Q4_K, 12, "Q4_K", QK_K, 144),
        (Q5_K, 13, "Q5_K", QK_K, 176),
        (Q6_K, 14, "Q6_K", QK_K, 210),
        (Q8_K, 15, "Q8_K", QK_K, 292),
        (IQ2_XXS, 16, "IQ2_XXS", QK_K, 66),
        (IQ2_XS, 17, "IQ2_XS", QK_K, 74),
        (IQ3_XXS, 18, "IQ3_XXS", QK_K, 98),
        (IQ1_S, 19, "IQ1_S", QK_K, 50),
        (IQ4_NL, 20, "IQ4_NL", 32, 18),
        (IQ3_S, 21, "IQ3_S", QK_K, 110),
        (IQ2_S, 22, "IQ2_S", QK_K, 82),
        (IQ4_XS, 23, "IQ4_XS", QK_K, 136),
        (I8, 24, "I8", 1, 1),
        (I16, 25, "I16", 1, 2),
        (I32, 26, "I32", 1, 4),
        (I64, 27, "I64", 1, 8),
        (F64, 28, "F64", 1, 8),
        (IQ1_M, 29, "IQ1_M", QK_K, 56),
        (BF16, 30, "BF16", 1, 2),
        (TQ1_0, 34, "TQ1_0", QK_K, 54),
        (TQ2_0, 35, "TQ2_0", QK_K, 66),
        (MXFP4, 39, "MXFP4", 32, 17),
    ]
};

impl GgmlType {
    /// The type with GGUF id `id`; `None` for ids ggml never assigned or has removed.
    pub fn from_id(id: u32) -> Option<Self> {
        TYPES.iter().find(|t| t.1 == id).map(|t| t.0)
    }
    fn traits(self) -> &'static (GgmlType, u32, &'static str, usize, usize) {
        // Every variant has exactly one row (checked by a unit test).
        TYPES.iter().find(|t| t.0 == self).unwrap_or(&TYPES[0])
    }
    pub fn id(self) -> u32 {
        self.traits().1
    }
    pub fn name(self) -> &'static str {
        self.traits().2
    }
    /// Elements per block (1 for plain types).
    pub fn block_size(self) -> usize {
        self.traits().3
    }
    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.traits().4
    }
    /// Bytes for `n` elements, or `None` when `n` is not a whole number of blocks
    /// or the size overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if n % bs != 0 {
            return None;
        }
        (n / bs).checked_mul(self.type_size() as u64)
    }
    /// Whether [`dequantize`] handles this type.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(self, F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q4_K | Q5_K | Q6_K)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One quantized block: its byte layout (the struct, `#[repr(C)]` as in ggml) and
/// its `dequantize_row_*` loop.
pub trait GgmlBlock: Sized {
    /// Elements per block.
    const QK: usize;
    /// Bytes per block on disk (= `size_of::<Self>()`, pinned per type below).
    const BYTES: usize;
    /// Parse one block from exactly `Self::BYTES` little-endian bytes.
    fn read(b: &[u8]) -> Self;
    /// Write the block's `Self::QK` values into `y`.
    fn dequantize(&self, y: &mut [f32]);
}

fn arr<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

/// `block_q8_0`: `d: f16`, `qs: [i8; 32]`; `y[j] = d * qs[j]`.
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}
const _: () = assert!(size_of::<BlockQ8_0>() == 34);

impl GgmlBlock for BlockQ8_0 {
    const QK: usize = 32;
    const BYTES: usize = size_of::<Self>();
    fn read(b: &[u8]) -> Self {
        Self { d: f16::from_le_bytes([b[0], b[1]]), qs: arr::<32>(b, 2).map(|x| x as i8) }
    }
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for (y, &q) in y.iter_mut().zip(&self.qs) {
            *y = q as f32 * d;
        }
    }
}

/// `block_q4_0`: `d: f16`, `qs: [u8; 16]`; low nibble of `qs[j]` is element `j`,
/// high nibble element `j + 16`; `y = (nibble - 8) * d`.
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockQ4_0>() == 18);

impl GgmlBlock for BlockQ4_0 {
    const QK: usize = 32;
    const BYTES: usize = size_of::<Self>();
    fn read(b: &[u8]) -> Self {
        Self { d: f16::from_le_bytes([b[0], b[1]]), qs: arr(b, 2) }
    }
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for (j, &q) in self.qs.iter().enumerate() {
            y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
            y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// `block_q4_1`: `d: f16`, `m: f16`, `qs: [u8; 16]`; nibbles as in Q4_0;
/// `y = nibble * d + m`.
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockQ4_1>() == 20);

impl GgmlBlock for BlockQ4_1 {
    const QK: usize = 32;
    const BYTES: usize = size_of::<Self>();
    fn read(b: &[u8]) -> Self {
        Self { d: f16::from_le_bytes([b[0], b[1]]), m: f16::from_le_bytes([b[2], b[3]]), qs: arr(b, 4) }
    }
    fn dequantize(&self, y: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (j, &q) in self.qs.iter().enumerate() {
            y[j] = (q & 0x0F) as f32 * d + m;
            y[j + 16] = (q >> 4) as f32 * d + m;
        }
    }
}

/// `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) packed in
/// 12 bytes: sub-blocks 0..4 use the low 6 bits of bytes `j` (scale) and `j+4` (min);
/// sub-blocks 4..8 take their low 4 bits from byte `j+4` (scale: low nibble, min:
/// high nibble) and their high 2 bits from the top bits of bytes `j-4` / `j`.
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// `block_q4_K`: `d: f16`, `dmin: f16`, `scales: [u8; 12]` (8 six-bit scale/min
/// pairs, see [`scale_min_k4`]), `qs: [u8; 128]`. Each 64 elements use 32 bytes of
/// `qs`: the low nibbles are sub-block `2i`, the high nibbles sub-block `2i+1`;
/// `y = d * scale * nibble - dmin * min`.
#[repr(C)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}
const _: () = assert!(size_of::<BlockQ4K>() == 144);

impl GgmlBlock for BlockQ4K {
    const QK: usize = QK_K;
    const BYTES: usize = size_of::<Self>();
    fn read(b: &[u8]) -> Self {
        Self {
            d: f16::from_le_bytes([b[0], b[1]]),
            dmin: f16::from_le_bytes([b[2], b[3]]),
            scales: arr(b, 4),
            qs: arr(b, 16),
        }
    }
    fn dequantize(&self, y: &mut [f32]) {
        let (d, min) = (self.d.to_f32(), self.dmin.to_f32());
        for (i, (q, y)) in self.qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
            let (sc1, m1) = scale_min_k4(2 * i, &self.scales);
            let (sc2, m2) = scale_min_k4(2 * i + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            for l in 0..32 {
                y[l] = d1 * (q[l] & 0x0F) as f32 - m1;
                y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// `block_q5_K`: `d: f16`, `dmin: f16`, `scales: [u8; 12]`, `qh: [u8; 32]`,
/// `qs: [u8; 128]`. As Q4_K, plus a fifth bit: for the 64-element chunk `i`,
/// bit `2i` of `qh[l]` is the high bit of the low-nibble element `l`, bit `2i+1`
/// that of the high-nibble element `l + 32`; `y = d * scale * q - dmin * min`.
#[repr(C)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}
const _: () = assert!(size_of::<BlockQ5K>() == 176);

impl GgmlBlock for BlockQ5K {
    const QK: usize = QK_K;
    const BYTES: usize = size_of::<Self>();
    fn read(b: &[u8]) -> Self {
        Self {
            d: f16::from_le_bytes([b[0], b[1]]),
            dmin: f16::from_le_bytes([b[2], b[3]]),
            scales: arr(b, 4),
            qh: arr(b, 16),
            qs: arr(b, 48),
        }
    }
    fn dequantize(&self, y: &mut [f32]) {
        let (d, min) = (self.d.to_f32(), self.dmin.to_f32());
        for (i, (ql, y)) in self.qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
            let (sc1, m1) = scale_min_k4(2 * i, &self.scales);
            let (sc2, m2) = scale_min_k4(2 * i + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let (u1, u2) = (1u8 << (2 * i), 2u8 << (2 * i));
            for l in 0..32 {
                let h1 = if self.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if self.qh[l] & u2 != 0 { 16 } else { 0 };
                y[l] = d1 * ((ql[l] & 0x0F) + h1) as f32 - m1;
                y[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}

/// `block_q6_K`: `ql: [u8; 128]` (low 4 bits), `qh: [u8; 64]` (high 2 bits),
/// `scales: [i8; 16]`, `d: f16`. Each half (128 elements) uses 64 bytes of `ql`,
/// 32 of `qh`, 8 scales: for `l` in 0..32 and `is = l / 16`,
/// `q1 = (ql[l] & 15 | (qh[l] >> 0 & 3) << 4) - 32` -> `y[l]` with `scales[is]`,
/// `q2 = (ql[l+32] & 15 | (qh[l] >> 2 & 3) << 4) - 32` -> `y[l+32]`, `scales[is+2]`,
/// `q3 = (ql[l] >> 4 | (qh[l] >> 4 & 3) << 4) - 32` -> `y[l+64]`, `scales[is+4]`,
/// `q4 = (ql[l+32] >> 4 | (qh[l] >> 6 & 3) << 4) - 32` -> `y[l+96]`, `scales[is+6]`;
/// `y = d * scale * q`.
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: f16,
}
const _: () = assert!(size_of::<BlockQ6K>() == 210);

impl GgmlBlock for BlockQ6K {
    const QK: usize = QK_K;
    const BYTES: usize = size_of::<Self>();
    fn read(b: &[u8]) -> Self {
        Self {
            ql: arr(b, 0),
            qh: arr(b, 128),
            scales: arr::<16>(b, 192).map(|x| x as i8),
            d: f16::from_le_bytes([b[208], b[209]]),
        }
    }
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for half in 0..2 {
            let (ql, qh) = (&self.ql[64 * half..], &self.qh[32 * half..]);
            let sc = &self.scales[8 * half..];
            let y = &mut y[128 * half..];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * sc[is] as f32 * q1 as f32;
                y[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                y[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                y[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
            }
        }
    }
}

/// Blocks per parallel task: large enough that rayon's overhead is negligible.
const BLOCKS_PER_TASK: usize = 1024;

fn dequantize_blocks<B: GgmlBlock>(src: &[u8], dst: &mut [f32]) {
    src.par_chunks(B::BYTES * BLOCKS_PER_TASK).zip(dst.par_chunks_mut(B::QK * BLOCKS_PER_TASK)).for_each(|(s, d)| {
        for (b, y) in s.chunks_exact(B::BYTES).zip(d.chunks_exact_mut(B::QK)) {
            B::read(b).dequantize(y);
        }
    });
}

fn convert_elems<const N: usize>(src: &[u8], dst: &mut [f32], f: impl Fn([u8; N]) -> f32 + Sync) {
    src.par_chunks(N * 65536).zip(dst.par_chunks_mut(65536)).for_each(|(s, d)| {
        for (b, y) in s.chunks_exact(N).zip(d.iter_mut()) {
            *y = f(arr(b, 0));
        }
    });
}

/// Dequantize `src` (whole blocks of `ty`) into `dst`, in element order.
/// `src.len()` must be exactly `ty.bytes_for(dst.len())`.
pub fn dequantize_into(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    match ty.bytes_for(dst.len() as u64) {
        Some(n) if n == src.len() as u64 => {}
        _ => {
            return Err(Error::Other(format!(
                "{ty}: {} bytes do not hold {} elements (blocks of {} elements, {} bytes)",
                src.len(),
                dst.len(),
                ty.block_size(),
                ty.type_size()
            )))
        }
    }
    match ty {
        GgmlType::F32 => convert_elems::<4>(src, dst, f32::from_le_bytes),
        GgmlType::F16 => convert_elems::<2>(src, dst, |b| f16::from_le_bytes(b).to_f32()),
        GgmlType::BF16 => convert_elems::<2>(src, dst, |b| bf16::from_le_bytes(b).to_f32()),
        GgmlType::Q8_0 => dequantize_blocks::<BlockQ8_0>(src, dst),
        GgmlType::Q4_0 => dequantize_blocks::<BlockQ4_0>(src, dst),
        GgmlType::Q4_1 => dequantize_blocks::<BlockQ4_1>(src, dst),
        GgmlType::Q4_K => dequantize_blocks::<BlockQ4K>(src, dst),
        GgmlType::Q5_K => dequantize_blocks::<BlockQ5K>(src, dst),
        GgmlType::Q6_K => dequantize_blocks::<BlockQ6K>(src, dst),
        _ => {
            return Err(Error::Other(format!(
                "GGML type {ty} (id {}) cannot be dequantized yet; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K",
                ty.id()
            )))
        }
    }
    Ok(())
}

/// Dequantize `n` elements of type `ty` stored in `src`.
pub fn dequantize(ty: GgmlType, src: &[u8], n: usize) -> Result<Vec<f32>> {
    let mut out = vec![0f32; n];
    dequantize_into(ty, src, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    fn deq(ty: GgmlType, b: &[u8]) -> Vec<f32> {
        dequantize(ty, b, b.len() / ty.type_size() * ty.block_size()).unwrap()
    }

    #[test]
    fn type_table_is_consistent() {
        for &(t, id, name, bs, ts) in TYPES.iter() {
            assert_eq!(GgmlType::from_id(id), Some(t), "{name}");
            assert_eq!((t.id(), t.name(), t.block_size(), t.type_size()), (id, name, bs, ts));
        }
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 40, 99, u32::MAX] {
            assert_eq!(GgmlType::from_id(id), None, "id {id}");
        }
        assert_eq!(BlockQ8_0::BYTES, GgmlType::Q8_0.type_size());
        assert_eq!(BlockQ4_0::BYTES, GgmlType::Q4_0.type_size());
        assert_eq!(BlockQ4_1::BYTES, GgmlType::Q4_1.type_size());
        assert_eq!(BlockQ4K::BYTES, GgmlType::Q4_K.type_size());
        assert_eq!(BlockQ5K::BYTES, GgmlType::Q5_K.type_size());
        assert_eq!(BlockQ6K::BYTES, GgmlType::Q6_K.type_size());
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q4_K.bytes_for(100), None);
    }

    #[test]
    fn plain_types() {
        let f32b: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(deq(GgmlType::F32, &f32b), [1.5, -2.0]);
        // f16 0x3C00 = 1.0, 0xC100 = -2.5; bf16 0x3FC0 = 1.5, 0xC020 = -2.5.
        assert_eq!(deq(GgmlType::F16, &[0x00, 0x3C, 0x00, 0xC1]), [1.0, -2.5]);
        assert_eq!(deq(GgmlType::BF16, &[0xC0, 0x3F, 0x20, 0xC0]), [1.5, -2.5]);
    }

    #[test]
    fn q8_0_known_block() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&[0x00, 0x38]); // f16 0x3800 = 0.5
        for (j, q) in [-128i8, -1, 0, 1, 127].iter().enumerate() {
            b[2 + j] = *q as u8;
        }
        let y = deq(GgmlType::Q8_0, &b);
        assert_eq!(&y[..5], &[-64.0, -0.5, 0.0, 0.5, 63.5]);
        assert!(y[5..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn q4_0_known_block() {
        let mut b = vec![0x88u8; 18]; // nibble 8 -> 0
        b[..2].copy_from_slice(&h(2.0));
        b[2] = 0x1F; // y[0] = (15-8)*2 = 14, y[16] = (1-8)*2 = -14
        b[17] = 0x08; // y[15] = 0, y[31] = (0-8)*2 = -16
        let y = deq(GgmlType::Q4_0, &b);
        assert_eq!((y[0], y[16], y[15], y[31]), (14.0, -14.0, 0.0, -16.0));
        assert_eq!(y[1], 0.0);
    }

    #[test]
    fn q4_1_known_block() {
        let mut b = vec![0u8; 20];
        b[..2].copy_from_slice(&h(0.5));
        b[2..4].copy_from_slice(&h(-1.0));
        b[4] = 0xA3; // y[0] = 3*0.5-1 = 0.5, y[16] = 10*0.5-1 = 4
        let y = deq(GgmlType::Q4_1, &b);
        assert_eq!((y[0], y[16], y[1], y[17]), (0.5, 4.0, -1.0, -1.0));
    }

    /// Scales for Q4_K/Q5_K tests: sub-block 0: scale 2, min 3; sub-block 1: scale 5,
    /// min 1; sub-block 4: scale 7 | (0b01 << 4) = 23, min 5 | (0b10 << 4) = 37.
    fn k_scales() -> [u8; 12] {
        let mut s = [0u8; 12];
        s[0] = 0x42; // scale0 = 2, top bits 01 -> high bits of scale4
        s[4] = 0x83; // min0 = 3, top bits 10 -> high bits of min4
        s[1] = 5;
        s[5] = 1;
        s[8] = 0x57; // scale4 low = 7, min4 low = 5
        s
    }

    #[test]
    fn k4_scale_unpacking() {
        let s = k_scales();
        assert_eq!(scale_min_k4(0, &s), (2, 3));
        assert_eq!(scale_min_k4(1, &s), (5, 1));
        assert_eq!(scale_min_k4(4, &s), (23, 37));
        assert_eq!(scale_min_k4(5, &s), (0, 0));
    }

    #[test]
    fn q4_k_known_block() {
        let mut b = vec![0u8; 144];
        b[..2].copy_from_slice(&h(1.0));
        b[2..4].copy_from_slice(&h(0.5));
        b[4..16].copy_from_slice(&k_scales());
        b[16] = 0x3B; // qs[0]: low 11 -> y[0], high 3 -> y[32]
        b[16 + 64] = 0x04; // qs[64]: low 4 -> y[128] (sub-block 4)
        let y = deq(GgmlType::Q4_K, &b);
        assert_eq!(y[0], 2.0 * 11.0 - 0.5 * 3.0); // 20.5
        assert_eq!(y[32], 5.0 * 3.0 - 0.5 * 1.0); // 14.5
        assert_eq!(y[1], -1.5);
        assert_eq!(y[128], 23.0 * 4.0 - 0.5 * 37.0); // 73.5
        assert_eq!(y[129], -18.5);
        assert_eq!(y[255], 0.0);
    }

    #[test]
    fn q5_k_known_block() {
        let mut b = vec![0u8; 176];
        b[..2].copy_from_slice(&h(1.0));
        b[2..4].copy_from_slice(&h(0.5));
        b[4..16].copy_from_slice(&k_scales());
        let (qh, qs) = (16, 48);
        b[qh] = 0b0000_0010; // qh[0] bit 1: high bit of y[32] (chunk 0, high nibble)
        b[qh + 1] = 0b0001_0000; // qh[1] bit 4: high bit of y[129] (chunk 2, low nibble)
        b[qs] = 0x3B;
        b[qs + 65] = 0x02;
        let y = deq(GgmlType::Q5_K, &b);
        assert_eq!(y[0], 2.0 * 11.0 - 1.5); // no fifth bit
        assert_eq!(y[32], 5.0 * (3.0 + 16.0) - 0.5);
        assert_eq!(y[129], 23.0 * (2.0 + 16.0) - 18.5);
        assert_eq!(y[128], -18.5);
    }

    #[test]
    fn q6_k_known_block() {
        let mut b = vec![0u8; 210];
        let (ql, qh, sc) = (0, 128, 192);
        b[208..210].copy_from_slice(&h(0.25));
        for (i, s) in [1i8, 2, 3, 4, 5, 6, 7, 8, -1, -2, -3, -4, -5, -6, -7, -8].iter().enumerate() {
            b[sc + i] = *s as u8;
        }
        b[ql] = 0x21; // low 1 -> q1, high 2 -> q3
        b[ql + 32] = 0xFF; // low 15 -> q2, high 15 -> q4
        b[qh] = 0xE4; // 0b11_10_01_00: q1 hi 0, q2 hi 1, q3 hi 2, q4 hi 3
        b[ql + 64 + 17] = 0x05; // second half, l = 17 (is = 1): q1 = 5 | 3 << 4
        b[qh + 32 + 17] = 0x03;
        let y = deq(GgmlType::Q6_K, &b);
        assert_eq!(y[0], 0.25 * 1.0 * (1 - 32) as f32);
        assert_eq!(y[32], 0.25 * 3.0 * ((15 | 16) - 32) as f32);
        assert_eq!(y[64], 0.25 * 5.0 * ((2 | 32) - 32) as f32);
        assert_eq!(y[96], 0.25 * 7.0 * ((15 | 48) - 32) as f32);
        assert_eq!(y[1], 0.25 * 1.0 * -32.0);
        assert_eq!(y[128 + 17], 0.25 * -2.0 * ((5 | 48) - 32) as f32);
    }

    #[test]
    fn parallel_path_matches_block_by_block() {
        // 3000 Q8_0 blocks (several parallel tasks, the last one partial).
        let nb = 3000;
        let bytes: Vec<u8> = (0..nb * 34).map(|i| (i * 7 % 251) as u8 & if i % 34 == 1 { 0x3F } else { 0xFF }).collect();
        let all = deq(GgmlType::Q8_0, &bytes);
        for (i, b) in bytes.chunks_exact(34).enumerate() {
            let mut y = [0f32; 32];
            BlockQ8_0::read(b).dequantize(&mut y);
            assert_eq!(&all[i * 32..(i + 1) * 32], &y, "block {i}");
        }
    }

    #[test]
    fn wrong_sizes_and_unsupported_types_are_errors() {
        let e = dequantize(GgmlType::Q4_0, &[0u8; 17], 32).unwrap_err().to_string();
        assert!(e.contains("17 bytes") && e.contains("32 elements"), "{e}");
        let e = dequantize(GgmlType::Q5_0, &[0u8; 22], 32).unwrap_err().to_string();
        assert!(e.contains("Q5_0") && e.contains("cannot be dequantized"), "{e}");
    }
}
