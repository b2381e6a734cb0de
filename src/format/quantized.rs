//! `QuantizedTensor`: the exchange type between quantizers, formats and the
//! quantized linear layers.
//!
//! Layout (in memory; on-disk packings live in the format modules):
//! - `codes`: one `u8` per weight, row-major `[rows, cols]` (`rows` = output features,
//!   `cols` = input features). Integer schemes hold unsigned codes in `[0, 2^bits)`;
//!   FP8 schemes hold the raw FP8 byte.
//! - `scales`: `[rows, groups_per_row]` row-major; a per-tensor scheme holds one value.
//! - `zeros`: integer zero points, same shape as `scales`; `None` for FP8. Symmetric
//!   integer schemes still carry them (all `2^(bits-1)`) so dequantization has one rule.
//! - `g_idx`: act-order only: the group of each input column, `[cols]`. Without it,
//!   column `c` belongs to group `c / group_size`.
//!
//! Dequantization: `w[r][c] = scale[r][g] * (codes[r][c] - zero[r][g])` with
//! `g = g_idx[c]` (or `c / group_size`); FP8: `w = scale[r] * fp8_to_f32(codes[r][c])`.

use super::ggml::encode::BlockHeader;
use super::scheme::{Granularity, NumberFormat, QuantScheme};
use std::ops::Range;

#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedTensor {
    pub scheme: QuantScheme,
    pub rows: usize,
    pub cols: usize,
    pub codes: Vec<u8>,
    pub scales: Vec<f32>,
    pub zeros: Option<Vec<u8>>,
    pub g_idx: Option<Vec<u32>>,
    /// ggml block types only ([`NumberFormat::Ggml`]): the block headers and the offset
    /// of each sub-block (`scales` holds their scales; `zeros` is `None`).
    pub ggml: Option<GgmlParams>,
}

/// The grid of a tensor in a ggml block type: `w = scale · code + offset` per sub-block.
#[derive(Clone, Debug, PartialEq)]
pub struct GgmlParams {
    /// `[rows, cols / block_size]`: the non-code fields of every block.
    pub headers: Vec<BlockHeader>,
    /// `[rows, cols / sub_block]`, beside `scales`.
    pub offsets: Vec<f32>,
}

impl QuantizedTensor {
    pub fn groups_per_row(&self) -> usize {
        self.scheme.groups_per_row(self.cols)
    }

    /// Index into `scales`/`zeros` of row `r`, group `g`.
    #[inline]
    pub fn param_index(&self, r: usize, g: usize) -> usize {
        match self.scheme.granularity {
            Granularity::PerTensor => 0,
            _ => r * self.groups_per_row() + g,
        }
    }

    /// Group of each input column (`g_idx` if present, else `c / group_width`).
    pub fn column_groups(&self) -> Vec<u32> {
        match &self.g_idx {
            Some(g) => g.clone(),
            None => {
                let w = self.scheme.group_width(self.cols);
                (0..self.cols).map(|c| (c / w) as u32).collect()
            }
        }
    }

    /// Dequantize rows `rows` into `out` (`[rows.len(), cols]` row-major).
    pub fn dequantize_rows(&self, rows: Range<usize>, out: &mut [f32]) {
        assert_eq!(out.len(), rows.len() * self.cols, "dequantize_rows: output buffer shape");
        let width = self.scheme.group_width(self.cols);
        if let Some(g) = &self.ggml {
            for (i, r) in rows.enumerate() {
                let codes = &self.codes[r * self.cols..(r + 1) * self.cols];
                let dst = &mut out[i * self.cols..(i + 1) * self.cols];
                for (k, (dchunk, qchunk)) in dst.chunks_mut(width).zip(codes.chunks(width)).enumerate() {
                    let p = self.param_index(r, k);
                    let (s, o) = (self.scales[p], g.offsets[p]);
                    for (d, &q) in dchunk.iter_mut().zip(qchunk) {
                        *d = s * q as f32 + o;
                    }
                }
            }
            return;
        }
        let fp8_table = match self.scheme.format {
            NumberFormat::Int { .. } | NumberFormat::Ggml(_) => None,
            f => Some(super::fp8::decode_table(f)),
        };
        for (i, r) in rows.enumerate() {
            let codes = &self.codes[r * self.cols..(r + 1) * self.cols];
            let dst = &mut out[i * self.cols..(i + 1) * self.cols];
            match (&fp8_table, &self.g_idx) {
                (Some(table), _) => {
                    let s = self.scales[self.param_index(r, 0)];
                    for (d, &q) in dst.iter_mut().zip(codes) {
                        *d = s * table[q as usize];
                    }
                }
                (None, Some(g_idx)) => {
                    let zeros = self.zeros.as_ref().expect("integer tensor without zero points");
                    for c in 0..self.cols {
                        let k = self.param_index(r, g_idx[c] as usize);
                        dst[c] = self.scales[k] * (codes[c] as f32 - zeros[k] as f32);
                    }
                }
                (None, None) => {
                    let zeros = self.zeros.as_ref().expect("integer tensor without zero points");
                    for (g, (dchunk, qchunk)) in dst.chunks_mut(width).zip(codes.chunks(width)).enumerate() {
                        let k = self.param_index(r, g);
                        let (s, z) = (self.scales[k], zeros[k] as f32);
                        for (d, &q) in dchunk.iter_mut().zip(qchunk) {
                            *d = s * (q as f32 - z);
                        }
                    }
                }
            }
        }
    }

    /// The whole matrix in f32, `[rows, cols]`. For tests and small tensors only:
    /// inference dequantizes tile by tile through [`Self::dequantize_rows`].
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        self.dequantize_rows(0..self.rows, &mut out);
        out
    }

    /// Bytes of the weight as stored on disk: packed codes, f16 scales (f32 for FP8),
    /// packed zero points when asymmetric, and the g_idx.
    pub fn storage_bits(&self) -> u64 {
        if let NumberFormat::Ggml(ty) = self.scheme.format {
            let blocks = (self.rows * self.cols / ty.block_size()) as u64;
            return blocks * ty.type_size() as u64 * 8;
        }
        let codes = self.rows as u64 * self.cols as u64 * self.scheme.bits() as u64;
        let scale_bits = if self.scheme.is_fp8() { 32 } else { 16 };
        let params = self.scales.len() as u64 * scale_bits;
        let zeros = if self.scheme.symmetric { 0 } else { self.scales.len() as u64 * self.scheme.bits() as u64 };
        let g_idx = self.g_idx.as_ref().map_or(0, |g| g.len() as u64 * 32);
        codes + params + zeros + g_idx
    }
}
