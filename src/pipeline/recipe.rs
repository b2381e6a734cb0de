//! Recipes: a run as data. A TOML file names the weight scheme, the checkpoint layout,
//! the calibration, and the modifiers in the order they act:
//!
//! ```toml
//! format = "gptq"
//! [scheme]
//! type = "int4"          # int2 | int3 | int4 | int8 | fp8-e4m3 | fp8-e5m2
//! group_size = 128       # omit: one scale per output channel
//! symmetric = false
//! [calibration]
//! files = ["brown_calib.txt"]
//! nsamples = 128
//! seqlen = 512
//! [[modifier]]
//! type = "awq"
//! [[modifier]]
//! type = "gptq"
//! act_order = true
//! ```
//!
//! Unknown keys and modifiers are errors naming the line; [`Recipe::resolve`] fills every
//! default from the context (what follows what) and checks that the modifiers can follow
//! each other: transforms (awq, smoothquant) first, then one weight quantizer (rtn, hqq,
//! gptq), then optionally activations. The resolved recipe is written beside every
//! checkpoint (`recipe.toml`), and running it again repeats the run byte for byte.

use super::modifiers::{activation::Activations, awq, gptq::Gptq, hqq::Hqq, rtn::Rtn, smooth::SmoothQuant};
use super::{BlockTransform, GroupFallback, Modifiers, SchemePolicy};
use crate::error::{Error, Result};
use crate::format::activation::ActScheme;
use crate::format::compressed_tensors::Target;
use crate::format::ggml::preset::Preset;
use crate::format::ggml::GgmlType;
use crate::format::QuantScheme;
use crate::io::checkpoint::CheckpointFormat;
use crate::model::LlamaConfig;
use crate::quant::activation::ActCalib;
use crate::quant::awq::clip::AwqClip;
use crate::quant::gptq::{Asymmetry, GptqOptions};
use crate::quant::hqq::HqqOptions;
use crate::quant::rotation::{ModelRotation, RotationKind};
use crate::quant::rtn::ClipSearch;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Checkpoint layout: compressed-tensors (the default), gptq, awq, or gguf (the
    /// default of GGUF types).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Also quantize the LM head (GPTQ from its input on the calibration windows); a tied head becomes its
    /// own quantized `lm_head`, the embedding staying full precision.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_head: bool,
    /// `"fp8"`: cache keys and values in FP8 E4M3 with static per-block scales measured on
    /// the calibration windows (compressed-tensors `kv_cache_scheme`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache: Option<String>,
    /// Linears left at full precision: module names or `re:` patterns (compressed-tensors
    /// targets), e.g. `["re:.*layers\\.0\\..*"]`. Each must match some linear.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<String>,
    /// What a linear gets when the scheme's group size does not divide its input width
    /// (the loaders of every format refuse a ragged last group): `"auto"` (the largest of
    /// 256/128/64/32 below the group that divides it, else per-channel), a group size,
    /// `"per-channel"`, or `"partial"` (keep the ragged group; only this tool reads it).
    /// Left out: such a width is an error. Written as the format's per-module override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_fallback: Option<GroupFallbackSpec>,
    pub scheme: SchemeSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationSpec>,
    #[serde(rename = "modifier")]
    pub modifiers: Vec<ModifierSpec>,
    /// A different scheme for the linears matching `targets` (first match wins), e.g.
    /// `down_proj` at 8 bits. Written as compressed-tensors `config_groups`.
    #[serde(default, rename = "override", skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<OverrideSpec>,
    /// Mixed precision to a bits budget: each linear's scheme chosen among `candidates`
    /// from a measurement pass ([`crate::pipeline::budget`]); the run writes the choice as
    /// `override`s in its recipe.toml (and this section no more), so the rerun repeats it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSpec>,
}

/// `[budget]`: a target of stored bits per weight over the quantized block linears.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    pub bpw: f64,
    /// Schemes a linear may take (default: int3 g128, int4 g128, int4 g32, int8 g128, as
    /// symmetric as the recipe's scheme).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<SchemeSpec>,
    /// Calibration windows of the measurement pass (the first N).
    #[serde(default = "budget_windows")]
    pub windows: usize,
    /// The error measured: `"hessian"` (each linear's output through its Hessian; the
    /// default before GPTQ) or `"output"` (each linear alone at its attention or MLP
    /// output; the default otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measure: Option<String>,
}

fn budget_windows() -> usize {
    16
}

/// `group_fallback = 64` or `group_fallback = "auto"` ([`GroupFallback`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GroupFallbackSpec {
    Size(usize),
    Name(String),
}

impl GroupFallbackSpec {
    pub fn to_fallback(&self) -> Result<GroupFallback> {
        match self {
            Self::Size(n) => GroupFallback::parse(&n.to_string()),
            Self::Name(s) => GroupFallback::parse(s),
        }
        .map_err(|e| bad("group_fallback", e.to_string()))
    }

    /// The recipe form of a `--group-fallback` value.
    pub fn from_flag(text: &str) -> Result<Self> {
        Ok(match GroupFallback::parse(text)? {
            GroupFallback::Size(n) => Self::Size(n),
            _ => Self::Name(text.to_string()),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideSpec {
    pub targets: Vec<String>,
    pub scheme: SchemeSpec,
}

/// The weight scheme of every quantized linear.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemeSpec {
    /// int2, int3, int4, int8, fp8-e4m3, fp8-e5m2, or a GGUF preset (`Q4_K_M`, `Q4_0`, …;
    /// `format = "gguf"`); overrides also take the GGUF block types (`q4_k`, `q6_k`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// Input columns per scale group; none: one scale per output channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<usize>,
    /// One scale for the whole matrix.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_tensor: bool,
    #[serde(default = "yes")]
    pub symmetric: bool,
}

impl SchemeSpec {
    /// The recipe form of an integer or FP8 scheme.
    pub fn from_scheme(q: QuantScheme) -> Self {
        use crate::format::{Granularity, NumberFormat};
        let kind = match q.format {
            NumberFormat::Int { bits } => format!("int{bits}"),
            NumberFormat::Fp8E4M3 => "fp8-e4m3".into(),
            NumberFormat::Fp8E5M2 => "fp8-e5m2".into(),
            NumberFormat::Ggml(t) => t.name().to_ascii_lowercase(),
        };
        let group_size = match q.granularity {
            Granularity::Group(g) => Some(g),
            _ => None,
        };
        Self { kind, group_size, per_tensor: q.granularity == Granularity::PerTensor, symmetric: q.symmetric }
    }

    /// The [`QuantScheme`] this describes.
    pub fn to_scheme(&self) -> Result<QuantScheme> {
        let s = self;
        if let Some(ty) = self.gguf_type() {
            if s.group_size.is_some() || s.per_tensor || !s.symmetric {
                return Err(bad(
                    "scheme",
                    format!(
                        "{}: a GGUF type fixes its blocks and grid; drop group_size, per_tensor and symmetric",
                        s.kind
                    ),
                ));
            }
            return QuantScheme::ggml(ty);
        }
        let mut q = match s.kind.as_str() {
            "fp8-e4m3" => QuantScheme::fp8_e4m3(),
            "fp8-e5m2" => QuantScheme::fp8_e5m2(),
            k => match k.strip_prefix("int").and_then(|b| b.parse::<u8>().ok()) {
                Some(bits) => QuantScheme::int(bits).map_err(|e| bad("scheme.type", format!("{k}: {e}")))?,
                // A GGUF-like name gets the list of GGUF types.
                None if k.to_ascii_lowercase().starts_with('q') => return Err(Preset::parse(k).expect_err("not a preset")),
                None => {
                    return Err(bad(
                        "scheme.type",
                        format!("{k:?} is not a scheme (int2, int3, int4, int8, fp8-e4m3, fp8-e5m2, or a GGUF type such as Q4_K_M)"),
                    ))
                }
            },
        };
        q = match (s.per_tensor, s.group_size) {
            (true, Some(g)) => {
                return Err(bad("scheme.group_size", format!("{g} with per_tensor: a per-tensor scheme has no groups")))
            }
            (true, None) => q.per_tensor(),
            (false, Some(g)) => q.group(g)?,
            (false, None) => q.per_channel(),
        };
        if !s.symmetric {
            q = q.asymmetric()?;
        }
        Ok(q)
    }
}

impl SchemeSpec {
    /// The GGUF preset this names (`Q4_K_M`), if any.
    pub fn gguf_preset(&self) -> Option<Preset> {
        Preset::parse(&self.kind).ok()
    }

    /// The ggml block type of a preset's base, or of a block type name (`q4_k`).
    fn gguf_type(&self) -> Option<GgmlType> {
        if let Some(p) = self.gguf_preset() {
            return Some(p.base);
        }
        crate::format::ggml::encode::WRITABLE.into_iter().find(|t| t.name().eq_ignore_ascii_case(&self.kind))
    }
}

fn yes() -> bool {
    true
}

/// Calibration windows: `nsamples` windows of `seqlen` tokens drawn with `seed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSpec {
    /// Text files (default: the Brown calibration split of the asset cache).
    #[serde(default)]
    pub files: Vec<PathBuf>,
    #[serde(default = "default_nsamples")]
    pub nsamples: usize,
    #[serde(default = "default_seqlen")]
    pub seqlen: usize,
    #[serde(default)]
    pub seed: u64,
    /// Windows per forward chunk (memory vs speed; results do not depend on it).
    #[serde(default = "default_chunk")]
    pub chunk_windows: usize,
}

fn default_nsamples() -> usize {
    128
}
fn default_seqlen() -> usize {
    512
}
fn default_chunk() -> usize {
    8
}

/// One modifier and its options. Options left out take their defaults; those that
/// depend on the other modifiers (`Option` here) are filled by [`Recipe::resolve`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ModifierSpec {
    /// Rotate the residual stream (and v/o per head) by a random orthogonal matrix folded
    /// into the weights (QuaRot): the checkpoint stays an ordinary one.
    Rotate {
        /// `hadamard` (random signs times a Hadamard matrix) or `orthogonal`.
        #[serde(default = "hadamard")]
        kind: String,
        #[serde(default)]
        seed: u64,
    },
    /// Round-to-nearest (also FP8 weights, by the scheme).
    Rtn {
        /// Clipping search of the group ranges (GPTQ's `mse`).
        #[serde(default)]
        mse: bool,
        /// GGUF types: weight the block search by each input column's mean square on the
        /// calibration windows (the Hessian diagonal), as llama.cpp's imatrix does.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        imatrix: bool,
    },
    /// HQQ: calibration-free, proximal refinement of the zero points / scales.
    Hqq {
        #[serde(default = "hqq_lp")]
        lp_norm: f32,
        #[serde(default = "hqq_beta")]
        beta: f32,
        #[serde(default = "hqq_kappa")]
        kappa: f32,
        #[serde(default = "hqq_iters")]
        iters: usize,
    },
    Gptq {
        #[serde(default = "gptq_damp")]
        damp: f32,
        #[serde(default = "gptq_block")]
        block_size: usize,
        #[serde(default)]
        act_order: bool,
        #[serde(default)]
        static_groups: bool,
        #[serde(default)]
        mse: bool,
        #[serde(default)]
        refit_scales: bool,
        /// Asymmetric calibration: `gptaq` (GPTAQ's sequential correction) or `target` (the
        /// least-squares target first); absent: plain GPTQ.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        asymmetric: Option<String>,
        /// Weight of the asymmetric correction (default: 0.25 for gptaq, 1 for target).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        asymmetric_alpha: Option<f32>,
    },
    Awq {
        #[serde(default = "awq_grid")]
        grid: usize,
        #[serde(default)]
        duo_scaling: bool,
        /// Clipping search (default: on before RTN, off before GPTQ).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clip: Option<bool>,
        #[serde(default = "awq_clip_tokens")]
        clip_tokens: usize,
        /// Clip to `[-m, m]` only, as AutoAWQ (no proportional ranges for asymmetric schemes).
        #[serde(default)]
        clip_symmetric: bool,
        /// Score the alphas with the weights of `rtn` or `gptq` (default: the quantizer that follows).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        search: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        search_windows: Option<usize>,
    },
    Smoothquant {
        #[serde(default = "smooth_alpha")]
        alpha: f32,
    },
    /// Activation quantization of every quantized linear's input (W8A8).
    Activations {
        /// int8 or fp8-e4m3.
        format: String,
        #[serde(default = "yes")]
        dynamic: bool,
        #[serde(default = "yes")]
        symmetric: bool,
        /// Static scales: minmax, percentile or mse.
        #[serde(default = "minmax")]
        observer: String,
        #[serde(default = "percentile")]
        percentile: f64,
    },
}

fn hqq_lp() -> f32 {
    HqqOptions::default().lp_norm
}
fn hqq_beta() -> f32 {
    HqqOptions::default().beta
}
fn hqq_kappa() -> f32 {
    HqqOptions::default().kappa
}
fn hqq_iters() -> usize {
    HqqOptions::default().iters
}
fn gptq_damp() -> f32 {
    GptqOptions::default().damp
}
fn gptq_block() -> usize {
    GptqOptions::default().block_size
}
fn awq_grid() -> usize {
    20
}
fn awq_clip_tokens() -> usize {
    AwqClip::default().tokens
}
fn smooth_alpha() -> f32 {
    0.8
}
fn minmax() -> String {
    "minmax".into()
}
fn hadamard() -> String {
    "hadamard".into()
}
fn percentile() -> f64 {
    99.99
}

/// What a modifier does, for the ordering rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Rotation,
    Transform,
    Weights,
    Inputs,
}

impl ModifierSpec {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Rotate { .. } => "rotate",
            Self::Rtn { .. } => "rtn",
            Self::Hqq { .. } => "hqq",
            Self::Gptq { .. } => "gptq",
            Self::Awq { .. } => "awq",
            Self::Smoothquant { .. } => "smoothquant",
            Self::Activations { .. } => "activations",
        }
    }

    fn role(&self) -> Role {
        match self {
            Self::Rotate { .. } => Role::Rotation,
            Self::Awq { .. } | Self::Smoothquant { .. } => Role::Transform,
            Self::Rtn { .. } | Self::Hqq { .. } | Self::Gptq { .. } => Role::Weights,
            Self::Activations { .. } => Role::Inputs,
        }
    }

    /// GPTQ's options of a `gptq` modifier.
    pub fn gptq_options(&self) -> Option<GptqOptions> {
        match *self {
            Self::Gptq {
                damp,
                block_size,
                act_order,
                static_groups,
                mse,
                refit_scales,
                ref asymmetric,
                asymmetric_alpha,
            } => {
                let asymmetry = asymmetric.as_deref().and_then(|a| asymmetry(a, asymmetric_alpha).ok());
                Some(GptqOptions { block_size, damp, act_order, static_groups, mse, refit_scales, asymmetry })
            }
            _ => None,
        }
    }
}

/// A `gptq` modifier's `asymmetric` / `asymmetric_alpha`.
pub fn asymmetry(kind: &str, alpha: Option<f32>) -> Result<Asymmetry> {
    match kind {
        "gptaq" => Ok(Asymmetry::Gptaq { alpha: alpha.unwrap_or(0.25) }),
        "target" => Ok(Asymmetry::Target { alpha: alpha.unwrap_or(1.0) }),
        other => Err(bad("gptq.asymmetric", format!("{other:?}: expected \"gptaq\" or \"target\""))),
    }
}

fn bad(option: &str, msg: String) -> Error {
    Error::option(option, msg)
}

impl Recipe {
    /// Read a recipe file; syntax errors and unknown keys name the line.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text).map_err(|e| Error::format(path, e))
    }

    /// Parse a recipe. An error inside a `[[modifier]]` table names that table's line
    /// and position in the list (toml's own span points at the whole array).
    pub fn from_toml(text: &str) -> std::result::Result<Self, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let table: Option<toml::Table> = toml::from_str(text).ok();
            let mods = table.as_ref().and_then(|t| t.get("modifier")).and_then(|m| m.as_array());
            for (n, m) in mods.into_iter().flatten().enumerate() {
                if let Err(inner) = ModifierSpec::deserialize(m.clone()) {
                    let line = text
                        .lines()
                        .enumerate()
                        .filter(|(_, l)| l.trim() == "[[modifier]]")
                        .nth(n)
                        .map_or(0, |(i, _)| i + 1);
                    let kind = m.get("type").and_then(|t| t.as_str()).unwrap_or("?");
                    return format!("line {line}: [[modifier]] {} (type = {kind:?}): {}", n + 1, inner.message());
                }
            }
            e.to_string()
        })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a recipe serializes")
    }

    /// The weight scheme.
    /// The recipe's [`GroupFallback`] (`Refuse` when the key is left out).
    pub fn group_fallback(&self) -> Result<GroupFallback> {
        self.group_fallback.as_ref().map_or(Ok(GroupFallback::Refuse), GroupFallbackSpec::to_fallback)
    }

    pub fn weight_scheme(&self) -> Result<QuantScheme> {
        self.scheme.to_scheme()
    }

    /// The scheme as users name it: `int4-g128-asym`, or a GGUF type (`Q4_K_M`).
    pub fn scheme_name(&self) -> Result<String> {
        match self.scheme.gguf_preset() {
            Some(p) => Ok(p.name.to_string()),
            None => Ok(self.weight_scheme()?.to_string()),
        }
    }

    /// Which scheme each linear gets ([`SchemePolicy`]); every ignore and override
    /// pattern must match one of `names` (the model's linears).
    pub fn scheme_policy(&self, names: &[String]) -> Result<SchemePolicy> {
        let here = Path::new("recipe");
        let check = |targets: &[Target], key: &str| -> Result<()> {
            for t in targets {
                if !names.iter().any(|n| t.matches(n)) {
                    return Err(bad(key, format!("{:?} matches no linear of this model", t.as_str())));
                }
            }
            Ok(())
        };
        let ignore = Target::parse_all(&self.ignore, here, "ignore")?;
        check(&ignore, "ignore")?;
        let mut overrides = Vec::new();
        for (i, o) in self.overrides.iter().enumerate() {
            let key = format!("override[{i}].targets");
            let targets = Target::parse_all(&o.targets, here, &key)?;
            check(&targets, &key)?;
            let scheme = o.scheme.to_scheme().map_err(|e| bad(&format!("override[{i}].scheme"), e.to_string()))?;
            overrides.push((targets, scheme));
        }
        Ok(SchemePolicy { default: self.weight_scheme()?, ignore, overrides })
    }

    /// `rtn`, `gptq`, `awq+gptq`, `smoothquant+rtn+activations`: the modifiers joined.
    pub fn method_name(&self) -> String {
        let names: Vec<&str> = self.modifiers.iter().map(|m| m.name()).collect();
        match names.as_slice() {
            ["awq", "rtn"] => "awq".into(),
            ["rotate", "awq", "rtn"] => "rotate+awq".into(),
            _ => names.join("+"),
        }
    }

    /// The weight quantizer.
    pub fn weights(&self) -> Result<&ModifierSpec> {
        self.modifiers
            .iter()
            .find(|m| m.role() == Role::Weights)
            .ok_or_else(|| bad("modifier", "the recipe has no weight quantizer (rtn, hqq or gptq)".into()))
    }

    pub fn activations(&self) -> Option<&ModifierSpec> {
        self.modifiers.iter().find(|m| m.role() == Role::Inputs)
    }

    pub fn needs_calibration(&self) -> bool {
        self.kv_cache.is_some()
            || self.budget.is_some()
            || self.modifiers.iter().any(|m| match m {
                ModifierSpec::Rtn { imatrix, .. } => *imatrix,
                ModifierSpec::Hqq { .. } | ModifierSpec::Rotate { .. } => false,
                ModifierSpec::Activations { dynamic, .. } => !dynamic,
                _ => true,
            })
    }

    pub fn checkpoint_format(&self) -> Result<CheckpointFormat> {
        match &self.format {
            Some(f) => f.parse::<CheckpointFormat>(),
            None => Ok(CheckpointFormat::CompressedTensors),
        }
    }

    /// Check the order and the combinations, and fill every context-dependent default,
    /// so that the result says everything the run does.
    pub fn resolve(mut self) -> Result<Self> {
        let pos = |i: usize, m: &ModifierSpec| format!("modifier {} ({})", i + 1, m.name());
        let mut last: Option<(usize, Role)> = None;
        for (i, m) in self.modifiers.iter().enumerate() {
            let role = m.role();
            if let Some((j, prev)) = last {
                let p = &self.modifiers[j];
                if role < prev || (role == prev && role != Role::Transform) {
                    return Err(bad(
                        "modifier",
                        format!(
                            "{} cannot follow {}: a rotation (rotate) comes first, then transforms (awq, \
                             smoothquant), then one weight quantizer (rtn, hqq, gptq), then activations",
                            pos(i, m),
                            pos(j, p)
                        ),
                    ));
                }
                if role == Role::Transform && prev == Role::Transform {
                    return Err(bad(
                        "modifier",
                        format!("{} after {}: both fold scales into the same norms; keep one", pos(i, m), pos(j, p)),
                    ));
                }
            }
            last = Some((i, role));
        }
        let weights = self.weights()?.clone();
        let scheme = self.weight_scheme()?;
        let has_act = self.activations().is_some();
        if let Some(fb) = &self.group_fallback {
            fb.to_fallback()?;
            let grouped = |s: &SchemeSpec| s.group_size.is_some() && s.gguf_type().is_none();
            if !grouped(&self.scheme) && !self.overrides.iter().any(|o| grouped(&o.scheme)) {
                return Err(bad(
                    "group_fallback",
                    format!("{fb:?} applies to grouped integer schemes; {} has no groups", self.scheme.kind),
                ));
            }
        }
        match self.kv_cache.as_deref() {
            None | Some("fp8") => {}
            Some(other) => {
                return Err(bad(
                    "--kv-cache",
                    format!("{other:?} is not a KV cache type; the one supported is \"fp8\""),
                ))
            }
        }
        let kv = self.kv_cache.is_some();
        if kv && self.calibration.is_none() {
            return Err(bad(
                "--kv-cache",
                "an FP8 KV cache's scales are measured on calibration windows; add a [calibration] section".into(),
            ));
        }
        let gguf_scheme = scheme.ggml_type().is_some();
        if self.format.is_none() {
            self.format = Some(
                // compressed-tensors: transformers loads it with one small package
                // (`compressed-tensors`), vLLM and llm-compressor natively; gptq needs
                // optimum + GPTQModel in transformers (README "Which format").
                if gguf_scheme { CheckpointFormat::Gguf } else { CheckpointFormat::CompressedTensors }
                    .as_str()
                    .to_string(),
            );
        }
        let format = self.checkpoint_format()?;
        if let Some(ModifierSpec::Rotate { kind, .. }) = self.modifiers.iter().find(|m| m.role() == Role::Rotation) {
            RotationKind::parse(kind)?;
            if format == CheckpointFormat::Gguf {
                return Err(bad(
                    "--rotate",
                    "a rotated tied model needs its own output tensor, which the GGUF export does not lay out yet; \
                     write --format compressed-tensors / gptq / awq"
                        .into(),
                ));
            }
        }
        if format == CheckpointFormat::Gguf || gguf_scheme {
            self.check_gguf(format, &weights)?;
        } else if matches!(weights, ModifierSpec::Rtn { imatrix: true, .. }) {
            return Err(bad("rtn.imatrix", "weights GGUF block searches; it goes with a GGUF type".into()));
        }
        if format == CheckpointFormat::Gptq && scheme.is_fp8() {
            return Err(bad("--format", "gptq cannot store FP8 weights; use --format compressed-tensors".into()));
        }
        if !self.overrides.is_empty() && format == CheckpointFormat::Awq {
            return Err(bad(
                "override",
                "per-module schemes are written as compressed-tensors config_groups or GPTQModel's gptq `dynamic`; \
                 awq stores one scheme (set format = \"compressed-tensors\")"
                    .into(),
            ));
        }
        if !self.overrides.is_empty() && format == CheckpointFormat::Gptq {
            eprintln!(
                "note: per-module schemes are written as GPTQModel's `dynamic`, which GPTQModel and vLLM read; \
                 transformers (optimum) reads one gptq scheme and refuses this checkpoint (compressed-tensors \
                 config_groups load in both)"
            );
        }
        if kv && format != CheckpointFormat::CompressedTensors {
            return Err(bad(
                "--kv-cache",
                format!("a KV cache scheme is written as compressed-tensors only, not {}", format.as_str()),
            ));
        }
        if has_act && format != CheckpointFormat::CompressedTensors {
            return Err(bad(
                "--format",
                format!("activation quantization is written as compressed-tensors only, not {}", format.as_str()),
            ));
        }
        if scheme.is_fp8() && matches!(weights, ModifierSpec::Hqq { .. }) {
            return Err(bad("--method", format!("hqq quantizes to integer schemes; {scheme} is FP8")));
        }
        let follows_gptq = matches!(weights, ModifierSpec::Gptq { .. });
        for m in &mut self.modifiers {
            match m {
                ModifierSpec::Awq { clip, search, .. } => {
                    if scheme.is_fp8() {
                        return Err(bad("--method", format!("awq quantizes to integer schemes; {scheme} is FP8")));
                    }
                    clip.get_or_insert(!follows_gptq && scheme.ggml_type().is_none());
                    let s = search.get_or_insert_with(|| if follows_gptq { "gptq" } else { "rtn" }.into());
                    match (s.as_str(), follows_gptq) {
                        ("rtn", _) | ("gptq", true) => {}
                        ("gptq", false) => {
                            return Err(bad(
                                "awq.search",
                                format!("gptq, but the weights are quantized by {}", weights.name()),
                            ))
                        }
                        (other, _) => return Err(bad("awq.search", format!("{other:?} is not rtn or gptq"))),
                    }
                }
                ModifierSpec::Smoothquant { alpha } => {
                    SmoothQuant::new(*alpha)?;
                }
                ModifierSpec::Gptq { asymmetric: Some(kind), asymmetric_alpha, refit_scales, .. } => {
                    let a = asymmetry(kind, *asymmetric_alpha)?;
                    if !(a.alpha().is_finite() && a.alpha() >= 0.0) {
                        return Err(bad(
                            "gptq.asymmetric_alpha (--asym-alpha)",
                            format!("{}: expected a weight >= 0", a.alpha()),
                        ));
                    }
                    if *refit_scales {
                        return Err(bad(
                            "--refit-scales",
                            "fits the plain GPTQ objective; it does not combine with asymmetric calibration".into(),
                        ));
                    }
                    asymmetric_alpha.get_or_insert(a.alpha());
                }
                ModifierSpec::Gptq { asymmetric: None, asymmetric_alpha: Some(a), .. } => {
                    return Err(bad(
                        "gptq.asymmetric_alpha (--asym-alpha)",
                        format!(
                            "{a} is given without gptq.asymmetric (\"gptaq\" or \"target\": --gptaq, --asym-target)"
                        ),
                    ));
                }
                ModifierSpec::Activations { format, dynamic, symmetric, observer, percentile } => {
                    let act = act_scheme(format, *dynamic, *symmetric)?;
                    ActCalib::parse(observer, *percentile)?;
                    act.check_weights(scheme)?;
                }
                _ => {}
            }
        }
        if let Some(b) = self.budget.as_mut() {
            let bad_budget = |msg: String| Err(bad("--target-bpw", msg));
            if !(b.bpw.is_finite() && b.bpw > 0.0) {
                return bad_budget(format!("{} is not a positive number of bits per weight", b.bpw));
            }
            if !matches!(scheme.format, crate::format::NumberFormat::Int { .. }) {
                return bad_budget(format!("mixes integer schemes; {scheme} is not one"));
            }
            if !self.overrides.is_empty() {
                return bad_budget("chooses every linear's scheme; drop the recipe's overrides".into());
            }
            if format == CheckpointFormat::Awq {
                return bad_budget("awq stores one scheme; use --format compressed-tensors or gptq".into());
            }
            if has_act {
                return bad_budget("goes with weight-only schemes".into());
            }
            if b.windows == 0 {
                return Err(bad("budget.windows", "0; the measurement needs at least one window".into()));
            }
            match b.measure.as_deref() {
                None => {
                    let gptq = weights.gptq_options().is_some();
                    b.measure = Some(if gptq { "hessian" } else { "output" }.into());
                }
                Some("hessian" | "output") => {}
                Some(other) => {
                    return Err(bad("budget.measure", format!("{other:?} is not \"hessian\" or \"output\"")));
                }
            }
            if b.candidates.is_empty() {
                let sym = scheme.symmetric;
                b.candidates = [(3, Some(128)), (4, Some(128)), (4, Some(32)), (8, Some(128))]
                    .into_iter()
                    .map(|(bits, group_size)| SchemeSpec {
                        kind: format!("int{bits}"),
                        group_size,
                        per_tensor: false,
                        symmetric: sym,
                    })
                    .collect();
            }
            for (i, c) in b.candidates.iter().enumerate() {
                let q = c.to_scheme().map_err(|e| bad(&format!("budget.candidates[{i}]"), e.to_string()))?;
                if !matches!(q.format, crate::format::NumberFormat::Int { .. }) {
                    return Err(bad(
                        &format!("budget.candidates[{i}]"),
                        format!("{q}: candidates are integer schemes"),
                    ));
                }
            }
        }
        if self.needs_calibration() && self.calibration.is_none() {
            return Err(bad("calibration", format!("{} needs a [calibration] section", self.method_name())));
        }
        Ok(self)
    }

    /// The combinations a GGUF file can hold, checked by [`Recipe::resolve`].
    fn check_gguf(&self, format: CheckpointFormat, weights: &ModifierSpec) -> Result<()> {
        let gguf = |msg: String| Err(bad("--format gguf", msg));
        if format != CheckpointFormat::Gguf {
            return Err(bad(
                "--format",
                format!("{} is a GGUF type, written as format = \"gguf\", not {format}", self.scheme.kind),
            ));
        }
        if self.scheme.gguf_preset().is_none() {
            return Err(bad(
                "scheme.type",
                format!("{:?} is not a GGUF file type; use a llama-quantize type such as Q4_K_M, Q4_0, Q8_0 (block types such as q6_k go in overrides)", self.scheme.kind),
            ));
        }
        for (i, o) in self.overrides.iter().enumerate() {
            if o.scheme.to_scheme()?.ggml_type().is_none() {
                return Err(bad(
                    &format!("override[{i}].scheme"),
                    format!(
                        "{} is not a GGUF block type (q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k)",
                        o.scheme.kind
                    ),
                ));
            }
        }
        if self.activations().is_some() || self.kv_cache.is_some() {
            return gguf("GGUF files carry no activation or KV cache scales".into());
        }
        if self.include_head {
            return gguf("the head's type comes from the GGUF type's mix (drop --include-head)".into());
        }
        if let Some(t) = self.modifiers.iter().find(|m| matches!(m, ModifierSpec::Smoothquant { .. })) {
            return gguf(format!("{} moves scales into activations that GGUF files do not quantize", t.name()));
        }
        if self.modifiers.iter().any(|m| matches!(m, ModifierSpec::Awq { clip: Some(true), .. })) {
            return gguf(
                "awq's clipping search is for integer groups; GGUF blocks search their own scales (awq.clip = false)"
                    .into(),
            );
        }
        match *weights {
            ModifierSpec::Rtn { mse: true, .. } => {
                gguf("rtn's mse clipping is for integer schemes; GGUF blocks search their own scales".into())
            }
            ModifierSpec::Gptq { mse: true, .. } | ModifierSpec::Gptq { refit_scales: true, .. } => {
                gguf("gptq's mse and refit_scales are for integer schemes; GGUF grids are solved up front".into())
            }
            ModifierSpec::Hqq { .. } => gguf("hqq quantizes to integer schemes, not GGUF blocks".into()),
            _ => Ok(()),
        }
    }

    /// This recipe's group fallback applied to `schemes` over the model's linears (and the
    /// head when it is quantized); returns the notes to print.
    pub fn apply_group_fallback(&self, cfg: &LlamaConfig, schemes: &mut SchemePolicy) -> Result<Vec<String>> {
        let mut widths: Vec<(String, usize)> =
            crate::model::llama::block_linears(cfg).into_iter().map(|(n, _, i)| (n, i)).collect();
        if self.include_head {
            widths.push(("lm_head".into(), cfg.hidden_size));
        }
        let format = self.checkpoint_format()?;
        // AutoAWQ's config holds one group size, and so does gptq's as transformers reads
        // it (optimum ignores GPTQModel's `dynamic`).
        let one_group = matches!(format, CheckpointFormat::Awq | CheckpointFormat::Gptq).then(|| format.as_str());
        schemes.apply_group_fallback(&widths, self.group_fallback()?, one_group)
    }

    /// The modifiers of a resolved recipe, ready for the driver.
    pub fn build(&self, cfg: &LlamaConfig) -> Result<Modifiers> {
        let mut names: Vec<String> = crate::model::llama::block_linears(cfg).into_iter().map(|(n, ..)| n).collect();
        if self.include_head {
            names.push("lm_head".into());
        }
        let mut schemes = self.scheme_policy(&names)?;
        if let Some(preset) = self.scheme.gguf_preset() {
            // llama.cpp's mix under the recipe's own overrides and ignores (they come first).
            let mix = super::gguf_export::preset_policy(cfg, preset, self.needs_calibration())?;
            schemes.overrides.extend(mix.overrides);
            schemes.ignore.extend(mix.ignore);
        }
        for note in self.apply_group_fallback(cfg, &mut schemes)? {
            eprintln!("{note}");
        }
        let weights = self.weights()?;
        let gptq_follows = weights.gptq_options();
        let mut transforms: Vec<Box<dyn BlockTransform>> = Vec::new();
        let mut inputs: Option<Box<dyn super::InputQuantizer>> = None;
        let mut wq: Option<Box<dyn super::WeightQuantizer>> = None;
        let mut rotation = None;
        for m in &self.modifiers {
            match m.clone() {
                ModifierSpec::Rotate { kind, seed } => {
                    rotation = Some(ModelRotation::new(cfg, RotationKind::parse(&kind)?, seed)?)
                }
                ModifierSpec::Rtn { mse, imatrix } => {
                    wq = Some(Box::new(Rtn { clip: mse.then(ClipSearch::default), imatrix }))
                }
                ModifierSpec::Hqq { lp_norm, beta, kappa, iters } => {
                    wq = Some(Box::new(Hqq { opts: HqqOptions { lp_norm, beta, kappa, iters } }))
                }
                ModifierSpec::Gptq { .. } => wq = Some(Box::new(Gptq { opts: m.gptq_options().expect("gptq") })),
                ModifierSpec::Awq { grid, duo_scaling, clip, clip_tokens, clip_symmetric, search, search_windows } => {
                    let opts =
                        awq::AwqOptions {
                            grid,
                            duo_scaling,
                            clip: clip.unwrap_or(true).then_some(AwqClip {
                                tokens: clip_tokens,
                                proportional: !clip_symmetric,
                                ..AwqClip::default()
                            }),
                            // Scoring with GPTQ without its MSE search (which would cost 7x).
                            search_gptq: gptq_follows
                                .filter(|_| search.as_deref() == Some("gptq"))
                                .map(|g| GptqOptions { mse: false, asymmetry: None, ..g }),
                            search_windows,
                        };
                    transforms.push(Box::new(awq::Awq::new(cfg, schemes.clone(), opts)?));
                }
                ModifierSpec::Smoothquant { alpha } => transforms.push(Box::new(SmoothQuant::new(alpha)?)),
                ModifierSpec::Activations { format, dynamic, symmetric, observer, percentile } => {
                    let act = act_scheme(&format, dynamic, symmetric)?;
                    inputs = Some(Box::new(Activations::new(act, ActCalib::parse(&observer, percentile)?)?));
                }
            }
        }
        Ok(Modifiers {
            schemes,
            rotation,
            transforms,
            weights: wq.expect("resolve checked the weight quantizer"),
            inputs,
        })
    }

    /// The activation scheme and observer of the `activations` modifier.
    pub fn act_scheme(&self) -> Result<Option<(ActScheme, ActCalib)>> {
        match self.activations() {
            Some(ModifierSpec::Activations { format, dynamic, symmetric, observer, percentile }) => {
                Ok(Some((act_scheme(format, *dynamic, *symmetric)?, ActCalib::parse(observer, *percentile)?)))
            }
            _ => Ok(None),
        }
    }
}

fn act_scheme(format: &str, dynamic: bool, symmetric: bool) -> Result<ActScheme> {
    match format {
        "int8" => Ok(ActScheme::int8(symmetric, dynamic)),
        "fp8-e4m3" if symmetric => Ok(ActScheme::fp8_e4m3(dynamic)),
        "fp8-e4m3" => Err(bad("activations.symmetric", "FP8 activations are symmetric".into())),
        other => Err(bad("activations.format", format!("{other:?} is not int8 or fp8-e4m3"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AWQ_GPTQ: &str = r#"
[scheme]
type = "int4"
group_size = 128
symmetric = false
[calibration]
nsamples = 4
seqlen = 64
[[modifier]]
type = "awq"
[[modifier]]
type = "gptq"
act_order = true
"#;

    #[test]
    fn a_recipe_resolves_its_defaults_and_round_trips() {
        let r = Recipe::from_toml(AWQ_GPTQ).unwrap().resolve().unwrap();
        assert_eq!(r.method_name(), "awq+gptq");
        assert_eq!(r.format.as_deref(), Some("compressed-tensors"));
        match &r.modifiers[0] {
            ModifierSpec::Awq { clip, search, .. } => {
                assert_eq!((*clip, search.as_deref()), (Some(false), Some("gptq")))
            }
            m => panic!("{m:?}"),
        }
        let again = Recipe::from_toml(&r.to_toml()).unwrap();
        assert_eq!(again, r);
        assert_eq!(again.clone().resolve().unwrap(), r, "resolving is idempotent");
    }

    #[test]
    fn unknown_keys_and_modifiers_name_the_line() {
        let e = Recipe::from_toml(&AWQ_GPTQ.replace("act_order", "act_ordr")).unwrap_err().to_string();
        assert!(e.contains("act_ordr") && e.contains("line 11: [[modifier]] 2 (type = \"gptq\")"), "{e}");
        let e = Recipe::from_toml(&AWQ_GPTQ.replace("\"awq\"", "\"quip\"")).unwrap_err().to_string();
        assert!(e.contains("quip") && e.contains("line 9: [[modifier]] 1"), "{e}");
        let e = Recipe::from_toml(&AWQ_GPTQ.replace("seqlen", "seqln")).unwrap_err().to_string();
        assert!(e.contains("seqln") && e.contains("line 8"), "{e}");
    }

    #[test]
    fn modifiers_that_cannot_follow_each_other_are_refused() {
        let swapped =
            AWQ_GPTQ.replace("\"awq\"", "\"tmp\"").replace("\"gptq\"", "\"awq\"").replace("\"tmp\"", "\"gptq\"");
        let swapped = swapped.replace("act_order = true", "");
        let e = Recipe::from_toml(&swapped).unwrap().resolve().unwrap_err().to_string();
        assert!(e.contains("modifier 2 (awq) cannot follow modifier 1 (gptq)"), "{e}");
        let two = AWQ_GPTQ.replace("type = \"awq\"", "type = \"rtn\"");
        let e = Recipe::from_toml(&two).unwrap().resolve().unwrap_err().to_string();
        assert!(e.contains("modifier 2 (gptq) cannot follow modifier 1 (rtn)"), "{e}");
        let none = "[scheme]\ntype = \"int4\"\n[[modifier]]\ntype = \"smoothquant\"\n";
        assert!(Recipe::from_toml(none).unwrap().resolve().unwrap_err().to_string().contains("no weight quantizer"));
        let uncal = "[scheme]\ntype = \"int4\"\n[[modifier]]\ntype = \"gptq\"\n";
        assert!(Recipe::from_toml(uncal).unwrap().resolve().unwrap_err().to_string().contains("[calibration]"));
        let bad_scheme = "[scheme]\ntype = \"int5\"\n[[modifier]]\ntype = \"rtn\"\n";
        assert!(Recipe::from_toml(bad_scheme).unwrap().resolve().unwrap_err().to_string().contains("int5"));
    }
}
