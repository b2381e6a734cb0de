//! GGML block layouts and their `dequantize_row_*` loops (ggml `ggml-common.h`,
//! `ggml-quants.c`), one struct per type, sizes pinned at compile time.

use super::QK_K;
use half::f16;
use std::mem::size_of;

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

pub(super) fn arr<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
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

/// `block_q2_K`: 16 sub-blocks of 16, each a byte of 4-bit scale (low) and min (high),
/// 2-bit codes, `w = d·sc·q - dmin·m` (`dequantize_row_q2_K`).
#[repr(C)]
pub struct BlockQ2K {
    pub scales: [u8; 16],
    pub qs: [u8; 64],
    pub d: f16,
    pub dmin: f16,
}
const _: () = assert!(size_of::<BlockQ2K>() == 84);

impl GgmlBlock for BlockQ2K {
    const QK: usize = QK_K;
    const BYTES: usize = size_of::<Self>();
    fn read(b: &[u8]) -> Self {
        Self {
            scales: arr(b, 0),
            qs: arr(b, 16),
            d: f16::from_le_bytes([b[80], b[81]]),
            dmin: f16::from_le_bytes([b[82], b[83]]),
        }
    }
    fn dequantize(&self, y: &mut [f32]) {
        let (d, min) = (self.d.to_f32(), self.dmin.to_f32());
        let mut k = 0;
        for half in 0..2 {
            let q = &self.qs[32 * half..32 * half + 32];
            for j in 0..4 {
                for part in 0..2 {
                    let sc = self.scales[8 * half + 2 * j + part];
                    let (dl, ml) = (d * (sc & 0x0F) as f32, min * (sc >> 4) as f32);
                    for l in 0..16 {
                        y[k] = dl * ((q[16 * part + l] >> (2 * j)) & 3) as f32 - ml;
                        k += 1;
                    }
                }
            }
        }
    }
}

/// `block_q3_K`: 16 sub-blocks of 16 with 6-bit scales (stored `+32`, packed in 12 bytes),
/// 3-bit codes (2 low bits in `qs`, the high bit in `hmask`), `w = d·(sc-32)·(q-4)`
/// (`dequantize_row_q3_K`).
#[repr(C)]
pub struct BlockQ3K {
    pub hmask: [u8; 32],
    pub qs: [u8; 64],
    pub scales: [u8; 12],
    pub d: f16,
}
const _: () = assert!(size_of::<BlockQ3K>() == 110);

/// The 16 6-bit scales of Q3_K (`scale - 32` is the signed value).
pub fn scales_q3k(s: &[u8; 12]) -> [u8; 16] {
    std::array::from_fn(|j| {
        let low = if j < 8 { s[j] & 0x0F } else { s[j - 8] >> 4 };
        low | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)
    })
}

impl GgmlBlock for BlockQ3K {
    const QK: usize = QK_K;
    const BYTES: usize = size_of::<Self>();
    fn read(b: &[u8]) -> Self {
        Self { hmask: arr(b, 0), qs: arr(b, 32), scales: arr(b, 96), d: f16::from_le_bytes([b[108], b[109]]) }
    }
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        let sc = scales_q3k(&self.scales);
        let mut k = 0;
        for half in 0..2 {
            let q = &self.qs[32 * half..32 * half + 32];
            for j in 0..4 {
                let m = 1u8 << (4 * half + j);
                for part in 0..2 {
                    let dl = d * (sc[8 * half + 2 * j + part] as i32 - 32) as f32;
                    for l in 0..16 {
                        let i = 16 * part + l;
                        let v = ((q[i] >> (2 * j)) & 3) as i32 - if self.hmask[i] & m != 0 { 0 } else { 4 };
                        y[k] = dl * v as f32;
                        k += 1;
                    }
                }
            }
        }
    }
}

/// `block_q5_0`: `d`, the fifth bits `qh` (u32, bit j = element j), low nibbles as Q4_0.
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockQ5_0>() == 22);

/// The 5-bit codes of Q5_0 / Q5_1 (`dequantize_row_q5_0`'s `xh_0`, `xh_1`).
fn codes5(qh: [u8; 4], qs: &[u8; 16], j: usize) -> (u32, u32) {
    let qh = u32::from_le_bytes(qh);
    let xh0 = ((qh >> j) << 4) & 0x10;
    let xh1 = (qh >> (j + 12)) & 0x10;
    ((qs[j] & 0x0F) as u32 | xh0, (qs[j] >> 4) as u32 | xh1)
}

impl GgmlBlock for BlockQ5_0 {
    const QK: usize = 32;
    const BYTES: usize = size_of::<Self>();
    fn read(b: &[u8]) -> Self {
        Self { d: f16::from_le_bytes([b[0], b[1]]), qh: arr(b, 2), qs: arr(b, 6) }
    }
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for j in 0..16 {
            let (x0, x1) = codes5(self.qh, &self.qs, j);
            y[j] = (x0 as i32 - 16) as f32 * d;
            y[j + 16] = (x1 as i32 - 16) as f32 * d;
        }
    }
}

/// `block_q5_1`: `d`, `m`, then as Q5_0 (`w = d·q + m`).
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockQ5_1>() == 24);

impl GgmlBlock for BlockQ5_1 {
    const QK: usize = 32;
    const BYTES: usize = size_of::<Self>();
    fn read(b: &[u8]) -> Self {
        Self { d: f16::from_le_bytes([b[0], b[1]]), m: f16::from_le_bytes([b[2], b[3]]), qh: arr(b, 4), qs: arr(b, 8) }
    }
    fn dequantize(&self, y: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for j in 0..16 {
            let (x0, x1) = codes5(self.qh, &self.qs, j);
            y[j] = x0 as f32 * d + m;
            y[j + 16] = x1 as f32 * d + m;
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

#[cfg(test)]
mod tests {
    //! Blocks built byte by byte; expected values derived by hand from the formulas.
    use super::super::{dequantize, GgmlType};
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    fn deq(ty: GgmlType, b: &[u8]) -> Vec<f32> {
        dequantize(ty, b, b.len() / ty.type_size() * ty.block_size()).unwrap()
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
}
