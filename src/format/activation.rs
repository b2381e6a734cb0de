//! `ActScheme`: how the input of a linear is quantized, and its compressed-tensors form
//! (`input_activations` args of a config group, `input_scale` / `input_zero_point`
//! tensors), as vLLM's `CompressedTensorsW8A8Int8` / `CompressedTensorsW8A8Fp8` read them.
//!
//! Two strategies, the two vLLM runs: **static** = one scale per tensor (and one zero point
//! when asymmetric) fixed at calibration, stored per linear as `<m>.input_scale` F32 `[1]`
//! (and `<m>.input_zero_point` I8 `[1]`); **dynamic** = one scale per token computed at run
//! time, nothing stored (`strategy: "token"`, `dynamic: true`).
//!
//! Integer convention (compressed-tensors and vLLM's, unlike the weights' unsigned codes):
//! signed codes `q ∈ [-128, 127]`, `x̂ = scale · (q - zero)`, `q = clamp(rne(x / scale) + zero)`
//! with round-half-to-even (`torch.round`, CUDA `nearbyint`). Symmetric: `zero = 0`,
//! `scale = amax / 127` (vLLM's dynamic kernel; compressed-tensors' observers divide by
//! 127.5, which clips `+amax` by half a step). Asymmetric: `scale = (max - min) / 255`,
//! `zero = rne(-128 - min / scale)`, the range widened to include 0.
//! FP8 E4M3: `scale = amax / 448`, `x̂ = scale · fp8(x / scale)` (round-to-nearest-even,
//! saturating). A degenerate range (all zeros) gets scale 1, so codes stay finite.

use super::compressed_tensors::Target;
use super::fp8;
use super::pack::{read_floats, read_ints, RawTensor};
use super::NumberFormat;
use crate::error::{Error, Result};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;

/// Whose arithmetic quantizes the activations at run time: the checkpoint says what
/// (INT8 or FP8, static per tensor or dynamic per token), not how its runtime rounds, and
/// the two that load compressed-tensors W8A8 round differently (checked against their
/// sources; `tests/fixtures/activations` holds compressed-tensors' own outputs):
///
/// | | vLLM (`csrc/quantization`) | compressed-tensors (`forward_quantize`) |
/// |---|---|---|
/// | INT8 dynamic, symmetric | `s = amax/127`, `q = rne(x · (127/amax))` | `s = amax/127.5`, `q = rne(clamp(x/s))` (so −128 is reached) |
/// | INT8 asymmetric | `q = rne(x/s) + z` | `q = rne(clamp(x/s + z))` |
/// | FP8 dynamic | `s = max(amax/448, 1/(448·512))`, `fp8(x/s)` | `s = amax/448`, `fp8(x/s)` |
/// | FP8 static | `fp8(x · (1/s))` | `fp8(x/s)` |
///
/// INT8 static symmetric is `rne(x/s)` in both; compressed-tensors (0.20) replaces a scale
/// of exactly 0 by f32's machine epsilon. vLLM is
/// the default: it is what serves these checkpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ActRuntime {
    #[default]
    Vllm,
    CompressedTensors,
}

impl std::str::FromStr for ActRuntime {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "vllm" => Ok(Self::Vllm),
            "compressed-tensors" | "ct" => Ok(Self::CompressedTensors),
            other => Err(Error::option("--act-runtime", format!("{other:?}: use vllm or compressed-tensors"))),
        }
    }
}

/// Quantization of a linear's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ActScheme {
    /// `Int { bits: 8 }` or `Fp8E4M3`.
    pub format: NumberFormat,
    /// Integer only; FP8 is symmetric.
    pub symmetric: bool,
    /// Per-token scales at run time (`true`) or one static per-tensor scale (`false`).
    pub dynamic: bool,
}

/// Parameters of one tensor (static) or one token (dynamic).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActParams {
    pub scale: f32,
    /// Signed zero point; 0 when symmetric and for FP8.
    pub zero: i8,
}

impl ActScheme {
    pub fn int8(symmetric: bool, dynamic: bool) -> Self {
        Self { format: NumberFormat::Int { bits: 8 }, symmetric, dynamic }
    }

    pub fn fp8_e4m3(dynamic: bool) -> Self {
        Self { format: NumberFormat::Fp8E4M3, symmetric: true, dynamic }
    }

    pub fn is_fp8(&self) -> bool {
        self.format == NumberFormat::Fp8E4M3
    }

    /// Refuse weights vLLM does not run with these activations (compressed-tensors):
    /// W8A8 takes symmetric per-channel or per-tensor INT8 weights with INT8 activations,
    /// or FP8 E4M3 weights; W4A8 (`CompressedTensorsW4A8Int`) symmetric per-channel or
    /// grouped INT4 weights, stored one code per int8, with INT8 activations.
    pub fn check_weights(&self, w: super::QuantScheme) -> Result<()> {
        use super::Granularity;
        let int_act = self.format == NumberFormat::Int { bits: 8 };
        let ok = match w.format {
            NumberFormat::Int { bits: 8 } => w.symmetric && !matches!(w.granularity, Granularity::Group(_)),
            NumberFormat::Int { bits: 4 } => int_act && w.symmetric && w.granularity != Granularity::PerTensor,
            NumberFormat::Fp8E4M3 => true,
            _ => false,
        };
        if ok {
            return Ok(());
        }
        Err(Error::option(
            "scheme",
            format!(
                "{w} with {self} activations: vLLM runs W8A8 with symmetric per-channel or per-tensor INT8 \
                 weights, or FP8 E4M3 weights, and W4A8 with symmetric per-channel or grouped INT4 weights \
                 and INT8 activations"
            ),
        ))
    }

    /// Refuse what neither this tool nor vLLM runs: other widths, E5M2, asymmetric FP8.
    pub fn check(&self) -> Result<()> {
        match (self.format, self.symmetric) {
            (NumberFormat::Int { bits: 8 }, _) | (NumberFormat::Fp8E4M3, true) => Ok(()),
            (f, s) => Err(Error::option(
                "activation scheme",
                format!("{f:?} (symmetric {s}) is not supported: use int8 (symmetric or not) or FP8 E4M3 (symmetric)"),
            )),
        }
    }

    /// Parameters for values spanning `[min, max]` (widened to include 0).
    pub fn params(&self, min: f32, max: f32) -> ActParams {
        let (lo, hi) = (min.min(0.0), max.max(0.0));
        let ok = |s: f32| if s > 0.0 && s.is_finite() { s } else { 1.0 };
        match self.format {
            NumberFormat::Fp8E4M3 => ActParams { scale: ok((-lo).max(hi) / 448.0), zero: 0 },
            _ if self.symmetric => ActParams { scale: ok((-lo).max(hi) / 127.0), zero: 0 },
            _ => {
                let scale = ok((hi - lo) / 255.0);
                let zero = (-128.0 - lo / scale).round_ties_even().clamp(-128.0, 127.0) as i8;
                ActParams { scale, zero }
            }
        }
    }

    /// [`Self::params`] of a `(min, max)` range.
    pub fn params_from(&self, range: (f32, f32)) -> ActParams {
        self.params(range.0, range.1)
    }

    /// Quantize-dequantize one value with `p`: what the low-precision product sees.
    #[inline]
    pub fn qdq(&self, p: ActParams, x: f32) -> f32 {
        match self.format {
            NumberFormat::Fp8E4M3 => {
                p.scale
                    * fp8::decode_table(NumberFormat::Fp8E4M3)[fp8::encode(NumberFormat::Fp8E4M3, x / p.scale) as usize]
            }
            _ => {
                let z = p.zero as f32;
                let q = ((x / p.scale).round_ties_even() + z).clamp(-128.0, 127.0);
                (q - z) * p.scale
            }
        }
    }

    /// Quantize-dequantize a row in place with `p`.
    pub fn qdq_row(&self, p: ActParams, row: &mut [f32]) {
        for v in row {
            *v = self.qdq(p, *v);
        }
    }

    /// Quantize-dequantize `row` as runtime `rt` computes it at inference: with the static
    /// `params`, or per token from the row's own range when the scheme is dynamic.
    pub fn qdq_row_as(&self, rt: ActRuntime, params: Option<ActParams>, row: &mut [f32]) {
        let fp8 = |s: f32, x: f32| {
            s * fp8::decode_table(NumberFormat::Fp8E4M3)[fp8::encode(NumberFormat::Fp8E4M3, x) as usize]
        };
        let int_ct = |s: f32, z: f32, x: f32| ((x / s + z).clamp(-128.0, 127.0).round_ties_even() - z) * s;
        let p = match params {
            Some(p) if !self.dynamic => p,
            _ => {
                let (lo, hi) = row.iter().fold((0.0f32, 0.0f32), |(a, b), &v| (a.min(v), b.max(v)));
                let amax = (-lo).max(hi);
                match (self.is_fp8(), self.symmetric, rt) {
                    (true, _, ActRuntime::Vllm) => {
                        let s = (amax / 448.0).max(1.0 / (448.0 * 512.0));
                        row.iter_mut().for_each(|v| *v = fp8(s, *v / s));
                        return;
                    }
                    (true, _, ActRuntime::CompressedTensors) => {
                        let s = ct_nonzero(amax / 448.0);
                        row.iter_mut().for_each(|v| *v = fp8(s, *v / s));
                        return;
                    }
                    (false, true, ActRuntime::Vllm) => {
                        // csrc/quantization/compressed_tensors/int8_quant_kernels.cu: the
                        // reciprocal multiplies (0 · inf is NaN, which saturates to code 0).
                        let (s, inv) = (amax / 127.0, 127.0 / amax);
                        row.iter_mut().for_each(|v| {
                            let q = *v * inv;
                            *v = if q.is_nan() { 0.0 } else { q.round_ties_even().clamp(-128.0, 127.0) * s };
                        });
                        return;
                    }
                    (false, true, ActRuntime::CompressedTensors) => {
                        let s = ct_nonzero(amax / 127.5);
                        row.iter_mut().for_each(|v| *v = int_ct(s, 0.0, *v));
                        return;
                    }
                    (false, false, ActRuntime::Vllm) => self.params(lo, hi),
                    (false, false, ActRuntime::CompressedTensors) => {
                        // The zero point from the unguarded scale, cast to int8 as stored:
                        // 0/0 (an all-zero row) becomes 0, and -0 becomes +0.
                        let s = (hi - lo) / 255.0;
                        let z = (-128.0 - lo / s).clamp(-128.0, 127.0).round_ties_even() as i8 as f32;
                        let s = ct_nonzero(s);
                        row.iter_mut().for_each(|v| *v = int_ct(s, z, *v));
                        return;
                    }
                }
            }
        };
        match (self.is_fp8(), rt) {
            (true, ActRuntime::Vllm) => {
                let inv = 1.0 / p.scale;
                row.iter_mut().for_each(|v| *v = fp8(p.scale, *v * inv));
            }
            (false, ActRuntime::CompressedTensors) => {
                row.iter_mut().for_each(|v| *v = int_ct(p.scale, p.zero as f32, *v));
            }
            _ => self.qdq_row(p, row),
        }
    }

    /// Dynamic per-token parameters of one row (its own min/max).
    pub fn token_params(&self, row: &[f32]) -> ActParams {
        let (lo, hi) = row.iter().fold((0.0f32, 0.0f32), |(a, b), &v| (a.min(v), b.max(v)));
        self.params(lo, hi)
    }

    /// compressed-tensors `input_activations` (QuantizationArgs keys). `observer` names the
    /// calibration of a static scheme (informational; vLLM does not read it).
    pub fn to_ct_json(&self, observer: &str) -> Value {
        json!({
            "num_bits": 8,
            "type": if self.is_fp8() { "float" } else { "int" },
            "symmetric": self.symmetric,
            "strategy": if self.dynamic { "token" } else { "tensor" },
            "group_size": null,
            "block_structure": null,
            "dynamic": self.dynamic,
            "actorder": null,
            "observer": if self.dynamic { Value::Null } else { json!(observer) },
            "observer_kwargs": {},
        })
    }

    pub fn from_ct_json(v: &Value, path: &Path) -> Result<Self> {
        let err = |m: String| Error::config(path, format!("compressed-tensors input_activations {v}: {m}"));
        let bits = v.get("num_bits").and_then(Value::as_u64).unwrap_or(8);
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("int");
        let symmetric = v.get("symmetric").and_then(Value::as_bool).unwrap_or(true);
        let dynamic = match v.get("dynamic") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(err(format!("dynamic {other} is not supported (true or false)"))),
        };
        let strategy = v.get("strategy").and_then(Value::as_str).unwrap_or("tensor");
        let s = match (kind, bits) {
            ("int", 8) => Self::int8(symmetric, dynamic),
            ("float", 8) if symmetric => Self::fp8_e4m3(dynamic),
            (k, b) => {
                return Err(err(format!(
                    "type {k:?}, num_bits {b}, symmetric {symmetric} is not supported (int 8, or symmetric float 8)"
                )))
            }
        };
        match (strategy, dynamic) {
            ("tensor", false) | ("token", true) => Ok(s),
            (st, d) => Err(err(format!(
                "strategy {st:?} with dynamic {d} is not supported (static \"tensor\" or dynamic \"token\")"
            ))),
        }
    }

    /// The stored tensors of a static scheme's linear `prefix`.
    pub fn ct_tensors(&self, prefix: &str, p: ActParams) -> Vec<RawTensor> {
        let mut out = vec![RawTensor::from_f32(format!("{prefix}.input_scale"), &[1], &[p.scale])];
        if !self.symmetric {
            out.push(RawTensor::from_bytes(format!("{prefix}.input_zero_point"), Dtype::I8, &[1], vec![p.zero as u8]));
        }
        out
    }

    /// Read a static scheme's parameters of linear `prefix`, checking them against the scheme.
    pub fn read_ct_tensors<'a>(&self, prefix: &str, get: &dyn Fn(&str) -> Option<TensorView<'a>>) -> Result<ActParams> {
        let sname = format!("{prefix}.input_scale");
        let zname = format!("{prefix}.input_zero_point");
        let sv = get(&sname).ok_or_else(|| {
            Error::tensor(&sname, "missing, but the config gives this linear static input activations")
        })?;
        let s = read_floats(&sname, &sv)?;
        let scale = match s[..] {
            [x] if x > 0.0 => x,
            _ => {
                return Err(Error::tensor(&sname, format!("{s:?} (shape {:?}) is not one positive scale", sv.shape())))
            }
        };
        let zero = match (self.symmetric, get(&zname)) {
            (_, None) if self.symmetric => 0,
            (_, None) => {
                return Err(Error::tensor(&zname, "missing, but the config's input activations are asymmetric"))
            }
            (sym, Some(zv)) => match read_ints(&zname, &zv)?[..] {
                [0] => 0,
                [z] if !sym && (-128..=127).contains(&z) => z as i8,
                ref z => {
                    return Err(Error::tensor(
                        &zname,
                        format!("{z:?} is not one int8 zero point{}", if sym { " (symmetric: 0)" } else { "" }),
                    ))
                }
            },
        };
        Ok(ActParams { scale, zero })
    }
}

/// compressed-tensors' guard of a computed scale: exactly 0 becomes f32's epsilon.
fn ct_nonzero(s: f32) -> f32 {
    if s == 0.0 {
        f32::EPSILON
    } else {
        s
    }
}

impl std::fmt::Display for ActScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fmt = if self.is_fp8() {
            "fp8-e4m3"
        } else if self.symmetric {
            "int8-sym"
        } else {
            "int8-asym"
        };
        write!(f, "{fmt}-{}", if self.dynamic { "dynamic-token" } else { "static-tensor" })
    }
}

/// compressed-tensors formats whose `input_activations` vLLM applies.
pub fn is_activation_format(format: &str) -> bool {
    matches!(format, "int-quantized" | "float-quantized" | "naive-quantized")
}

/// The input-activation args of a compressed-tensors `quantization_config`, with every
/// group's targets compiled once (an invalid `re:` pattern is an error naming the file,
/// the key and the pattern); [`CtInputSchemes::for_module`] resolves a module.
#[derive(Clone, Debug)]
pub struct CtInputSchemes {
    path: std::path::PathBuf,
    /// Targets and `input_activations` of each group, in group-name order; empty when the
    /// format is weight-only (`pack-quantized`: vLLM ignores activation args there, and so
    /// does this tool).
    groups: Vec<(Vec<Target>, Option<Value>)>,
}

impl CtInputSchemes {
    pub fn from_json(qc: &Value, path: &Path) -> Result<Self> {
        let mut groups = vec![];
        let activation_format = qc.get("format").and_then(Value::as_str).is_some_and(is_activation_format);
        let config_groups = qc.get("config_groups").and_then(Value::as_object).filter(|_| activation_format);
        for (gname, g) in config_groups.into_iter().flatten() {
            let texts: Vec<String> = g
                .get("targets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(String::from))
                .collect();
            let key = format!("quantization_config.config_groups.{gname}.targets");
            let targets = Target::parse_all(&texts, path, &key)?;
            groups.push((targets, g.get("input_activations").filter(|a| !a.is_null()).cloned()));
        }
        Ok(Self { path: path.to_path_buf(), groups })
    }

    /// The input-activation scheme of `module`, its group resolved as vLLM resolves one
    /// (exact name, then `re:`, then `Linear`); `None` when that group has none.
    pub fn for_module(&self, module: &str) -> Result<Option<ActScheme>> {
        let pick = |pred: &dyn Fn(&Target) -> bool| self.groups.iter().find(|(t, _)| t.iter().any(pred));
        let hit = pick(&|t| !t.is_regex() && t.as_str() == module)
            .or_else(|| pick(&|t| t.is_regex() && t.matches(module)))
            .or_else(|| pick(&|t| t.as_str() == "Linear"));
        match hit.and_then(|(_, a)| a.as_ref()) {
            None => Ok(None),
            Some(a) => ActScheme::from_ct_json(a, &self.path).map(Some),
        }
    }
}

/// The input-activation scheme of `module` from a compressed-tensors `quantization_config`
/// (`qc`): [`CtInputSchemes::for_module`] of a config parsed for this one call (several
/// modules: build a [`CtInputSchemes`] once).
pub fn ct_input_scheme(qc: &Value, module: &str, path: &Path) -> Result<Option<ActScheme>> {
    CtInputSchemes::from_json(qc, path)?.for_module(module)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_grid_rounds_half_to_even_and_saturates() {
        let s = ActScheme::int8(true, false);
        let p = s.params(-1.0, 127.0 * 0.125);
        assert_eq!((p.scale, p.zero), (0.125, 0));
        assert_eq!(s.qdq(p, 2.5 * 0.125), 0.25, "2.5 steps rounds to 2 (even)");
        assert_eq!(s.qdq(p, 3.5 * 0.125), 0.5, "3.5 steps rounds to 4");
        assert_eq!(s.qdq(p, 100.0), 127.0 * 0.125);
        assert_eq!(s.qdq(p, -100.0), -16.0, "the negative end holds code -128");
    }

    #[test]
    fn asymmetric_range_maps_to_full_code_span() {
        let s = ActScheme::int8(false, false);
        let p = s.params(0.5, 255.0 * 0.125); // widened to [0, 31.875]: scale 1/8, zero -128
        assert_eq!((p.scale, p.zero), (0.125, -128));
        assert_eq!(s.qdq(p, 0.0), 0.0, "zero is exact");
        assert_eq!(s.qdq(p, 31.875), 31.875);
        assert_eq!(s.qdq(p, -1.0), 0.0, "below the range clamps to code -128 = 0.0");
        let p = s.params(-1.0, 3.0);
        assert!((s.qdq(p, -1.0) + 1.0).abs() <= p.scale / 2.0 && (s.qdq(p, 3.0) - 3.0).abs() <= p.scale / 2.0);
    }

    #[test]
    fn fp8_and_degenerate_ranges() {
        let s = ActScheme::fp8_e4m3(true);
        let p = s.params(-896.0, 3.0);
        assert_eq!(p.scale, 2.0);
        assert_eq!(s.qdq(p, -896.0), -896.0);
        assert_eq!(s.qdq(p, 1e9), 896.0, "saturates");
        for s in [ActScheme::int8(true, true), ActScheme::int8(false, true), s] {
            let p = s.token_params(&[0.0, 0.0]);
            assert_eq!(p.scale, 1.0);
            assert_eq!(s.qdq(p, 0.0), 0.0);
        }
    }

    #[test]
    fn ct_args_round_trip_and_refuse_what_vllm_does_not_run() {
        let path = Path::new("config.json");
        for s in [
            ActScheme::int8(true, false),
            ActScheme::int8(false, true),
            ActScheme::fp8_e4m3(false),
            ActScheme::fp8_e4m3(true),
        ] {
            assert_eq!(ActScheme::from_ct_json(&s.to_ct_json("minmax"), path).unwrap(), s);
        }
        let bad = json!({"num_bits": 8, "type": "int", "strategy": "token", "dynamic": false});
        assert!(ActScheme::from_ct_json(&bad, path).unwrap_err().to_string().contains("\"token\""));
        let bad = json!({"num_bits": 4, "type": "int", "strategy": "tensor"});
        assert!(ActScheme::from_ct_json(&bad, path).is_err());
        let s = ActScheme::int8(false, false);
        let ts = s.ct_tensors("m", ActParams { scale: 0.5, zero: -3 });
        let get = |n: &str| ts.iter().find(|t| t.name == n).map(RawTensor::view);
        assert_eq!(s.read_ct_tensors("m", &get).unwrap(), ActParams { scale: 0.5, zero: -3 });
        assert!(ActScheme::int8(true, false).read_ct_tensors("m", &get).unwrap_err().to_string().contains("symmetric"));
        let qc = json!({"format": "int-quantized", "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": s.to_ct_json("mse")}}});
        assert_eq!(ct_input_scheme(&qc, "model.layers.0.mlp.up_proj", path).unwrap(), Some(s));
        let qc = json!({"format": "pack-quantized", "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": s.to_ct_json("mse")}}});
        assert_eq!(ct_input_scheme(&qc, "model.layers.0.mlp.up_proj", path).unwrap(), None);
    }

    #[test]
    fn ct_input_groups_resolve_like_vllm_and_refuse_invalid_patterns() {
        let path = Path::new("config.json");
        let (int8, fp8) = (ActScheme::int8(true, false), ActScheme::fp8_e4m3(true));
        let qc = json!({"format": "int-quantized", "config_groups": {
            "group_0": {"targets": ["Linear"], "input_activations": int8.to_ct_json("minmax")},
            "group_1": {"targets": ["re:.*down_proj$"], "input_activations": fp8.to_ct_json("minmax")},
            "group_2": {"targets": ["model.layers.0.mlp.down_proj"], "input_activations": null},
        }});
        let schemes = CtInputSchemes::from_json(&qc, path).unwrap();
        assert_eq!(schemes.for_module("model.layers.1.mlp.down_proj").unwrap(), Some(fp8), "re: before Linear");
        assert_eq!(schemes.for_module("model.layers.1.mlp.up_proj").unwrap(), Some(int8));
        assert_eq!(schemes.for_module("model.layers.0.mlp.down_proj").unwrap(), None, "exact name first");
        let qc = json!({"format": "int-quantized", "config_groups": {"g": {"targets": ["re:(a*)*b)"]}}});
        let e = CtInputSchemes::from_json(&qc, path).unwrap_err().to_string();
        assert!(e.contains("config.json: quantization_config.config_groups.g.targets[0]: \"re:(a*)*b)\""), "{e}");
    }
}
