//! Writing ggml blocks: the grid each block type can represent and its byte layout.
//!
//! Every block type written here is, per sub-block `j`, an affine grid
//! `w = scale[j] · u + offset[j]` over unsigned codes `u` in `0..=maxq`:
//!
//! | type | block | sub-block | `maxq` | scale, offset of sub-block `j` |
//! |---|---|---|---|---|
//! | Q8_0 | 32 | 32 | 255 | `d`, `-128·d` (stored `u - 128` as i8) |
//! | Q4_0 / Q5_0 | 32 | 32 | 15 / 31 | `d`, `-8·d` / `-16·d` |
//! | Q4_1 / Q5_1 | 32 | 32 | 15 / 31 | `d`, `m` |
//! | Q4_K / Q5_K | 256 | 32 | 15 / 31 | `d·sc[j]`, `-(dmin·m[j])` (6-bit `sc`, `m`) |
//! | Q6_K | 256 | 16 | 63 | `d·sc[j]`, `-32·d·sc[j]` (i8 `sc`) |
//! | Q3_K | 256 | 16 | 7 | `d·(sc[j]-32)`, `-4·d·(sc[j]-32)` (6-bit `sc`) |
//! | Q2_K | 256 | 16 | 3 | `d·sc[j]`, `-(dmin·m[j])` (4-bit `sc`, `m`) |
//!
//! `d`, `dmin`, `m` are f16. With these operands every product is exact in f32 (at most
//! 24 significant bits), so `scale · u + offset` rounds once, where ggml's dequantizers
//! (`dequantize_row_*` in `ggml-quants.c`, reproduced in [`super::blocks`]) round once
//! too: [`BlockHeader::grid`] gives what llama.cpp will compute, equal as IEEE numbers
//! (the sign of a zero aside; tested).
//! Layouts: `block_*` structs of `ggml-common.h`, packing as `quantize_row_*_ref`.

use super::{GgmlType, QK_K};
use half::f16;

/// The non-code fields of one block: `d`, `dmin` (Q4_1/Q5_1: `m`), and the sub-block
/// scales / mins of the k-quants (6-bit for Q4_K/Q5_K, i8 bits for Q6_K).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockHeader {
    pub d: f16,
    pub dmin: f16,
    pub sc: [u8; 16],
    pub m: [u8; 16],
}

impl Default for BlockHeader {
    fn default() -> Self {
        Self { d: f16::ZERO, dmin: f16::ZERO, sc: [0; 16], m: [0; 16] }
    }
}

/// The block types this tool writes.
pub const WRITABLE: [GgmlType; 10] = [
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Elements per sub-block (one scale each).
pub fn sub_block(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q6_K | GgmlType::Q3_K | GgmlType::Q2_K => 16,
        _ => 32,
    }
}

/// Largest code.
pub fn maxq(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::Q8_0 => 255,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K => 15,
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 31,
        GgmlType::Q6_K => 63,
        GgmlType::Q3_K => 7,
        GgmlType::Q2_K => 3,
        _ => 0,
    }
}

/// Whether the offset is a fixed multiple of the scale (a symmetric grid).
pub fn is_symmetric(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q6_K | GgmlType::Q3_K)
}

pub fn is_writable(ty: GgmlType) -> bool {
    WRITABLE.contains(&ty)
}

impl BlockHeader {
    /// `(scale, offset)` of sub-block `j`, as the type's dequantizer computes them.
    pub fn grid(&self, ty: GgmlType, j: usize) -> (f32, f32) {
        let d = self.d.to_f32();
        match ty {
            GgmlType::Q8_0 => (d, -128.0 * d),
            GgmlType::Q4_0 => (d, -8.0 * d),
            GgmlType::Q5_0 => (d, -16.0 * d),
            GgmlType::Q4_1 | GgmlType::Q5_1 => (d, self.dmin.to_f32()),
            GgmlType::Q4_K | GgmlType::Q5_K => (d * self.sc[j] as f32, -(self.dmin.to_f32() * self.m[j] as f32)),
            GgmlType::Q6_K => {
                let s = d * self.sc[j] as i8 as f32;
                (s, -32.0 * s)
            }
            GgmlType::Q3_K => {
                let s = d * (self.sc[j] as i32 - 32) as f32;
                (s, -4.0 * s)
            }
            GgmlType::Q2_K => (d * self.sc[j] as f32, -(self.dmin.to_f32() * self.m[j] as f32)),
            _ => unreachable!("{ty} is not a writable block type"),
        }
    }

    /// Append the block of `codes` (`ty.block_size()` codes in `0..=maxq`) to `out`.
    pub fn encode(&self, ty: GgmlType, codes: &[u8], out: &mut Vec<u8>) {
        debug_assert_eq!(codes.len(), ty.block_size());
        let start = out.len();
        let h = |x: f16| x.to_le_bytes();
        let nibbles = |lo: &[u8], hi: &[u8], out: &mut Vec<u8>| {
            out.extend(lo.iter().zip(hi).map(|(&a, &b)| (a & 0x0F) | ((b & 0x0F) << 4)));
        };
        // Q5_0/Q5_1: bit j of qh is the fifth bit of element j.
        let qh32 = |codes: &[u8]| -> [u8; 4] {
            let qh = codes.iter().enumerate().fold(0u32, |acc, (j, &u)| acc | (((u as u32 >> 4) & 1) << j));
            qh.to_le_bytes()
        };
        match ty {
            GgmlType::Q8_0 => {
                out.extend(h(self.d));
                out.extend(codes.iter().map(|&u| (u as i32 - 128) as i8 as u8));
            }
            GgmlType::Q4_0 => {
                out.extend(h(self.d));
                nibbles(&codes[..16], &codes[16..], out);
            }
            GgmlType::Q4_1 => {
                out.extend(h(self.d));
                out.extend(h(self.dmin));
                nibbles(&codes[..16], &codes[16..], out);
            }
            GgmlType::Q5_0 => {
                out.extend(h(self.d));
                out.extend(qh32(codes));
                nibbles(&codes[..16], &codes[16..], out);
            }
            GgmlType::Q5_1 => {
                out.extend(h(self.d));
                out.extend(h(self.dmin));
                out.extend(qh32(codes));
                nibbles(&codes[..16], &codes[16..], out);
            }
            GgmlType::Q4_K | GgmlType::Q5_K => {
                out.extend(h(self.d));
                out.extend(h(self.dmin));
                out.extend(self.packed_scales_k4());
                if ty == GgmlType::Q5_K {
                    let mut qh = [0u8; 32];
                    for (n, chunk) in codes.chunks_exact(64).enumerate() {
                        for j in 0..32 {
                            qh[j] |= ((chunk[j] >> 4) & 1) << (2 * n);
                            qh[j] |= ((chunk[j + 32] >> 4) & 1) << (2 * n + 1);
                        }
                    }
                    out.extend(qh);
                }
                for chunk in codes.chunks_exact(64) {
                    nibbles(&chunk[..32], &chunk[32..], out);
                }
            }
            GgmlType::Q6_K => {
                let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
                for (half, c) in codes.chunks_exact(128).enumerate() {
                    for l in 0..32 {
                        ql[64 * half + l] = (c[l] & 0x0F) | ((c[l + 64] & 0x0F) << 4);
                        ql[64 * half + l + 32] = (c[l + 32] & 0x0F) | ((c[l + 96] & 0x0F) << 4);
                        qh[32 * half + l] =
                            (c[l] >> 4) | ((c[l + 32] >> 4) << 2) | ((c[l + 64] >> 4) << 4) | ((c[l + 96] >> 4) << 6);
                    }
                }
                out.extend(ql);
                out.extend(qh);
                out.extend(self.sc);
                out.extend(h(self.d));
            }
            GgmlType::Q3_K => {
                let mut hmask = [0u8; 32];
                for (j, &u) in codes.iter().enumerate() {
                    hmask[j % 32] |= ((u >> 2) & 1) << (j / 32);
                }
                out.extend(hmask);
                out.extend(pack_2bit(codes));
                let mut s = [0u8; 12];
                for j in 0..16 {
                    let l = self.sc[j] & 63;
                    if j < 8 {
                        s[j] |= l & 0x0F;
                    } else {
                        s[j - 8] |= (l & 0x0F) << 4;
                    }
                    s[8 + j % 4] |= (l >> 4) << (2 * (j / 4));
                }
                out.extend(s);
                out.extend(h(self.d));
            }
            GgmlType::Q2_K => {
                out.extend((0..16).map(|j| (self.sc[j] & 0x0F) | ((self.m[j] & 0x0F) << 4)));
                out.extend(pack_2bit(codes));
                out.extend(h(self.d));
                out.extend(h(self.dmin));
            }
            _ => unreachable!("{ty} is not a writable block type"),
        }
        debug_assert_eq!(out.len() - start, ty.type_size());
    }

    /// The 12 bytes of 6-bit scales and mins of Q4_K / Q5_K (inverse of
    /// [`super::blocks::scale_min_k4`]).
    fn packed_scales_k4(&self) -> [u8; 12] {
        let mut q = [0u8; 12];
        for j in 0..8 {
            let (ls, lm) = (self.sc[j] & 63, self.m[j] & 63);
            if j < 4 {
                q[j] |= ls;
                q[j + 4] |= lm;
            } else {
                q[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
                q[j - 4] |= (ls >> 4) << 6;
                q[j] |= (lm >> 4) << 6;
            }
        }
        q
    }
}

/// The 2 low bits of 256 codes, four per byte (`qs` of Q2_K / Q3_K): byte `32h + l` holds
/// elements `128h + l + 32k` at bits `2k`.
fn pack_2bit(codes: &[u8]) -> [u8; 64] {
    let mut qs = [0u8; 64];
    for half in 0..2 {
        for l in 0..32 {
            let c = |k: usize| codes[128 * half + l + 32 * k] & 3;
            qs[32 * half + l] = c(0) | (c(1) << 2) | (c(2) << 4) | (c(3) << 6);
        }
    }
    qs
}

/// Encode one row: `headers` (one per block) and `codes` (`[cols]`) into ggml bytes.
pub fn encode_row(ty: GgmlType, headers: &[BlockHeader], codes: &[u8], out: &mut Vec<u8>) {
    for (h, c) in headers.iter().zip(codes.chunks_exact(ty.block_size())) {
        h.encode(ty, c, out);
    }
}

const _: () = assert!(QK_K == 256);

#[cfg(test)]
mod tests {
    use super::super::dequantize;
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_header(ty: GgmlType, rng: &mut impl Rng) -> BlockHeader {
        let f = |rng: &mut dyn rand::RngCore| {
            f16::from_f32(rng.random_range(-2.0f32..2.0) * 2f32.powi(rng.random_range(-12..4)))
        };
        let mut h = BlockHeader { d: f(rng), dmin: f(rng), ..Default::default() };
        for j in 0..16 {
            h.sc[j] = match ty {
                GgmlType::Q6_K => rng.random::<u8>(),
                GgmlType::Q2_K => rng.random_range(0..16),
                _ => rng.random_range(0..64),
            };
            h.m[j] = if ty == GgmlType::Q2_K { rng.random_range(0..16) } else { rng.random_range(0..64) };
        }
        h
    }

    /// Encoded bytes dequantize (with the ggml reference loops) to exactly `grid`.
    #[test]
    fn encoded_blocks_dequantize_to_the_grid_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for ty in WRITABLE {
            for _ in 0..200 {
                let h = random_header(ty, &mut rng);
                let codes: Vec<u8> = (0..ty.block_size()).map(|_| rng.random_range(0..=maxq(ty)) as u8).collect();
                let mut bytes = vec![];
                h.encode(ty, &codes, &mut bytes);
                assert_eq!(bytes.len(), ty.type_size(), "{ty}");
                let y = dequantize(ty, &bytes, ty.block_size()).unwrap();
                for (e, (&u, &v)) in codes.iter().zip(&y).enumerate() {
                    let (s, o) = h.grid(ty, e / sub_block(ty));
                    assert_eq!(s * u as f32 + o, v, "{ty} element {e} code {u} header {h:?}");
                }
            }
        }
    }
}
