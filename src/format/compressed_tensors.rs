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
    pub targets: Vec<String>,
    pub weights: CtWeights,
}

/// `quantization_config` of a compressed-tensors checkpoint (weights only are interpreted;
/// activation args stay in the raw config for whoever runs activation quantization).
#[derive(Clone, Debug, PartialEq)]
pub struct CtConfig {
    pub format: CtFormat,
    /// In `group_0, group_1, ...` order.
    pub groups: Vec<CtGroup>,
    pub ignore: Vec<String>,
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
            .map(|(weights, names)| CtGroup { targets: if single { vec!["Linear".into()] } else { names }, weights })
            .collect();
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
            for t in &targets {
                if let Some(p) = t.strip_prefix("re:") {
                    Regex::parse(p).map_err(|e| Error::config(path, format!("target {t:?}: {e}")))?;
                }
            }
            groups.push(CtGroup { targets, weights });
        }
        let ignore = strings(v.get("ignore")).unwrap_or_default();
        for t in ignore.iter().filter_map(|t| t.strip_prefix("re:")) {
            Regex::parse(t).map_err(|e| Error::config(path, format!("ignore entry re:{t}: {e}")))?;
        }
        Ok(Self { format, groups, ignore })
    }

    /// The weights args of a quantized module, as vLLM resolves them: an exact name target
    /// first, then a `re:` target, then a class target (`Linear`); errors if the module is
    /// ignored or nothing matches.
    pub fn weights_for(&self, module: &str) -> Result<CtWeights> {
        if self.ignore.iter().any(|t| target_matches(t, module)) {
            return Err(Error::tensor(module, "holds quantized weights but the config lists it in ignore"));
        }
        let pick = |pred: &dyn Fn(&str) -> bool| self.groups.iter().find(|g| g.targets.iter().any(|t| pred(t)));
        let hit = pick(&|t| t == module)
            .or_else(|| {
                pick(&|t| t.strip_prefix("re:").is_some_and(|p| Regex::parse(p).is_ok_and(|r| r.matches(module))))
            })
            .or_else(|| pick(&|t| t == "Linear"));
        hit.map(|g| g.weights)
            .ok_or_else(|| Error::tensor(module, "holds quantized weights but no config group targets it"))
    }
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v?.as_array()?.iter().map(|s| s.as_str().map(String::from)).collect()
}

/// vLLM/compressed-tensors matching of one target or ignore entry against a module name.
pub fn target_matches(target: &str, module: &str) -> bool {
    match target.strip_prefix("re:") {
        Some(p) => Regex::parse(p).is_ok_and(|r| r.matches(module)),
        None => target == module,
    }
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
        return Ok(QuantizedTensor { scheme, rows, cols, codes: wv.data().to_vec(), scales, zeros: None, g_idx: None });
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
        return Ok(QuantizedTensor { scheme, rows, cols, codes, scales, zeros: Some(zeros), g_idx: None });
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
    Ok(QuantizedTensor { scheme, rows, cols, codes, scales, zeros: Some(zeros), g_idx })
}

/// A small backtracking regex, anchored at the start like Python's `re.match` (what vLLM
/// and compressed-tensors use for `re:` targets): literals, `.`, classes `[a-z_]`/`[^..]`,
/// `\d \w \s` and escaped literals, groups `( | )` / `(?: )`, quantifiers `* + ?`, `^`, `$`.
#[derive(Debug)]
struct Regex(Vec<Vec<Piece>>);

#[derive(Debug)]
struct Piece {
    atom: Atom,
    min: usize,
    max: usize,
}

#[derive(Debug)]
enum Atom {
    Lit(char),
    Any,
    Class(Vec<(char, char)>, bool),
    Group(Vec<Vec<Piece>>),
    End,
}

impl Regex {
    fn parse(p: &str) -> std::result::Result<Self, String> {
        let chars: Vec<char> = p.chars().collect();
        let mut i = 0;
        let alts = parse_alts(&chars, &mut i)?;
        if i != chars.len() {
            return Err(format!("unbalanced ')' at {i} in {p:?}"));
        }
        Ok(Regex(alts))
    }

    fn matches(&self, s: &str) -> bool {
        let s: Vec<char> = s.chars().collect();
        match_alts(&self.0, &s, 0, &mut |_| true)
    }
}

fn parse_alts(c: &[char], i: &mut usize) -> std::result::Result<Vec<Vec<Piece>>, String> {
    let mut alts = vec![vec![]];
    while *i < c.len() && c[*i] != ')' {
        let ch = c[*i];
        *i += 1;
        let atom = match ch {
            '|' => {
                alts.push(vec![]);
                continue;
            }
            '^' if *i == 1 => continue,
            '$' => Atom::End,
            '.' => Atom::Any,
            '(' => {
                if c.get(*i..*i + 2) == Some(&['?', ':']) {
                    *i += 2;
                }
                let inner = parse_alts(c, i)?;
                if c.get(*i) != Some(&')') {
                    return Err("unclosed '('".into());
                }
                *i += 1;
                Atom::Group(inner)
            }
            '[' => {
                let neg = c.get(*i) == Some(&'^');
                *i += neg as usize;
                let mut ranges = vec![];
                while *i < c.len() && c[*i] != ']' {
                    let lo = if c[*i] == '\\' {
                        *i += 1;
                        *c.get(*i).ok_or("dangling '\\'")?
                    } else {
                        c[*i]
                    };
                    *i += 1;
                    if c.get(*i) == Some(&'-') && c.get(*i + 1).is_some_and(|&x| x != ']') {
                        ranges.push((lo, c[*i + 1]));
                        *i += 2;
                    } else {
                        ranges.push((lo, lo));
                    }
                }
                if c.get(*i) != Some(&']') {
                    return Err("unclosed '['".into());
                }
                *i += 1;
                Atom::Class(ranges, neg)
            }
            '\\' => {
                let e = *c.get(*i).ok_or("dangling '\\'")?;
                *i += 1;
                match e {
                    'd' => Atom::Class(vec![('0', '9')], false),
                    'w' => Atom::Class(vec![('a', 'z'), ('A', 'Z'), ('0', '9'), ('_', '_')], false),
                    's' => Atom::Class(vec![(' ', ' '), ('\t', '\t'), ('\n', '\n')], false),
                    e if e.is_ascii_alphanumeric() => return Err(format!("escape \\{e} is not supported")),
                    e => Atom::Lit(e),
                }
            }
            '*' | '+' | '?' | '{' => return Err(format!("quantifier {ch:?} without an atom or unsupported")),
            ch => Atom::Lit(ch),
        };
        let (min, max) = match c.get(*i) {
            Some('*') => (0, usize::MAX),
            Some('+') => (1, usize::MAX),
            Some('?') => (0, 1),
            _ => (1, 1),
        };
        *i += (max != 1 || min != 1) as usize;
        alts.last_mut().expect("non-empty").push(Piece { atom, min, max });
    }
    Ok(alts)
}

fn match_alts(alts: &[Vec<Piece>], s: &[char], i: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    alts.iter().any(|seq| match_seq(seq, s, i, k))
}

fn match_seq(seq: &[Piece], s: &[char], i: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    match seq.split_first() {
        None => k(i),
        Some((p, rest)) => match_rep(p, 0, rest, s, i, k),
    }
}

/// Greedy repetition of `p` (already matched `n` times) followed by `rest`.
fn match_rep(p: &Piece, n: usize, rest: &[Piece], s: &[char], i: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    // An empty match (`$`, an empty group) counts only towards `min`, so loops terminate.
    if n < p.max && match_atom(&p.atom, s, i, &mut |j| (j != i || n < p.min) && match_rep(p, n + 1, rest, s, j, k)) {
        return true;
    }
    n >= p.min && match_seq(rest, s, i, k)
}

fn match_atom(a: &Atom, s: &[char], i: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    match a {
        Atom::End => i == s.len() && k(i),
        Atom::Group(alts) => match_alts(alts, s, i, k),
        _ if i >= s.len() => false,
        Atom::Lit(c) => s[i] == *c && k(i + 1),
        Atom::Any => s[i] != '\n' && k(i + 1),
        Atom::Class(r, neg) => (r.iter().any(|&(lo, hi)| lo <= s[i] && s[i] <= hi) != *neg) && k(i + 1),
    }
}

/// Safetensors dtype of an FP8 weight.
fn fp8_dtype(format: NumberFormat) -> Dtype {
    match format {
        NumberFormat::Fp8E5M2 => Dtype::F8_E5M2,
        _ => Dtype::F8_E4M3,
    }
}
