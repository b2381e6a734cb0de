//! The AWQ GEMM checkpoint layout (AutoAWQ `awq/modules/linear/gemm.py`,
//! `WQLinear_GEMM.from_linear`; read by transformers and vLLM `quantization/awq.py`).
//!
//! Per quantized linear `<p>`, 4-bit codes, `in`/`out` features, `G = in / group_size`:
//!
//! | tensor        | dtype | shape          | content                                        |
//! |---------------|-------|----------------|------------------------------------------------|
//! | `<p>.qweight` | I32   | `[in, out/8]`  | codes packed along the output dim, interleaved |
//! | `<p>.qzeros`  | I32   | `[G, out/8]`   | raw zero points, packed like `qweight`         |
//! | `<p>.scales`  | F16   | `[G, out]`     | scales                                         |
//!
//! Packing rule: word `j` of a row holds output columns `8j .. 8j+8`; nibble `k` (bits
//! `4k .. 4k+4`, LSB first) holds column `8j + AWQ_PACK_ORDER[k]`, with
//! `AWQ_PACK_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]` (so the low nibble is column 0, the next
//! column 2, ..., the top nibble column 7; readers undo it with `[0, 4, 1, 5, 2, 6, 3, 7]`).
//! `w[o][i] = scales[g][o] · (q[i][o] - zeros[g][o])`, `g = i / group_size`: zero points are
//! stored as they are (no GPTQ "minus one"), so 0 is storable.
//!
//! What it cannot hold: other than 4 bits, a ragged last group (`in % group_size != 0`),
//! `out % 8 != 0`, per-tensor/per-channel parameters (written as one group of `in` is not
//! what AutoAWQ writes for `-1`, so they are refused), act-order, FP8. A symmetric scheme
//! is written with its constant zero points (`2^(bits-1)`) and `zero_point: true`, and
//! reads back as asymmetric with bit-identical dequantized weights.

use super::pack::{check_tensor, read_floats, read_words, RawTensor};
use super::{Granularity, NumberFormat, QuantScheme, QuantizedTensor};
use crate::error::{Error, Result};
use safetensors::tensor::TensorView;
use serde_json::{json, Value};
use std::path::Path;

/// Nibble `k` of a word holds output column `8j + AWQ_PACK_ORDER[k]`.
pub const AWQ_PACK_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];
/// The only width AutoAWQ's GEMM kernels (and vLLM's) take.
pub const AWQ_BITS: u8 = 4;
/// Codes per int32 word.
const PACK: usize = 32 / AWQ_BITS as usize;
const _: () = assert!(PACK == AWQ_PACK_ORDER.len());

/// The `quantization_config` of an AWQ GEMM checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwqConfig {
    pub group_size: usize,
}

fn unstorable(name: &str, why: impl std::fmt::Display) -> Error {
    Error::tensor(name, format!("cannot be stored in the awq GEMM layout: {why}"))
}

impl AwqConfig {
    /// The one config that stores all `tensors`; errors name the first tensor that does not fit.
    pub fn for_tensors<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a QuantizedTensor)>) -> Result<Self> {
        let mut first: Option<(&str, usize)> = None;
        for (name, q) in tensors {
            let g = check_storable(name, q)?;
            match first {
                None => first = Some((name, g)),
                Some((n0, g0)) if g0 != g => {
                    return Err(Error::option(
                        "format",
                        format!("awq stores one group size per checkpoint: {n0} has {g0} but {name} has {g}"),
                    ))
                }
                _ => {}
            }
        }
        let (_, group_size) = first.ok_or_else(|| Error::option("format", "no quantized tensors to write"))?;
        Ok(Self { group_size })
    }

    /// Parse `quantization_config` (AutoAWQ keys `w_bit`/`q_group_size` accepted too).
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let int = |keys: &[&str]| keys.iter().find_map(|k| v.get(*k).and_then(Value::as_i64));
        let bits = int(&["bits", "w_bit"])
            .ok_or_else(|| Error::config(path, "awq quantization_config has no integer \"bits\""))?;
        if bits != AWQ_BITS as i64 {
            return Err(Error::config(path, format!("awq bits = {bits}; the GEMM layout holds 4-bit codes only")));
        }
        let group_size = match int(&["group_size", "q_group_size"]) {
            Some(g) if g > 0 => g as usize,
            other => {
                return Err(Error::config(path, format!("awq group_size = {other:?}; expected a positive integer")))
            }
        };
        match v.get("version").and_then(Value::as_str).map(str::to_ascii_lowercase).as_deref() {
            None | Some("gemm") => {}
            Some(other) => return Err(Error::config(path, format!("awq version {other:?} is not supported (gemm)"))),
        }
        Ok(Self { group_size })
    }

    /// The `quantization_config` entry of config.json (AutoAWQ's keys, as vLLM reads them);
    /// `skipped`: linears left unquantized.
    pub fn quantization_config(&self, skipped: &[String]) -> Value {
        json!({
            "quant_method": "awq",
            "bits": AWQ_BITS,
            "group_size": self.group_size,
            "zero_point": true,
            "version": "gemm",
            "modules_to_not_convert": if skipped.is_empty() { Value::Null } else { json!(skipped) },
        })
    }

    /// The scheme of a linear read under this config.
    pub fn scheme(&self) -> QuantScheme {
        QuantScheme {
            format: NumberFormat::Int { bits: AWQ_BITS },
            granularity: Granularity::Group(self.group_size),
            symmetric: false,
        }
    }
}

/// Whether a linear `[rows = out, cols = in]` in `scheme` fits the layout (checked before
/// a long quantization run as well as at write time); returns the group size.
pub fn check_shape(name: &str, scheme: QuantScheme, rows: usize, cols: usize) -> Result<usize> {
    if scheme.format != (NumberFormat::Int { bits: AWQ_BITS }) {
        return Err(unstorable(name, format!("scheme {scheme} (4-bit integer codes only)")));
    }
    let Granularity::Group(g) = scheme.granularity else {
        return Err(unstorable(name, format!("scheme {scheme} (groups of input columns only)")));
    };
    if cols % g != 0 {
        return Err(unstorable(name, format!("in = {cols} is not a multiple of group_size = {g} (no ragged last group; use gptq or compressed-tensors)")));
    }
    if rows % PACK != 0 {
        return Err(unstorable(name, format!("out = {rows} is not a multiple of {PACK}")));
    }
    Ok(g)
}

/// The group size of `q` if the layout can hold it.
fn check_storable(name: &str, q: &QuantizedTensor) -> Result<usize> {
    let g = check_shape(name, q.scheme, q.rows, q.cols)?;
    if q.g_idx.is_some() {
        return Err(unstorable(name, "act-order g_idx"));
    }
    Ok(g)
}

/// Pack one line of `8·n` codes (output columns) into `n` words in AWQ's interleaved order.
pub fn pack_line(codes: &[u8]) -> Vec<u32> {
    assert_eq!(codes.len() % PACK, 0, "pack_line: {} codes is not a multiple of {PACK}", codes.len());
    codes
        .chunks_exact(PACK)
        .map(|c| AWQ_PACK_ORDER.iter().enumerate().fold(0u32, |w, (k, &col)| w | ((c[col] as u32 & 0xF) << (4 * k))))
        .collect()
}

/// Inverse of [`pack_line`].
pub fn unpack_line(words: &[u32]) -> Vec<u8> {
    let mut out = vec![0u8; words.len() * PACK];
    for (j, &w) in words.iter().enumerate() {
        for (k, &col) in AWQ_PACK_ORDER.iter().enumerate() {
            out[j * PACK + col] = ((w >> (4 * k)) & 0xF) as u8;
        }
    }
    out
}

/// The AWQ tensors of one linear (`prefix` = module name), in name order.
pub fn to_tensors(q: &QuantizedTensor, prefix: &str) -> Result<Vec<RawTensor>> {
    let g = check_storable(prefix, q)?;
    check_tensor(prefix, q)?;
    let (rows, cols, groups) = (q.rows, q.cols, q.cols / g);
    let zeros = q.zeros.as_ref().expect("checked: integer tensors carry zero points");
    // [in, out] codes and [G, out] parameters: the transposes of ours.
    let mut qweight = Vec::with_capacity(cols * rows / PACK);
    let mut line = vec![0u8; rows];
    for c in 0..cols {
        for (r, v) in line.iter_mut().enumerate() {
            *v = q.codes[r * cols + c];
        }
        qweight.extend(pack_line(&line));
    }
    let (mut qzeros, mut scales) = (Vec::with_capacity(groups * rows / PACK), Vec::with_capacity(groups * rows));
    for gi in 0..groups {
        for (r, v) in line.iter_mut().enumerate() {
            *v = zeros[q.param_index(r, gi)];
            scales.push(q.scales[q.param_index(r, gi)]);
        }
        qzeros.extend(pack_line(&line));
    }
    Ok(vec![
        RawTensor::from_words(format!("{prefix}.qweight"), &[cols, rows / PACK], &qweight),
        RawTensor::from_words(format!("{prefix}.qzeros"), &[groups, rows / PACK], &qzeros),
        RawTensor::from_f16(format!("{prefix}.scales"), &[groups, rows], &scales),
    ])
}

/// Rebuild one linear from its AWQ tensors, checking every shape against `cfg`.
pub fn from_tensors<'a>(
    prefix: &str,
    get: &dyn Fn(&str) -> Option<TensorView<'a>>,
    cfg: &AwqConfig,
) -> Result<QuantizedTensor> {
    let name = |s: &str| format!("{prefix}.{s}");
    let need = |s: &str| {
        get(&name(s)).ok_or_else(|| Error::tensor(name(s), "missing (awq linears need qweight, qzeros, scales)"))
    };
    let (qweight, qzeros, scales) = (need("qweight")?, need("qzeros")?, need("scales")?);
    let (cols, packed_out) = match qweight.shape() {
        [a, b] => (*a, *b),
        other => return Err(Error::tensor(name("qweight"), format!("shape {other:?} is not 2-D"))),
    };
    let rows = packed_out * PACK;
    if cols % cfg.group_size != 0 {
        return Err(Error::tensor(
            name("qweight"),
            format!("in = {cols} is not a multiple of config group_size = {}", cfg.group_size),
        ));
    }
    let groups = cols / cfg.group_size;
    for (t, view, shape) in [("qzeros", &qzeros, vec![groups, packed_out]), ("scales", &scales, vec![groups, rows])] {
        if view.shape() != shape.as_slice() {
            let msg = format!(
                "shape {:?}, but qweight {:?} with config group_size = {} needs {shape:?}",
                view.shape(),
                qweight.shape(),
                cfg.group_size
            );
            return Err(Error::tensor(name(t), msg));
        }
    }
    let (qw, qz, sc) = (
        read_words(&name("qweight"), &qweight)?,
        read_words(&name("qzeros"), &qzeros)?,
        read_floats(&name("scales"), &scales)?,
    );
    if let Some(i) = sc.iter().position(|s| *s <= 0.0) {
        return Err(Error::tensor(
            name("scales"),
            format!("scale {} at group {} column {} is not positive", sc[i], i / rows, i % rows),
        ));
    }
    let mut codes = vec![0u8; rows * cols];
    for (c, words) in qw.chunks_exact(packed_out).enumerate() {
        for (r, v) in unpack_line(words).into_iter().enumerate() {
            codes[r * cols + c] = v;
        }
    }
    let (mut scales_rg, mut zeros_rg) = (vec![0.0f32; rows * groups], vec![0u8; rows * groups]);
    for (g, words) in qz.chunks_exact(packed_out).enumerate() {
        for (r, z) in unpack_line(words).into_iter().enumerate() {
            zeros_rg[r * groups + g] = z;
            scales_rg[r * groups + g] = sc[g * rows + r];
        }
    }
    Ok(QuantizedTensor {
        scheme: cfg.scheme(),
        rows,
        cols,
        codes,
        scales: scales_rg,
        zeros: Some(zeros_rg),
        g_idx: None,
        ggml: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(ts: &'a [RawTensor]) -> impl Fn(&str) -> Option<TensorView<'a>> + 'a {
        move |n| ts.iter().find(|t| t.name == n).map(RawTensor::view)
    }

    #[test]
    fn pack_line_follows_autoawq_order() {
        // Columns 0..8 hold codes 0..8: nibble k holds column ORDER[k].
        assert_eq!(pack_line(&[0, 1, 2, 3, 4, 5, 6, 7]), vec![0x7531_6420]);
        let codes: Vec<u8> = (0..32).map(|i| (i * 7 % 16) as u8).collect();
        assert_eq!(unpack_line(&pack_line(&codes)), codes);
    }

    #[test]
    fn round_trip_and_refusals() {
        let s = QuantScheme::int(4).unwrap().asymmetric().unwrap().group(32).unwrap();
        let (rows, cols) = (16, 64);
        let n = rows * 2;
        let q = QuantizedTensor {
            scheme: s,
            rows,
            cols,
            codes: (0..rows * cols).map(|i| ((i * 5 + i / 7) % 16) as u8).collect(),
            scales: (0..n).map(|i| 0.25 + i as f32 / 32.0).collect(),
            zeros: Some((0..n).map(|i| (i % 16) as u8).collect()),
            g_idx: None,
            ggml: None,
        };
        let ts = to_tensors(&q, "m").unwrap();
        let cfg = AwqConfig::for_tensors([("m", &q)]).unwrap();
        assert_eq!(from_tensors("m", &lookup(&ts), &cfg).unwrap(), q, "zero point 0 included");
        let back = AwqConfig::from_json(&cfg.quantization_config(&[]), Path::new("c")).unwrap();
        assert_eq!(back, cfg);
        let ragged = QuantizedTensor {
            scheme: s.group(48).unwrap(),
            scales: vec![1.0; rows * 2],
            zeros: Some(vec![8; rows * 2]),
            ..q.clone()
        };
        assert!(to_tensors(&ragged, "m").unwrap_err().to_string().contains("not a multiple of group_size"));
        let three = QuantizedTensor {
            scheme: QuantScheme::int(3).unwrap().group(32).unwrap(),
            codes: vec![0; rows * cols],
            ..q.clone()
        };
        assert!(to_tensors(&three, "m").unwrap_err().to_string().contains("4-bit"));
        let e = AwqConfig::from_json(&json!({"bits": 4, "group_size": 128, "version": "gemv"}), Path::new("c"))
            .unwrap_err();
        assert!(e.to_string().contains("gemv"), "{e}");
    }
}
