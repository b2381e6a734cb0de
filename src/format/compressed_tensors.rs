//! The compressed-tensors checkpoint layout (github.com/vllm-project/compressed-tensors,
//! `compressors/quantized_compressors/pack_quantized.py` and `naive_quantized.py`; read by
//! vLLM `quantization/compressed_tensors/` and transformers).
//!
//! `pack-quantized` (integer weights), per linear `<p>` with `b` bits, `f = 32 / b`,
//! `G` scale groups per row (1 for channel):
//!
//! | tensor                  | dtype | shape              | content                                    |
//! |-------------------------|-------|--------------------|--------------------------------------------|
//! | `<p>.weight_packed`     | I32   | `[out, ceil(in/f)]`| `q_signed + 2^(b-1)` packed along the input dim ([`PackRule::WordAligned`]) |
//! | `<p>.weight_scale`      | F16   | `[out, G]` (`[1]` tensor) | scales                              |
//! | `<p>.weight_shape`      | I64   | `[2]`              | `[out, in]`                                |
//! | `<p>.weight_zero_point` | I32   | `[ceil(out/f), G]` | asymmetric only: `zp_signed + 2^(b-1)` packed along the output dim (I8 `[1]`, unpacked signed, for tensor strategy) |
//! | `<p>.weight_g_idx`      | I32   | `[in]`             | `actorder: "group"` only                   |
//!
//! compressed-tensors quantizes to signed `q_s ∈ [-2^(b-1), 2^(b-1))` with signed zero points
//! and `w = scale · (q_s - zp_s)`; `pack_to_int32` adds `2^(b-1)` before packing. Our unsigned
//! codes are exactly `q_s + 2^(b-1)` (and zeros `zp_s + 2^(b-1)`, `2^(b-1)` when symmetric),
//! so the packed fields are our codes unchanged.
//!
//! `float-quantized` (FP8 E4M3): `<p>.weight` F8_E4M3 `[out, in]` (raw codes) and
//! `<p>.weight_scale` F32 `[out, 1]` (channel) or `[1]` (tensor). compressed-tensors has no
//! E5M2 weight type (`type: float, num_bits: 8` is `torch.float8_e4m3fn`): E5M2 weights are
//! written as `F8_E5M2` tensors under the same config and told apart by the tensor dtype
//! when read. This tool loads them; vLLM does not (it expects E4M3).

use super::pack::{check_tensor, pack_matrix, packed_words, read_floats, read_ints, unpack_tensor};
use super::pack::{Axis, PackRule, RawTensor};
use super::{Granularity, NumberFormat, QuantScheme, QuantizedTensor};
use crate::error::{Error, Result};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// `format` of the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtFormat {
    /// Integer codes packed in int32 (`pack-quantized`).
    PackQuantized,
    /// FP8 E4M3 weights stored as `F8_E4M3` (`float-quantized`).
    FloatQuantized,
    /// Integer codes one per `I8` (`int-quantized`): the format vLLM reads W8A8 INT8 from
    /// (it applies `input_activations` only in int/float/naive-quantized checkpoints).
    IntQuantized,
}

impl CtFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            CtFormat::PackQuantized => "pack-quantized",
            CtFormat::FloatQuantized => "float-quantized",
            CtFormat::IntQuantized => "int-quantized",
        }
    }
}

/// The `weights` quantization args of one config group, reduced to what a stored weight
/// needs. `scheme` is ours; `actorder` says whether `weight_g_idx` is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtWeights {
    pub scheme: QuantScheme,
    pub actorder: bool,
}

impl CtWeights {
    /// Errors for a scheme compressed-tensors cannot store (E5M2).
    pub fn new(name: &str, scheme: QuantScheme, actorder: bool) -> Result<Self> {
        if actorder && !matches!(scheme.granularity, Granularity::Group(_)) {
            return Err(Error::tensor(
                name,
                format!(
                    "act-order g_idx with {scheme}: compressed-tensors allows actorder only with the group strategy"
                ),
            ));
        }
        Ok(Self { scheme, actorder })
    }

    pub fn format(&self) -> CtFormat {
        if self.scheme.is_fp8() {
            CtFormat::FloatQuantized
        } else {
            CtFormat::PackQuantized
        }
    }

    /// The `weights` object of a config group (compressed-tensors `QuantizationArgs` keys).
    pub fn to_json(&self) -> Value {
        let (strategy, group_size) = match self.scheme.granularity {
            Granularity::PerTensor => ("tensor", Value::Null),
            Granularity::PerChannel => ("channel", Value::Null),
            Granularity::Group(n) => ("group", json!(n)),
        };
        json!({
            "num_bits": self.scheme.bits(),
            "type": if self.scheme.is_fp8() { "float" } else { "int" },
            "symmetric": self.scheme.symmetric,
            "strategy": strategy,
            "group_size": group_size,
            "block_structure": null,
            "dynamic": false,
            "actorder": if self.actorder { json!("group") } else { Value::Null },
            "observer": "minmax",
            "observer_kwargs": {},
        })
    }

    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let err = |m: String| Error::config(path, format!("compressed-tensors weights {v}: {m}"));
        let bits = v.get("num_bits").and_then(Value::as_u64).unwrap_or(8);
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("int");
        let symmetric = v.get("symmetric").and_then(Value::as_bool).unwrap_or(true);
        let group_size = v.get("group_size").and_then(Value::as_i64);
        let strategy = match v.get("strategy").and_then(Value::as_str) {
            Some(s) => s.to_string(),
            None => match group_size {
                None => "tensor".into(),
                Some(-1) => "channel".into(),
                Some(_) => "group".into(),
            },
        };
        let granularity = match (strategy.as_str(), group_size) {
            ("tensor", _) => Granularity::PerTensor,
            ("channel", _) => Granularity::PerChannel,
            ("group", Some(n)) if n > 0 => Granularity::Group(n as usize),
            (s, g) => {
                return Err(err(format!(
                    "strategy {s:?} with group_size {g:?} is not supported (tensor, channel, group > 0)"
                )))
            }
        };
        let format = match (kind, bits) {
            ("int", 2 | 3 | 4 | 8) => NumberFormat::Int { bits: bits as u8 },
            ("float", 8) => NumberFormat::Fp8E4M3,
            (k, b) => return Err(err(format!("type {k:?} with num_bits {b} is not supported (int 2/3/4/8, float 8)"))),
        };
        if format == NumberFormat::Fp8E4M3 && (!symmetric || matches!(granularity, Granularity::Group(_))) {
            return Err(err("FP8 weights must be symmetric, per tensor or per channel".into()));
        }
        let actorder = match v.get("actorder") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "group",
            Some(other) => return Err(err(format!("actorder {other} is not understood"))),
        };
        Ok(Self { scheme: QuantScheme { format, granularity, symmetric }, actorder })
    }
}

/// A config group: module `targets` (`"Linear"`, exact names, or `re:` patterns) and weights.
#[derive(Clone, Debug, PartialEq)]
pub struct CtGroup {
    pub targets: Vec<Target>,
    pub weights: CtWeights,
}

/// `quantization_config` of a compressed-tensors checkpoint (weights only are interpreted;
/// activation args stay in the raw config for whoever runs activation quantization).
#[derive(Clone, Debug, PartialEq)]
pub struct CtConfig {
    pub format: CtFormat,
    /// In `group_0, group_1, ...` order.
    pub groups: Vec<CtGroup>,
    pub ignore: Vec<Target>,
}

impl CtConfig {
    /// One config group per distinct (scheme, act-order); targets `["Linear"]` when there is
    /// one group, else the explicit module names. `ignore`: linears left in full precision.
    pub fn for_tensors(tensors: &BTreeMap<String, QuantizedTensor>, ignore: Vec<String>) -> Result<Self> {
        let mut by_weights: Vec<(CtWeights, Vec<String>)> = vec![];
        for (name, q) in tensors {
            let w = CtWeights::new(name, q.scheme, q.g_idx.is_some())?;
            match by_weights.iter_mut().find(|(k, _)| *k == w) {
                Some((_, names)) => names.push(name.clone()),
                None => by_weights.push((w, vec![name.clone()])),
            }
        }
        let format = match by_weights.first() {
            None => return Err(Error::option("format", "no quantized tensors to write")),
            Some((w, _)) => w.format(),
        };
        if let Some((w, names)) = by_weights.iter().find(|(w, _)| w.format() != format) {
            let (w0, n0) = &by_weights[0];
            return Err(Error::option(
                "format",
                format!(
                    "compressed-tensors stores one format per checkpoint: {} is {} but {} is {}",
                    n0[0], w0.scheme, names[0], w.scheme
                ),
            ));
        }
        let single = by_weights.len() == 1;
        let groups = by_weights
            .into_iter()
            .map(|(weights, names)| {
                let names = if single { vec!["Linear".to_string()] } else { names };
                let targets = names.into_iter().map(exact_target).collect::<Result<_>>()?;
                Ok(CtGroup { targets, weights })
            })
            .collect::<Result<_>>()?;
        let ignore = ignore.into_iter().map(exact_target).collect::<Result<_>>()?;
        Ok(Self { format, groups, ignore })
    }

    pub fn to_json(&self) -> Value {
        let groups: serde_json::Map<String, Value> = self
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let v = json!({"targets": g.targets, "weights": g.weights.to_json(), "input_activations": null, "output_activations": null});
                (format!("group_{i}"), v)
            })
            .collect();
        json!({
            "quant_method": "compressed-tensors",
            "format": self.format.as_str(),
            "config_groups": groups,
            "ignore": self.ignore,
            "kv_cache_scheme": null,
            "global_compression_ratio": null,
            "quantization_status": "compressed",
        })
    }

    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let format = match v.get("format").and_then(Value::as_str) {
            Some("pack-quantized") => CtFormat::PackQuantized,
            Some("int-quantized") => CtFormat::IntQuantized,
            Some("float-quantized") | Some("naive-quantized") => CtFormat::FloatQuantized,
            other => {
                return Err(Error::config(
                    path,
                    format!("compressed-tensors format {other:?} is not supported (pack-quantized, int-quantized, float-quantized)"),
                ))
            }
        };
        let groups_v = v
            .get("config_groups")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::config(path, "compressed-tensors config has no config_groups"))?;
        let mut groups = vec![];
        for (gname, g) in groups_v {
            let targets = strings(g.get("targets"))
                .ok_or_else(|| Error::config(path, format!("config group {gname} has no targets list")))?;
            let targets =
                Target::parse_all(&targets, path, &format!("quantization_config.config_groups.{gname}.targets"))?;
            let weights = match g.get("weights") {
                Some(w) if !w.is_null() => CtWeights::from_json(w, path)?,
                _ => continue, // activation-only group: no stored weight format
            };
            if weights.format() != format && !(format == CtFormat::IntQuantized && !weights.scheme.is_fp8()) {
                return Err(Error::config(
                    path,
                    format!("config group {gname} holds {} weights but format is {}", weights.scheme, format.as_str()),
                ));
            }
            groups.push(CtGroup { targets, weights });
        }
        let ignore = strings(v.get("ignore")).unwrap_or_default();
        let ignore = Target::parse_all(&ignore, path, "quantization_config.ignore")?;
        Ok(Self { format, groups, ignore })
    }

    /// The weights args of a quantized module, as vLLM resolves them: an exact name target
    /// first, then a `re:` target, then a class target (`Linear`); errors if the module is
    /// ignored or nothing matches.
    pub fn weights_for(&self, module: &str) -> Result<CtWeights> {
        if self.ignore.iter().any(|t| t.matches(module)) {
            return Err(Error::tensor(module, "holds quantized weights but the config lists it in ignore"));
        }
        let pick = |pred: &dyn Fn(&Target) -> bool| self.groups.iter().find(|g| g.targets.iter().any(pred));
        let hit = pick(&|t| !t.is_regex() && t.as_str() == module)
            .or_else(|| pick(&|t| t.is_regex() && t.matches(module)))
            .or_else(|| pick(&|t| t.as_str() == "Linear"));
        hit.map(|g| g.weights)
            .ok_or_else(|| Error::tensor(module, "holds quantized weights but no config group targets it"))
    }
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v?.as_array()?.iter().map(|s| s.as_str().map(String::from)).collect()
}

/// A target this tool writes: a module name (or `Linear`), never a pattern.
fn exact_target(name: String) -> Result<Target> {
    if name.starts_with("re:") {
        return Err(Error::tensor(&name, "a module name starting with \"re:\" cannot be a compressed-tensors target"));
    }
    Ok(Target { text: name, regex: None })
}

/// The compressed-tensors tensors of one linear (`prefix` = module name), in name order.
pub fn to_tensors(q: &QuantizedTensor, prefix: &str) -> Result<Vec<RawTensor>> {
    let w = CtWeights::new(prefix, q.scheme, q.g_idx.is_some())?;
    check_tensor(prefix, q)?;
    let (rows, cols) = (q.rows, q.cols);
    let scale_shape = match q.scheme.granularity {
        Granularity::PerTensor => vec![1],
        _ => vec![rows, q.groups_per_row()],
    };
    let name = |s: &str| format!("{prefix}.{s}");
    if q.scheme.is_fp8() {
        return Ok(vec![
            RawTensor::from_bytes(name("weight"), fp8_dtype(q.scheme.format), &[rows, cols], q.codes.clone()),
            RawTensor::from_f32(name("weight_scale"), &scale_shape, &q.scales),
        ]);
    }
    let bits = q.scheme.bits();
    let (packed, shape) = pack_matrix(&q.codes, rows, cols, Axis::Cols, bits, PackRule::WordAligned);
    let mut out = vec![];
    if let Some(g) = &q.g_idx {
        out.push(RawTensor::from_i32(name("weight_g_idx"), &[cols], &g.iter().map(|&v| v as i32).collect::<Vec<_>>()));
    }
    out.push(RawTensor::from_words(name("weight_packed"), &shape, &packed));
    out.push(RawTensor::from_f16(name("weight_scale"), &scale_shape, &q.scales));
    out.push(RawTensor::from_i64(name("weight_shape"), &[2], &[rows as i64, cols as i64]));
    let zeros = q.zeros.as_ref().expect("checked: integer tensors carry zero points");
    let half = 1i16 << (bits - 1);
    if q.scheme.symmetric {
        if let Some(i) = zeros.iter().position(|&z| z as i16 != half) {
            return Err(Error::tensor(
                prefix,
                format!("symmetric scheme with zero point {} at index {i} (expected {half})", zeros[i]),
            ));
        }
    } else if q.scheme.granularity == Granularity::PerTensor {
        out.push(RawTensor::from_bytes(
            name("weight_zero_point"),
            Dtype::I8,
            &[1],
            vec![(zeros[0] as i16 - half) as i8 as u8],
        ));
    } else {
        let (zp, zshape) = pack_matrix(zeros, rows, q.groups_per_row(), Axis::Rows, bits, PackRule::WordAligned);
        out.push(RawTensor::from_words(name("weight_zero_point"), &zshape, &zp));
    }
    debug_assert_eq!(w.format(), CtFormat::PackQuantized);
    Ok(out)
}

/// The `int-quantized` tensors of one integer linear: `<p>.weight` I8 `[out, in]` (signed
/// codes, `code - 2^(b-1)`), `<p>.weight_scale` F16 `[out, G]` (`[1]` per tensor) and, when
/// asymmetric, `<p>.weight_zero_point` I8 shaped like the scales (signed). No act-order.
pub fn to_int_quantized_tensors(q: &QuantizedTensor, prefix: &str) -> Result<Vec<RawTensor>> {
    CtWeights::new(prefix, q.scheme, q.g_idx.is_some())?;
    check_tensor(prefix, q)?;
    if q.scheme.is_fp8() || q.g_idx.is_some() {
        return Err(Error::tensor(
            prefix,
            format!(
                "{} (act-order {}): int-quantized holds integer weights without act-order",
                q.scheme,
                q.g_idx.is_some()
            ),
        ));
    }
    let half = 1i16 << (q.scheme.bits() - 1);
    let signed = |v: &[u8]| v.iter().map(|&c| (c as i16 - half) as i8 as u8).collect::<Vec<u8>>();
    let scale_shape = match q.scheme.granularity {
        Granularity::PerTensor => vec![1],
        _ => vec![q.rows, q.groups_per_row()],
    };
    let name = |s: &str| format!("{prefix}.{s}");
    let mut out = vec![
        RawTensor::from_bytes(name("weight"), Dtype::I8, &[q.rows, q.cols], signed(&q.codes)),
        RawTensor::from_f16(name("weight_scale"), &scale_shape, &q.scales),
    ];
    let zeros = q.zeros.as_ref().expect("checked: integer tensors carry zero points");
    if !q.scheme.symmetric {
        out.push(RawTensor::from_bytes(name("weight_zero_point"), Dtype::I8, &scale_shape, signed(zeros)));
    } else if let Some(i) = zeros.iter().position(|&z| z as i16 != half) {
        return Err(Error::tensor(
            prefix,
            format!("symmetric scheme with zero point {} at index {i} (expected {half})", zeros[i]),
        ));
    }
    Ok(out)
}

/// Rebuild one linear from its compressed-tensors tensors, checking them against `w` (the
/// config's weights args); contradictions name the tensor and both values.
pub fn from_tensors<'a>(
    prefix: &str,
    get: &dyn Fn(&str) -> Option<TensorView<'a>>,
    w: &CtWeights,
) -> Result<QuantizedTensor> {
    let name = |s: &str| format!("{prefix}.{s}");
    let need =
        |s: &str| get(&name(s)).ok_or_else(|| Error::tensor(name(s), format!("missing (config says {})", w.scheme)));
    let scheme = w.scheme;
    let scale_v = need("weight_scale")?;
    let scales = read_floats(&name("weight_scale"), &scale_v)?;
    let check_scales = |rows: usize, cols: usize| -> Result<()> {
        let n = match scheme.granularity {
            Granularity::PerTensor => 1,
            _ => rows * scheme.groups_per_row(cols),
        };
        let ok_shape = match scheme.granularity {
            Granularity::PerTensor => scale_v.shape().iter().product::<usize>() == 1,
            _ => scale_v.shape() == [rows, scheme.groups_per_row(cols)],
        };
        if !ok_shape || scales.len() != n {
            return Err(Error::tensor(
                name("weight_scale"),
                format!("shape {:?} contradicts config {scheme} for weight [{rows}, {cols}]", scale_v.shape()),
            ));
        }
        match scales.iter().position(|s| *s <= 0.0) {
            Some(i) => {
                Err(Error::tensor(name("weight_scale"), format!("scale {} at index {i} is not positive", scales[i])))
            }
            None => Ok(()),
        }
    };
    if scheme.is_fp8() {
        let wv = need("weight")?;
        if !matches!(wv.dtype(), Dtype::F8_E4M3 | Dtype::F8_E5M2) || wv.shape().len() != 2 {
            return Err(Error::tensor(
                name("weight"),
                format!(
                    "dtype {:?} shape {:?}, but config says {scheme} (F8_E4M3 or F8_E5M2, 2-D)",
                    wv.dtype(),
                    wv.shape()
                ),
            ));
        }
        // `type: float, num_bits: 8` does not say which FP8; the tensor's dtype does.
        let mut scheme = scheme;
        if wv.dtype() == Dtype::F8_E5M2 {
            scheme.format = NumberFormat::Fp8E5M2;
        }
        let (rows, cols) = (wv.shape()[0], wv.shape()[1]);
        check_scales(rows, cols)?;
        return Ok(QuantizedTensor {
            scheme,
            rows,
            cols,
            codes: wv.data().to_vec(),
            scales,
            zeros: None,
            g_idx: None,
            ggml: None,
        });
    }
    let bits = scheme.bits();
    if let Some(wv) = get(&name("weight")).filter(|v| v.dtype() == Dtype::I8) {
        // int-quantized: one signed code per I8; zero points unpacked I8, shaped like the scales.
        let (rows, cols) = match wv.shape() {
            &[r, c] => (r, c),
            s => return Err(Error::tensor(name("weight"), format!("shape {s:?} is not [out, in]"))),
        };
        if w.actorder {
            return Err(Error::tensor(name("weight"), "int-quantized weights with act-order g_idx are not supported"));
        }
        check_scales(rows, cols)?;
        let half = 1i16 << (bits - 1);
        let codes: Vec<u8> = wv.data().iter().map(|&b| (b as i8 as i16 + half) as u8).collect();
        if let Some(i) = wv.data().iter().position(|&b| !(-half..half).contains(&(b as i8 as i16))) {
            let v = wv.data()[i] as i8;
            return Err(Error::tensor(
                name("weight"),
                format!("code {v} at flat index {i} is outside {bits}-bit range"),
            ));
        }
        let zeros = match get(&name("weight_zero_point")) {
            None if scheme.symmetric => vec![half as u8; scales.len()],
            None => {
                return Err(Error::tensor(
                    name("weight_zero_point"),
                    format!("missing, but config {scheme} is asymmetric"),
                ))
            }
            Some(z) => {
                let zs = read_ints(&name("weight_zero_point"), &z)?;
                let ok = zs.len() == scales.len()
                    && zs.iter().all(|&v| {
                        if scheme.symmetric {
                            v == 0
                        } else {
                            (-(half as i64)..half as i64).contains(&v)
                        }
                    });
                if !ok {
                    return Err(Error::tensor(
                        name("weight_zero_point"),
                        format!(
                            "{} values, not {} signed {bits}-bit zero points (0 when symmetric)",
                            zs.len(),
                            scales.len()
                        ),
                    ));
                }
                zs.iter().map(|&v| (v + half as i64) as u8).collect()
            }
        };
        return Ok(QuantizedTensor { scheme, rows, cols, codes, scales, zeros: Some(zeros), g_idx: None, ggml: None });
    }
    let shape = read_ints(&name("weight_shape"), &need("weight_shape")?)?;
    let (rows, cols) = match shape[..] {
        [r, c] if r >= 0 && c >= 0 => (r as usize, c as usize),
        _ => return Err(Error::tensor(name("weight_shape"), format!("{shape:?} is not [out, in]"))),
    };
    let pv = need("weight_packed")?;
    let expect = [rows, packed_words(cols, bits, PackRule::WordAligned)];
    if pv.shape() != expect {
        let msg = format!(
            "shape {:?}, but config num_bits = {bits} with weight_shape [{rows}, {cols}] needs {expect:?}",
            pv.shape()
        );
        return Err(Error::tensor(name("weight_packed"), msg));
    }
    let codes = unpack_tensor(&name("weight_packed"), &pv, rows, cols, Axis::Cols, bits, PackRule::WordAligned)?;
    check_scales(rows, cols)?;
    let half = 1u8 << (bits - 1);
    let n = scales.len();
    let zeros = match (scheme.symmetric, get(&name("weight_zero_point"))) {
        (true, None) => vec![half; n],
        (true, Some(z)) => {
            let zs = read_ints(&name("weight_zero_point"), &z)?;
            if let Some(i) = zs.iter().position(|&v| v != 0) {
                return Err(Error::tensor(
                    name("weight_zero_point"),
                    format!("{} at index {i}, but config says symmetric (zero points 0)", zs[i]),
                ));
            }
            vec![half; n]
        }
        (false, None) => {
            return Err(Error::tensor(name("weight_zero_point"), format!("missing, but config {scheme} is asymmetric")))
        }
        (false, Some(z)) if scheme.granularity == Granularity::PerTensor => {
            let v = read_ints(&name("weight_zero_point"), &z)?;
            match v[..] {
                [s] if (-(half as i64)..half as i64).contains(&s) => vec![(s + half as i64) as u8],
                _ => {
                    return Err(Error::tensor(
                        name("weight_zero_point"),
                        format!("{v:?} is not one signed {bits}-bit zero point"),
                    ))
                }
            }
        }
        (false, Some(z)) => {
            let gpr = scheme.groups_per_row(cols);
            unpack_tensor(&name("weight_zero_point"), &z, rows, gpr, Axis::Rows, bits, PackRule::WordAligned)?
        }
    };
    let g_idx = match (w.actorder, get(&name("weight_g_idx"))) {
        (false, None) => None,
        (true, None) => {
            return Err(Error::tensor(name("weight_g_idx"), "missing, but config actorder = group needs it"))
        }
        (false, Some(_)) => return Err(Error::tensor(name("weight_g_idx"), "present, but config has no actorder")),
        (true, Some(v)) => {
            let g = read_ints(&name("weight_g_idx"), &v)?;
            let groups = scheme.groups_per_row(cols) as i64;
            if g.len() != cols || g.iter().any(|&x| x < 0 || x >= groups) {
                return Err(Error::tensor(
                    name("weight_g_idx"),
                    format!("{} entries for {cols} columns with {groups} groups, or a group out of range", g.len()),
                ));
            }
            Some(g.iter().map(|&x| x as u32).collect())
        }
    };
    Ok(QuantizedTensor { scheme, rows, cols, codes, scales, zeros: Some(zeros), g_idx, ggml: None })
}

/// A Python `re.match` pattern on module names, compiled once: it matches when the pattern
/// matches a prefix of the name (anchored at the start, not at the end: `re:.*q_proj`
/// also matches `...q_proj_a`; a pattern ends with `$` to match whole names). This is how
/// compressed-tensors (`utils/match.py`, `_match_name`: `re.match(target[3:], name)`),
/// vLLM and GPTQModel's `dynamic` match their patterns. The syntax is the `regex` crate's
/// (Python's minus look-around and backreferences, which are refused); matching runs in
/// time linear in the name, whatever the pattern (`(a*)*b` included).
#[derive(Clone, Debug)]
pub struct PyMatch(regex::Regex);

impl PyMatch {
    pub fn new(pattern: &str) -> std::result::Result<Self, regex::Error> {
        regex::Regex::new(pattern).map(Self)
    }

    /// [`PyMatch::new`], an invalid pattern being an error that names the file, the key
    /// and the pattern.
    pub fn parse(pattern: &str, path: &Path, key: &str) -> Result<Self> {
        Self::new(pattern)
            .map_err(|e| Error::config(path, format!("{key}: {pattern:?} is not a valid regular expression: {e}")))
    }

    /// Python's `re.match(pattern, name) is not None`. The leftmost match starts at 0
    /// exactly when some match does.
    pub fn matches(&self, name: &str) -> bool {
        self.0.find(name).is_some_and(|m| m.start() == 0)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// A `targets` or `ignore` entry of a compressed-tensors config: `re:<pattern>`
/// ([`PyMatch`]), else an exact module name or a class name (`Linear`, which no module
/// name equals). Compares and serializes as the config's string.
#[derive(Clone, Debug)]
pub struct Target {
    text: String,
    regex: Option<PyMatch>,
}

impl Target {
    pub fn new(text: impl Into<String>) -> std::result::Result<Self, regex::Error> {
        let text = text.into();
        let regex = text.strip_prefix("re:").map(PyMatch::new).transpose()?;
        Ok(Self { text, regex })
    }

    /// [`Target::new`] for an entry read from `path` at `key`: an invalid pattern is an
    /// error naming both and the pattern.
    pub fn parse(text: &str, path: &Path, key: &str) -> Result<Self> {
        Self::new(text)
            .map_err(|e| Error::config(path, format!("{key}: {text:?} is not a valid regular expression: {e}")))
    }

    /// A list of entries (`key` names the list; entries are reported as `key[i]`).
    pub fn parse_all(texts: &[String], path: &Path, key: &str) -> Result<Vec<Self>> {
        texts.iter().enumerate().map(|(i, t)| Self::parse(t, path, &format!("{key}[{i}]"))).collect()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_regex(&self) -> bool {
        self.regex.is_some()
    }

    /// Whether this entry selects the module `name` (a pattern by `re.match`, anything
    /// else by equality).
    pub fn matches(&self, name: &str) -> bool {
        match &self.regex {
            Some(r) => r.matches(name),
            None => self.text == name,
        }
    }
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl serde::Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// Safetensors dtype of an FP8 weight.
fn fp8_dtype(format: NumberFormat) -> Dtype {
    match format {
        NumberFormat::Fp8E5M2 => Dtype::F8_E5M2,
        _ => Dtype::F8_E4M3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_quantifiers_match_in_linear_time() {
        // A backtracking matcher takes 2^n steps here; the regex crate's engines are linear.
        let p = PyMatch::new("(a*)*b").unwrap();
        let long = "a".repeat(100_000);
        assert!(!p.matches(&long));
        assert!(p.matches(&format!("{long}b")));
        assert!(!p.matches(&format!("c{long}b")), "anchored at the start");
        let t = Target::new("re:(a|aa)*c").unwrap();
        assert!(!t.matches(&"a".repeat(10_000)) && t.matches(&format!("{}c", "a".repeat(10_000))));
    }

    #[test]
    fn python_re_match_semantics() {
        let m = |p: &str, s: &str| PyMatch::new(p).unwrap().matches(s);
        assert!(m("model", "model.layers.0") && !m("layers", "model.layers.0"), "start-anchored, prefix");
        assert!(m("", "anything"), "the empty pattern matches every name");
        assert!(m("a|model", "model.x"), "alternation inside the anchor");
        assert!(m(".*proj$", "q_proj") && !m(".*proj$", "q_proj2"), "`$` anchors the end");
        assert!(m("(?i)MODEL", "model.x"));
    }

    #[test]
    fn invalid_pattern_is_an_error_with_its_text() {
        for bad in ["(a", "a)", "[a-", "\\p", "(?<=a)b", "(a)\\1"] {
            let e = PyMatch::parse(bad, Path::new("dir/config.json"), "quantization_config.ignore[0]").unwrap_err();
            let e = e.to_string();
            assert!(e.starts_with("dir/config.json: quantization_config.ignore[0]: "), "{e}");
            assert!(e.contains(&format!("{bad:?}")), "{e}");
            assert!(Target::new(format!("re:{bad}")).is_err(), "{bad}");
        }
        assert!(Target::new("(a").is_ok(), "without `re:` an entry is a name, not a pattern");
    }

    #[test]
    fn written_targets_are_names_and_round_trip() {
        let scheme = QuantScheme::int(4).unwrap();
        let (codes, scales, zeros) = (vec![8u8; 64], vec![1.0; 2], Some(vec![8u8; 2]));
        let q = QuantizedTensor { scheme, rows: 2, cols: 32, codes, scales, zeros, g_idx: None, ggml: None };
        let tensors = BTreeMap::from([("model.layers.0.mlp.up_proj".to_string(), q)]);
        let cfg = CtConfig::for_tensors(&tensors, vec!["lm_head".into()]).unwrap();
        assert_eq!(cfg.to_json()["config_groups"]["group_0"]["targets"], json!(["Linear"]));
        assert_eq!(cfg.to_json()["ignore"], json!(["lm_head"]));
        assert!(CtConfig::for_tensors(&tensors, vec!["re:.*".into()]).is_err());
        let back = CtConfig::from_json(&cfg.to_json(), Path::new("c")).unwrap();
        assert_eq!(back, cfg);
        assert!(back.weights_for("lm_head").is_err());
    }
}
