//! GGML tensor types: ids, block sizes, and dequantization (block layouts in
//! [`blocks`]).
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

/// Super-block size of the k-quants.
pub const QK_K: usize = 256;

/// A GGML tensor type id as stored in GGUF tensor infos (`enum ggml_type`).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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
        matches!(self, F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
pub mod blocks;
pub mod encode;
pub mod preset;
use blocks::arr;
pub use blocks::*;

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
        GgmlType::Q5_0 => dequantize_blocks::<BlockQ5_0>(src, dst),
        GgmlType::Q5_1 => dequantize_blocks::<BlockQ5_1>(src, dst),
        GgmlType::Q2_K => dequantize_blocks::<BlockQ2K>(src, dst),
        GgmlType::Q3_K => dequantize_blocks::<BlockQ3K>(src, dst),
        GgmlType::Q4_K => dequantize_blocks::<BlockQ4K>(src, dst),
        GgmlType::Q5_K => dequantize_blocks::<BlockQ5K>(src, dst),
        GgmlType::Q6_K => dequantize_blocks::<BlockQ6K>(src, dst),
        _ => {
            return Err(Error::Other(format!(
                "GGML type {ty} (id {}) cannot be dequantized yet; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K",
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
        assert_eq!(BlockQ5_0::BYTES, GgmlType::Q5_0.type_size());
        assert_eq!(BlockQ5_1::BYTES, GgmlType::Q5_1.type_size());
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
    fn parallel_path_matches_block_by_block() {
        // 3000 Q8_0 blocks (several parallel tasks, the last one partial).
        let nb = 3000;
        let bytes: Vec<u8> =
            (0..nb * 34).map(|i| (i * 7 % 251) as u8 & if i % 34 == 1 { 0x3F } else { 0xFF }).collect();
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
        let e = dequantize(GgmlType::IQ4_NL, &[0u8; 18], 32).unwrap_err().to_string();
        assert!(e.contains("IQ4_NL") && e.contains("cannot be dequantized"), "{e}");
    }
}
