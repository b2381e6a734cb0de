//! llama.cpp's quantization presets (`llama-quantize`'s type names, `llama_ftype`): the
//! type of each tensor by its role and layer, as `llama_tensor_get_type_impl` and
//! `tensor_type_fallback` of `llama-quant.cpp` choose them for a dense (non-MoE,
//! non-Falcon) model, so a file written here has the mix, and the size, of the
//! llama.cpp file of the same name.

use super::{GgmlType, QK_K};
use crate::error::{Error, Result};

/// What a tensor is, for the type rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorRole {
    TokenEmbd,
    Output,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    FfnGate,
    FfnUp,
    FfnDown,
}

/// A preset: its name, `general.file_type` id and base type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    pub ftype: u32,
    pub base: GgmlType,
}

/// The presets this tool writes (`llama_ftype` ids of `llama.h`).
pub const PRESETS: [Preset; 14] = [
    Preset { name: "Q2_K", ftype: 10, base: GgmlType::Q2_K },
    Preset { name: "Q3_K_S", ftype: 11, base: GgmlType::Q3_K },
    Preset { name: "Q3_K_M", ftype: 12, base: GgmlType::Q3_K },
    Preset { name: "Q3_K_L", ftype: 13, base: GgmlType::Q3_K },
    Preset { name: "Q8_0", ftype: 7, base: GgmlType::Q8_0 },
    Preset { name: "Q4_0", ftype: 2, base: GgmlType::Q4_0 },
    Preset { name: "Q4_1", ftype: 3, base: GgmlType::Q4_1 },
    Preset { name: "Q5_0", ftype: 8, base: GgmlType::Q5_0 },
    Preset { name: "Q5_1", ftype: 9, base: GgmlType::Q5_1 },
    Preset { name: "Q4_K_S", ftype: 14, base: GgmlType::Q4_K },
    Preset { name: "Q4_K_M", ftype: 15, base: GgmlType::Q4_K },
    Preset { name: "Q5_K_S", ftype: 16, base: GgmlType::Q5_K },
    Preset { name: "Q5_K_M", ftype: 17, base: GgmlType::Q5_K },
    Preset { name: "Q6_K", ftype: 18, base: GgmlType::Q6_K },
];

/// The type chosen for one tensor, and the fallback note when its width forced one.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub ty: GgmlType,
    /// e.g. "576 columns are not a multiple of 256 (Q4_K): Q5_0".
    pub fallback: Option<String>,
}

fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64).rem_euclid(3) == 2
}

impl Preset {
    /// The preset named `name` (case-insensitive: `q4_k_m`, `Q4_K_M`).
    pub fn parse(name: &str) -> Result<Self> {
        PRESETS.iter().find(|p| p.name.eq_ignore_ascii_case(name)).copied().ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
            Error::option("--gguf-type", format!("{name:?} is not a GGUF type this tool writes: {}", names.join(", ")))
        })
    }

    /// The type of a tensor of `role` in block `layer` of `n_layers`, `cols` wide; `tied`:
    /// the embedding doubles as the output; `imatrix`: calibration statistics are used
    /// (llama.cpp then guards the first `ffn_down`s of Q4_0/Q5_0 with Q4_1/Q5_1); `gqa`:
    /// query heads per key/value head.
    #[allow(clippy::too_many_arguments)]
    pub fn tensor_type(
        &self,
        role: TensorRole,
        layer: usize,
        n_layers: usize,
        cols: usize,
        tied: bool,
        imatrix: bool,
        gqa: usize,
    ) -> Choice {
        use GgmlType::*;
        let name = self.name;
        let mut ty = self.base;
        match role {
            TensorRole::Output | TensorRole::TokenEmbd if role == TensorRole::Output || tied => {
                ty = if !cols.is_multiple_of(ty.block_size()) {
                    Q8_0
                } else if ty != Q8_0 {
                    Q6_K
                } else {
                    ty
                };
            }
            TensorRole::TokenEmbd => {}
            TensorRole::AttnV => {
                ty = match name {
                    "Q2_K" if gqa >= 4 => Q4_K,
                    "Q2_K" => Q3_K,
                    "Q3_K_M" if layer < 2 => Q5_K,
                    "Q3_K_M" => Q4_K,
                    "Q3_K_L" => Q5_K,
                    "Q4_K_M" | "Q5_K_M" if use_more_bits(layer, n_layers) => Q6_K,
                    "Q4_K_S" if layer < 4 => Q5_K,
                    _ => ty,
                };
            }
            TensorRole::FfnDown => {
                ty = match name {
                    "Q2_K" => Q3_K,
                    "Q3_K_M" if layer < n_layers / 16 => Q5_K,
                    "Q3_K_M" => Q4_K,
                    "Q3_K_L" => Q5_K,
                    "Q4_K_M" | "Q5_K_M" if use_more_bits(layer, n_layers) => Q6_K,
                    "Q4_K_S" if layer < n_layers / 8 => Q5_K,
                    "Q4_0" if imatrix && layer < n_layers / 8 => Q4_1,
                    "Q5_0" if imatrix && layer < n_layers / 8 => Q5_1,
                    _ => ty,
                };
            }
            TensorRole::AttnOutput => {
                ty = match name {
                    "Q2_K" => Q3_K,
                    "Q3_K_M" => Q4_K,
                    "Q3_K_L" => Q5_K,
                    _ => ty,
                };
            }
            _ => {}
        }
        if cols.is_multiple_of(ty.block_size()) {
            return Choice { ty, fallback: None };
        }
        let to = match ty {
            Q2_K | Q3_K => Q4_0,
            Q4_K => Q5_0,
            Q5_K => Q5_1,
            Q6_K => Q8_0,
            other => other,
        };
        let note = format!("{cols} columns are not a multiple of {} ({ty})", ty.block_size());
        let to = if cols.is_multiple_of(to.block_size()) { to } else { F16 };
        Choice { ty: to, fallback: Some(format!("{note}: {to}")) }
    }
}

const _: () = assert!(QK_K == 256);

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType::*;

    #[test]
    fn q4_k_m_mix_matches_llama_cpp() {
        let p = Preset::parse("q4_k_m").unwrap();
        assert_eq!(p.ftype, 15);
        // 30 layers (SmolLM2-135M): use_more_bits picks 0..3, 26..29 and every third from 5.
        let more: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(more, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
        assert_eq!(p.tensor_type(TensorRole::FfnDown, 5, 30, 1536, true, false, 3).ty, Q6_K);
        assert_eq!(p.tensor_type(TensorRole::FfnDown, 6, 30, 1536, true, false, 3).ty, Q4_K);
        let c = p.tensor_type(TensorRole::AttnQ, 6, 30, 576, true, false, 3);
        assert_eq!(c.ty, Q5_0);
        assert!(c.fallback.unwrap().contains("576 columns"));
        assert_eq!(p.tensor_type(TensorRole::AttnV, 0, 30, 576, true, false, 3).ty, Q8_0); // Q6_K -> Q8_0
        assert_eq!(p.tensor_type(TensorRole::TokenEmbd, 0, 30, 576, true, false, 3).ty, Q8_0);
        assert_eq!(p.tensor_type(TensorRole::TokenEmbd, 0, 30, 4096, false, false, 3).ty, Q4_K);
        assert_eq!(p.tensor_type(TensorRole::Output, 0, 30, 4096, false, false, 3).ty, Q6_K);
        let q40 = Preset::parse("Q4_0").unwrap();
        assert_eq!(q40.tensor_type(TensorRole::FfnDown, 2, 30, 1536, true, true, 3).ty, Q4_1);
        assert_eq!(q40.tensor_type(TensorRole::FfnDown, 2, 30, 1536, true, false, 3).ty, Q4_0);
        assert_eq!(q40.tensor_type(TensorRole::AttnK, 2, 30, 576, true, true, 3).ty, Q4_0);
        assert_eq!(q40.tensor_type(TensorRole::AttnK, 2, 30, 100, true, true, 3).ty, F16);
        let e = Preset::parse("iq4_xs").unwrap_err().to_string();
        assert!(e.contains("iq4_xs") && e.contains("Q4_K_M"), "{e}");
        let q3 = Preset::parse("Q3_K_M").unwrap();
        assert_eq!(q3.tensor_type(TensorRole::AttnV, 1, 30, 4096, true, false, 3).ty, Q5_K);
        assert_eq!(q3.tensor_type(TensorRole::AttnV, 2, 30, 4096, true, false, 3).ty, Q4_K);
        assert_eq!(q3.tensor_type(TensorRole::FfnDown, 0, 30, 1536, true, false, 3).ty, Q5_K);
        assert_eq!(q3.tensor_type(TensorRole::FfnDown, 1, 30, 1536, true, false, 3).ty, Q4_K);
        assert_eq!(q3.tensor_type(TensorRole::FfnGate, 2, 30, 576, true, false, 3).ty, Q4_0);
        let q2 = Preset::parse("Q2_K").unwrap();
        assert_eq!(q2.tensor_type(TensorRole::AttnV, 2, 30, 4096, true, false, 3).ty, Q3_K);
        assert_eq!(q2.tensor_type(TensorRole::AttnV, 2, 30, 4096, true, false, 4).ty, Q4_K);
        assert_eq!(q2.tensor_type(TensorRole::AttnQ, 2, 30, 4096, true, false, 3).ty, Q2_K);
    }
}
