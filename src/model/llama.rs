//! The LLaMA family (llama, mistral, qwen2, qwen3, phi3, gemma2) over [`Linear`]: one model file
//! whose linears may be dense, quantized or on the GPU. The structure is declared as data
//! ([`LlamaConfig::linears`]: the block's linears and the site each reads) so
//! calibration, GPTQ and AWQ never test for types or families.

use super::config::{Activation, LlamaConfig};
use super::kv_cache::{KvCache, KvScratch, LayerKv};
use super::layers::{
    add_assign, add_bias, cached_attention, causal_attention, geglu_tanh, rms_norm, swiglu, AttnParams, Rope,
};
use super::linear::{Linear, MappedLinear};
use crate::error::{Error, Result};
use crate::format::kv_cache;
use crate::io::safetensors::SafetensorsStore;
use std::path::Path;

/// Where a linear reads its input; linears that share a site share one input (and one
/// Hessian during calibration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InputSite {
    /// Normalized block input: read by q, k, v.
    AttnIn,
    /// Attention output (heads concatenated): read by o.
    AttnOut,
    /// Normalized residual after attention: read by gate, up.
    MlpIn,
    /// SwiGLU activation: read by down.
    MlpAct,
}

/// One step of a block's forward. A block runs [`BLOCK_STAGES`] in order, each from the
/// residual stream and the previous stage's output; a stage whose output is read by
/// linears names that [`InputSite`]. Every block driver walks this list (calibration,
/// AWQ's full-precision pass, W8A8 observers), so the order is written once, here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// `rms_norm(x)`: read by q, k, v.
    AttnNorm,
    /// q/k/v, RoPE, causal attention: heads concatenated, read by o.
    Attention,
    /// `x += o(attn)`; `rms_norm(x)`: read by gate, up.
    AttnResidual,
    /// `silu(gate) * up`: read by down.
    MlpAct,
    /// `x += down(act)`: the block output.
    MlpResidual,
}

impl Stage {
    /// The site whose linears read this stage's output.
    pub fn site(self) -> Option<InputSite> {
        match self {
            Stage::AttnNorm => Some(InputSite::AttnIn),
            Stage::Attention => Some(InputSite::AttnOut),
            Stage::AttnResidual => Some(InputSite::MlpIn),
            Stage::MlpAct => Some(InputSite::MlpAct),
            Stage::MlpResidual => None,
        }
    }

    /// What the stage computes, for progress messages.
    pub fn describe(self) -> &'static str {
        match self {
            Stage::AttnNorm => "input norm",
            Stage::Attention => "attention",
            Stage::AttnResidual => "attention residual + norm",
            Stage::MlpAct => "MLP gate/up",
            Stage::MlpResidual => "MLP down + residual",
        }
    }

    /// Width of this stage's output (0 for the last).
    pub fn out_width(self, cfg: &LlamaConfig) -> usize {
        match self {
            Stage::AttnNorm | Stage::AttnResidual => cfg.hidden_size,
            Stage::Attention => cfg.q_dim(),
            Stage::MlpAct => cfg.intermediate_size,
            Stage::MlpResidual => 0,
        }
    }
}

/// The stages of a block, in order.
pub const BLOCK_STAGES: [Stage; 5] =
    [Stage::AttnNorm, Stage::Attention, Stage::AttnResidual, Stage::MlpAct, Stage::MlpResidual];

/// The sites of a block, in stage order.
pub fn block_sites() -> impl Iterator<Item = InputSite> {
    BLOCK_STAGES.iter().filter_map(|s| s.site())
}

/// Indices into [`LlamaConfig::linears`] of the linears reading `site`, in declared order.
pub fn site_linears(cfg: &LlamaConfig, site: InputSite) -> Vec<usize> {
    let l = cfg.linears();
    (0..l.len()).filter(|&i| l[i].1 == site).collect()
}

/// Input width of `site`.
pub fn site_width(cfg: &LlamaConfig, site: InputSite) -> usize {
    linear_shape(cfg, cfg.linears()[site_linears(cfg, site)[0]].0).1
}

/// Index of the block linear `short` in [`LlamaConfig::linears`] order.
pub fn linear_index(cfg: &LlamaConfig, short: &str) -> usize {
    cfg.linears()
        .iter()
        .position(|(s, _)| *s == short)
        .unwrap_or_else(|| panic!("{short} is not a block linear of {}", cfg.model_type))
}

impl LlamaConfig {
    /// The block's linears in the model's sequential order (the order GPTQ quantizes
    /// them), with the site whose activations they read: [`BLOCK_LINEARS`], or
    /// [`FUSED_BLOCK_LINEARS`] for phi3.
    pub fn linears(&self) -> &'static [(&'static str, InputSite)] {
        if self.fused() {
            &FUSED_BLOCK_LINEARS
        } else {
            &BLOCK_LINEARS
        }
    }

    /// RoPE tables for sequences of `seq` positions, with this config's scaling (and
    /// gemma3's local tables for its sliding blocks).
    pub fn rope_tables(&self, seq: usize) -> Rope {
        Rope::with_local(&self.rope, self.rope_local.as_ref(), self.head_dim, seq)
    }
}

/// Phi-3's block: q/k/v fused into one linear (rows `[q | k | v]`), gate/up into one
/// (rows `[gate | up]`), as its checkpoints store them.
pub const FUSED_BLOCK_LINEARS: [(&str, InputSite); 4] = [
    ("self_attn.qkv_proj", InputSite::AttnIn),
    ("self_attn.o_proj", InputSite::AttnOut),
    ("mlp.gate_up_proj", InputSite::MlpIn),
    ("mlp.down_proj", InputSite::MlpAct),
];

/// Linears of a llama block in the model's sequential order, with the site whose
/// activations they read.
pub const BLOCK_LINEARS: [(&str, InputSite); 7] = [
    ("self_attn.q_proj", InputSite::AttnIn),
    ("self_attn.k_proj", InputSite::AttnIn),
    ("self_attn.v_proj", InputSite::AttnIn),
    ("self_attn.o_proj", InputSite::AttnOut),
    ("mlp.gate_proj", InputSite::MlpIn),
    ("mlp.up_proj", InputSite::MlpIn),
    ("mlp.down_proj", InputSite::MlpAct),
];

/// Names (`model.layers.N.self_attn.q_proj`) and `[out, in]` of every block linear.
pub fn block_linears(cfg: &LlamaConfig) -> Vec<(String, usize, usize)> {
    (0..cfg.num_layers)
        .flat_map(|b| {
            cfg.linears().iter().map(move |(short, _)| {
                let (o, i) = linear_shape(cfg, short);
                (format!("model.layers.{b}.{short}"), o, i)
            })
        })
        .collect()
}

/// Check the weights in `store` against `cfg` before any work, naming the tensor and the
/// config keys at fault: the embedding is `[vocab_size, hidden_size]`, no tensor belongs
/// to a block beyond `num_hidden_layers`, every dense block linear and the LM head have
/// the shape the config implies (quantized linears are checked by their loader).
pub fn check_store(cfg: &LlamaConfig, store: &SafetensorsStore) -> Result<()> {
    let (h, vocab) = (cfg.hidden_size, cfg.vocab_size);
    let expect = |name: &str, want: [usize; 2], keys: &str| -> Result<()> {
        let t = store.raw(name)?;
        if t.shape != want {
            return Err(Error::tensor(name, format!("shape {:?}, but config.json implies {want:?} ({keys})", t.shape)));
        }
        Ok(())
    };
    expect("model.embed_tokens.weight", [vocab, h], &format!("vocab_size = {vocab}, hidden_size = {h}"))?;
    if store.contains("lm_head.weight") {
        expect("lm_head.weight", [vocab, h], &format!("vocab_size = {vocab}, hidden_size = {h}"))?;
    }
    for name in store.names() {
        let block = name.strip_prefix("model.layers.").and_then(|r| r.split('.').next()?.parse::<usize>().ok());
        if let Some(b) = block.filter(|&b| b >= cfg.num_layers) {
            return Err(Error::tensor(
                name,
                format!(
                    "belongs to block {b}, but config.json has num_hidden_layers = {} (a truncated config?)",
                    cfg.num_layers
                ),
            ));
        }
    }
    let keys = format!(
        "hidden_size = {h}, intermediate_size = {}, {} heads, {} kv heads, head_dim = {}",
        cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    );
    for (name, o, i) in block_linears(cfg) {
        let w = format!("{name}.weight");
        if store.contains(&w) {
            expect(&w, [o, i], &keys)?;
        }
    }
    // Biases and q/k norms as the config declares them, before any work.
    for b in 0..cfg.num_layers {
        let p = format!("model.layers.{b}");
        for (short, _) in cfg.linears() {
            let bias = format!("{p}.{short}.bias");
            match (cfg.linear_has_bias(short), store.contains(&bias)) {
                (true, _) => check_vector(store, &bias, linear_shape(cfg, short).0, "attention_bias / mlp_bias")?,
                (false, true) => {
                    return Err(Error::tensor(
                        &bias,
                        "is in the model, but config.json gives this linear no bias (attention_bias / mlp_bias)",
                    ))
                }
                (false, false) => {}
            }
        }
        for norm in ["q_norm", "k_norm"] {
            let name = format!("{p}.self_attn.{norm}.weight");
            match (cfg.qk_norm, store.contains(&name)) {
                (true, _) => check_vector(store, &name, cfg.head_dim, "head_dim")?,
                (false, true) => {
                    return Err(Error::tensor(
                        &name,
                        format!("is in the model, but model_type \"{}\" has no q/k norms", cfg.model_type),
                    ))
                }
                (false, false) => {}
            }
        }
    }
    Ok(())
}

/// `name` exists and is a vector of `len` values (`len` from the config `keys`).
fn check_vector(store: &SafetensorsStore, name: &str, len: usize, keys: &str) -> Result<()> {
    let t = store.raw(name).map_err(|_| {
        Error::tensor(name, format!("not found in the model's safetensors, but config.json implies it ({keys})"))
    })?;
    if t.shape != [len] {
        return Err(Error::tensor(name, format!("shape {:?}, but config.json implies [{len}] ({keys})", t.shape)));
    }
    Ok(())
}

/// `[out, in]` of a block linear, by its short name.
pub fn linear_shape(cfg: &LlamaConfig, short: &str) -> (usize, usize) {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    match short {
        "self_attn.q_proj" => (cfg.q_dim(), h),
        "self_attn.k_proj" | "self_attn.v_proj" => (cfg.kv_dim(), h),
        "self_attn.o_proj" => (h, cfg.q_dim()),
        "mlp.gate_proj" | "mlp.up_proj" => (i, h),
        "mlp.down_proj" => (h, i),
        "self_attn.qkv_proj" => (cfg.q_dim() + 2 * cfg.kv_dim(), h),
        "mlp.gate_up_proj" => (2 * i, h),
        other => panic!("unknown block linear {other}"),
    }
}

/// The operation whose output a scale group's linears read (AWQ divides its output
/// channels by the group's scales, so the linears can multiply their inputs by them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleSource {
    /// `input_layernorm` (its weight is divided).
    InputNorm,
    /// `post_attention_layernorm`.
    PostNorm,
    /// A block linear (short name): its last rows (and bias entries), one per scaled
    /// channel, are divided: all of `v_proj` or `up_proj`, the `v` rows of a fused
    /// `qkv_proj`, the `up` half of a fused `gate_up_proj` (AutoAWQ's `scale_fc_fc`).
    Linear(&'static str),
}

/// What AWQ compares, full precision vs quantized, when it scores a group's scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleTarget {
    /// The attention output after o_proj (q/k/v feed it through the softmax).
    AttentionOutput,
    /// The MLP output after down_proj (gate/up feed it through SwiGLU).
    MlpOutput,
    /// The group's own linear outputs.
    Linears,
}

/// AWQ scale group: `source -> linears`, the linears reading `source`'s output at `site`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleGroup {
    pub source: ScaleSource,
    /// Short names, in [`LlamaConfig::linears`] order.
    pub linears: Vec<&'static str>,
    pub site: InputSite,
    pub target: ScaleTarget,
}

impl ScaleGroup {
    /// Declare a group, refusing one whose widths do not line up: `source`'s output width
    /// (for a linear source, its last rows) must be every linear's input width, and the
    /// linears must share one input site.
    pub fn new(cfg: &LlamaConfig, source: ScaleSource, linears: &[&'static str], target: ScaleTarget) -> Result<Self> {
        let site_of = |l: &str| cfg.linears().iter().find(|(s, _)| *s == l).map(|(_, site)| *site);
        let name = format!("{source:?} -> {linears:?}");
        let width = match source {
            ScaleSource::InputNorm | ScaleSource::PostNorm => cfg.hidden_size,
            ScaleSource::Linear(l) => {
                site_of(l).ok_or_else(|| Error::other_msg(format!("scale group {name}: {l} is not a block linear")))?;
                scaled_rows(cfg, l)
            }
        };
        let first = *linears.first().ok_or_else(|| Error::other_msg(format!("scale group {name}: no linears")))?;
        let site = site_of(first)
            .ok_or_else(|| Error::other_msg(format!("scale group {name}: {first} is not a block linear")))?;
        for &l in linears {
            let s =
                site_of(l).ok_or_else(|| Error::other_msg(format!("scale group {name}: {l} is not a block linear")))?;
            if s != site {
                return Err(Error::other_msg(format!(
                    "scale group {name}: {l} reads {s:?} but {first} reads {site:?}"
                )));
            }
            if ScaleSource::Linear(l) == source {
                return Err(Error::other_msg(format!("scale group {name}: {l} cannot scale its own input")));
            }
            let inp = linear_shape(cfg, l).1;
            if inp != width {
                return Err(Error::other_msg(format!(
                    "scale group {name}: the source's output has {width} channels but {l} reads {inp}"
                )));
            }
        }
        Ok(Self { source, linears: linears.to_vec(), site, target })
    }
}

/// How many of linear `short`'s last rows a scale group with it as source divides: the
/// `v` rows of a fused `qkv_proj`, the `up` half of `gate_up_proj`, else all.
pub fn scaled_rows(cfg: &LlamaConfig, short: &str) -> usize {
    match short {
        "self_attn.qkv_proj" => cfg.kv_dim(),
        "mlp.gate_up_proj" => cfg.intermediate_size,
        _ => linear_shape(cfg, short).0,
    }
}

/// The AWQ scale groups of a block, in site order: input norm -> q/k/v; v -> o only when
/// v's outputs are o's inputs one to one (no grouped-query attention, as AutoAWQ's
/// `v_proj.weight.shape == o_proj.weight.shape`); post-attention norm -> gate/up; up -> down.
pub fn scale_groups(cfg: &LlamaConfig) -> Result<Vec<ScaleGroup>> {
    use ScaleSource::*;
    if cfg.fused() {
        let mut g = vec![ScaleGroup::new(cfg, InputNorm, &["self_attn.qkv_proj"], ScaleTarget::AttentionOutput)?];
        if cfg.num_kv_heads == cfg.num_heads {
            g.push(ScaleGroup::new(cfg, Linear("self_attn.qkv_proj"), &["self_attn.o_proj"], ScaleTarget::Linears)?);
        }
        g.push(ScaleGroup::new(cfg, PostNorm, &["mlp.gate_up_proj"], ScaleTarget::MlpOutput)?);
        g.push(ScaleGroup::new(cfg, Linear("mlp.gate_up_proj"), &["mlp.down_proj"], ScaleTarget::Linears)?);
        return Ok(g);
    }
    let mut g = vec![ScaleGroup::new(
        cfg,
        InputNorm,
        &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        ScaleTarget::AttentionOutput,
    )?];
    if cfg.num_kv_heads == cfg.num_heads {
        g.push(ScaleGroup::new(cfg, Linear("self_attn.v_proj"), &["self_attn.o_proj"], ScaleTarget::Linears)?);
    }
    g.push(ScaleGroup::new(cfg, PostNorm, &["mlp.gate_proj", "mlp.up_proj"], ScaleTarget::MlpOutput)?);
    g.push(ScaleGroup::new(cfg, Linear("mlp.up_proj"), &["mlp.down_proj"], ScaleTarget::Linears)?);
    Ok(g)
}

/// Linears whose outputs meet in the attention scores `q·kᵀ`: the softmax magnifies
/// their errors, so AWQ's clipping search leaves them alone.
/// (AutoAWQ also skips a fused `qkv_proj`.)
pub const SCORE_LINEARS: [&str; 3] = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.qkv_proj"];

/// Sees the input of each linear site as a block runs (calibration observers).
pub trait BlockHook {
    /// `x`: `[tokens, width]` row-major, the exact input the site's linears receive.
    fn on_input(&mut self, site: InputSite, x: &[f32], tokens: usize) -> Result<()>;
}

/// Makes the linear for a module name such as `model.layers.3.self_attn.q_proj`.
pub type LinearFactory<'a> = dyn Fn(&str, usize, usize) -> Result<Box<dyn Linear>> + 'a;

/// A dense linear `{name}.weight`, checked for shape, left in the memory-mapped file
/// ([`MappedLinear`]): no f32 copy (a bf16 8B model would take 32 GB as f32; the head
/// alone 2 GB at a 128k vocabulary), and f32 files are read in place with the same bits.
pub fn dense_from_store(store: &SafetensorsStore, name: &str, out: usize, inp: usize) -> Result<Box<dyn Linear>> {
    Ok(Box::new(MappedLinear::new(store.mapped(&format!("{name}.weight"), [out, inp])?)))
}

pub struct Block {
    pub index: usize,
    /// RMSNorm multipliers (a gemma weight `w` is held as `1 + w`, [`load_norm`]).
    pub input_norm: Vec<f32>,
    /// The norm read by gate/up ([`LlamaConfig::mlp_norm_name`]).
    pub post_norm: Vec<f32>,
    /// Norms of the attention output and of the MLP output, before each residual add
    /// (gemma2's `post_attention_layernorm`, `post_feedforward_layernorm`).
    pub sandwich_norms: Option<[Vec<f32>; 2]>,
    /// In [`LlamaConfig::linears`] order.
    pub linears: Vec<Box<dyn Linear>>,
    /// Each linear's bias, where the config gives it one ([`LlamaConfig::linear_has_bias`]).
    pub biases: Vec<Option<Vec<f32>>>,
    /// Per-head RMSNorm weights of q and k (`[head_dim]` each; qwen3).
    pub qk_norm: Option<[Vec<f32>; 2]>,
    /// `[k_scale, v_scale]` of an FP8 KV cache (`kv_cache_scheme`): keys and values are
    /// rounded to what the cache holds, in windows as in generation.
    pub kv_scales: Option<[f32; 2]>,
}

/// How a block's attention sees its rows.
pub enum Attend<'a> {
    /// `windows` independent windows of `seq` tokens (calibration, evaluation); with
    /// `kv_absmax`, the largest |key| and |value| (after RoPE) are recorded there.
    Windows { rope: &'a Rope, windows: usize, seq: usize, kv_absmax: Option<&'a mut [f32; 2]> },
    /// New tokens after those held in `kv` (generation); their keys and values are
    /// appended, and an FP8 cache is decoded into `scratch` to attend.
    Cached { rope: &'a Rope, kv: &'a mut LayerKv, scratch: &'a mut KvScratch },
}

/// The dense tensors of a block besides its linear weights: norms, biases, q/k norms.
pub struct BlockDense {
    pub input_norm: Vec<f32>,
    pub post_norm: Vec<f32>,
    pub sandwich_norms: Option<[Vec<f32>; 2]>,
    pub biases: Vec<Option<Vec<f32>>>,
    pub qk_norm: Option<[Vec<f32>; 2]>,
    pub kv_scales: Option<[f32; 2]>,
}

impl BlockDense {
    /// Read block `index`'s dense tensors, each checked for shape.
    pub fn load(cfg: &LlamaConfig, store: &SafetensorsStore, index: usize) -> Result<Self> {
        let p = format!("model.layers.{index}");
        let h = cfg.hidden_size;
        let biases = cfg
            .linears()
            .iter()
            .map(|(short, _)| {
                // Presence and absence were checked by `check_store`.
                let bias = format!("{p}.{short}.bias");
                match cfg.linear_has_bias(short) {
                    true => store.f32_shaped(&bias, &[linear_shape(cfg, short).0]).map(Some),
                    false => Ok(None),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let qk_norm = if cfg.qk_norm {
            Some([
                load_norm(cfg, store, &format!("{p}.self_attn.q_norm.weight"), cfg.head_dim)?,
                load_norm(cfg, store, &format!("{p}.self_attn.k_norm.weight"), cfg.head_dim)?,
            ])
        } else {
            None
        };
        let sandwich_norms = if cfg.sandwich_norms {
            Some([
                load_norm(cfg, store, &format!("{p}.post_attention_layernorm.weight"), h)?,
                load_norm(cfg, store, &format!("{p}.post_feedforward_layernorm.weight"), h)?,
            ])
        } else {
            None
        };
        let kv_scales = if cfg.kv_cache_fp8 {
            let [k, v] = kv_cache::scale_names(index).map(|n| read_scale(store, &n));
            Some([k?, v?])
        } else {
            None
        };
        Ok(Self {
            input_norm: load_norm(cfg, store, &format!("{p}.input_layernorm.weight"), h)?,
            post_norm: load_norm(cfg, store, &format!("{p}.{}.weight", cfg.mlp_norm_name()), h)?,
            sandwich_norms,
            biases,
            qk_norm,
            kv_scales,
        })
    }
}

/// An RMSNorm weight `[len]` as the multiplier it applies: the stored weight plus
/// [`LlamaConfig::norm_offset`] (gemma's `1 + w`, computed in f32 as transformers does).
pub fn load_norm(cfg: &LlamaConfig, store: &SafetensorsStore, name: &str, len: usize) -> Result<Vec<f32>> {
    let mut w = store.f32_shaped(name, &[len])?;
    if cfg.norm_offset != 0.0 {
        w.iter_mut().for_each(|v| *v += cfg.norm_offset);
    }
    Ok(w)
}

/// The stored form of a norm multiplier (the inverse of [`load_norm`]), for writers.
pub fn stored_norm(cfg: &LlamaConfig, multiplier: &[f32]) -> Vec<f32> {
    multiplier.iter().map(|v| v - cfg.norm_offset).collect()
}

/// A positive finite scalar scale (shape `[]` or `[1]`), e.g. `self_attn.k_scale`.
fn read_scale(store: &SafetensorsStore, name: &str) -> Result<f32> {
    if !store.contains(name) {
        return Err(Error::tensor(name, "missing: config.json's kv_cache_scheme needs a scale per block"));
    }
    let (v, shape) = store.f32(name)?;
    match (v.as_slice(), shape.iter().product::<usize>()) {
        (&[s], 1) if s > 0.0 && s.is_finite() => Ok(s),
        _ => Err(Error::tensor(name, format!("must be one positive finite value, found {v:?} of shape {shape:?}"))),
    }
}

impl Block {
    pub fn load(cfg: &LlamaConfig, store: &SafetensorsStore, index: usize, make: &LinearFactory) -> Result<Self> {
        let p = format!("model.layers.{index}");
        let linears = cfg
            .linears()
            .iter()
            .map(|(short, _)| {
                let (o, i) = linear_shape(cfg, short);
                make(&format!("{p}.{short}"), o, i)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::from_parts(index, linears, BlockDense::load(cfg, store, index)?))
    }

    pub fn from_parts(index: usize, linears: Vec<Box<dyn Linear>>, d: BlockDense) -> Self {
        Self {
            index,
            input_norm: d.input_norm,
            post_norm: d.post_norm,
            sandwich_norms: d.sandwich_norms,
            linears,
            biases: d.biases,
            qk_norm: d.qk_norm,
            kv_scales: d.kv_scales,
        }
    }

    /// `x · W_kᵀ + b_k` for the linear at index `k`: `[t, out]`.
    fn project(&self, k: usize, x: &[f32], t: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; t * self.linears[k].out_features()];
        self.linears[k].forward(x, t, &mut y);
        if let Some(b) = &self.biases[k] {
            add_bias(&mut y, b);
        }
        y
    }

    /// Stage 1: normalized input read by q, k, v. `x`: `[tokens, hidden]`.
    pub fn attn_input(&self, cfg: &LlamaConfig, x: &[f32]) -> Vec<f32> {
        normed(x, &self.input_norm, cfg.rms_norm_eps)
    }

    /// q, k, v (`[t, q_dim]`, `[t, kv_dim]`, `[t, kv_dim]`) from the normalized input,
    /// biases added, split from the fused projection where there is one.
    fn qkv(&self, cfg: &LlamaConfig, h1: &[f32], t: usize) -> [Vec<f32>; 3] {
        if !cfg.fused() {
            if t == 1 {
                // Decoding: three small products in one parallel region, not three regions
                // that each end in a wait (same outputs: each is computed by its own linear).
                let (q, (k, v)) = rayon::join(
                    || self.project(0, h1, t),
                    || rayon::join(|| self.project(1, h1, t), || self.project(2, h1, t)),
                );
                return [q, k, v];
            }
            return [self.project(0, h1, t), self.project(1, h1, t), self.project(2, h1, t)];
        }
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let fused = self.project(0, h1, t);
        let mut parts = [Vec::with_capacity(t * qd), Vec::with_capacity(t * kvd), Vec::with_capacity(t * kvd)];
        for row in fused.chunks_exact(qd + 2 * kvd) {
            parts[0].extend_from_slice(&row[..qd]);
            parts[1].extend_from_slice(&row[qd..qd + kvd]);
            parts[2].extend_from_slice(&row[qd + kvd..]);
        }
        parts
    }

    /// Stage 2: attention heads (input of o) from the normalized input `h1`, over
    /// `windows` independent windows of `seq` tokens.
    pub fn attention(&self, cfg: &LlamaConfig, rope: &Rope, h1: &[f32], windows: usize, seq: usize) -> Vec<f32> {
        self.attend(cfg, h1, &mut Attend::Windows { rope, windows, seq, kv_absmax: None })
    }

    /// Stage 2 for either kind of sequence: q, k, v, the q/k norms, RoPE at the rows'
    /// positions, then causal attention within each window or over the cache (whose
    /// keys and values get the new rows first).
    fn attend(&self, cfg: &LlamaConfig, h1: &[f32], how: &mut Attend) -> Vec<f32> {
        let t = h1.len() / cfg.hidden_size;
        let [mut q, mut k, v] = self.qkv(cfg, h1, t);
        if let Some([qn, kn]) = &self.qk_norm {
            // RMSNorm over each head's head_dim (transformers Qwen3Attention).
            q = normed(&q, qn, cfg.rms_norm_eps);
            k = normed(&k, kn, cfg.rms_norm_eps);
        }
        let mut attn = vec![0.0f32; t * cfg.q_dim()];
        let (heads, kv_heads, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let p =
            AttnParams { scale: cfg.attn_scale, softcap: cfg.attn_softcap, sliding: cfg.sliding_window[self.index] };
        match how {
            Attend::Windows { rope, windows, seq, kv_absmax } => {
                let rope = rope.for_block(p.sliding.is_some());
                rope.apply(&mut q, heads);
                rope.apply(&mut k, kv_heads);
                if let Some(m) = kv_absmax {
                    let absmax = |x: &[f32]| x.iter().fold(0f32, |a, v| a.max(v.abs()));
                    m[0] = m[0].max(absmax(&k));
                    m[1] = m[1].max(absmax(&v));
                }
                let mut v = v;
                if let Some([ks, vs]) = self.kv_scales {
                    kv_cache::fake_quantize(&mut k, ks);
                    kv_cache::fake_quantize(&mut v, vs);
                }
                causal_attention(&q, &k, &v, *windows, *seq, heads, kv_heads, hd, p, &mut attn);
            }
            Attend::Cached { rope, kv, scratch } => {
                let pos0 = kv.len();
                let rope = rope.for_block(p.sliding.is_some());
                rope.apply_from(&mut q, heads, pos0);
                rope.apply_from(&mut k, kv_heads, pos0);
                kv.append(&k, &v);
                let (keys, values) = kv.keys_values(scratch);
                cached_attention(&q, keys, values, pos0, t, heads, kv_heads, hd, p, &mut attn);
            }
        }
        attn
    }

    /// Stage 3: `x += o(attn)` in place (gemma2: `x += norm(o(attn))`); returns the
    /// normalized residual read by gate, up.
    pub fn mlp_input(&self, cfg: &LlamaConfig, x: &mut [f32], attn: &[f32]) -> Vec<f32> {
        let t = x.len() / cfg.hidden_size;
        let mut o = self.project(linear_index(cfg, "self_attn.o_proj"), attn, t);
        if let Some([attn_out_norm, _]) = &self.sandwich_norms {
            o = normed(&o, attn_out_norm, cfg.rms_norm_eps);
        }
        add_assign(x, &o);
        rms_norm(x, &self.post_norm, cfg.rms_norm_eps, &mut o);
        o
    }

    /// Stage 4: the gated activation read by down (SwiGLU, or gemma2's GeGLU), from the
    /// normalized residual `h2`.
    pub fn mlp_act(&self, cfg: &LlamaConfig, h2: &[f32]) -> Vec<f32> {
        let t = h2.len() / cfg.hidden_size;
        let id = cfg.intermediate_size;
        if cfg.fused() {
            // Rows of gate_up_proj are [gate | up] (transformers Phi3MLP: `chunk(2, dim=-1)`).
            let fused = self.project(2, h2, t);
            let (mut gate, mut up) = (Vec::with_capacity(t * id), Vec::with_capacity(t * id));
            for row in fused.chunks_exact(2 * id) {
                gate.extend_from_slice(&row[..id]);
                up.extend_from_slice(&row[id..]);
            }
            gated(cfg.activation, &mut gate, &up);
            return gate;
        }
        let (mut gate, up) = if t == 1 {
            rayon::join(|| self.project(4, h2, t), || self.project(5, h2, t)) // decoding: one region
        } else {
            (self.project(4, h2, t), self.project(5, h2, t))
        };
        gated(cfg.activation, &mut gate, &up);
        gate
    }

    /// Stage 5: `x += down(act)` in place (gemma2: `x += norm(down(act))`).
    pub fn mlp_output(&self, cfg: &LlamaConfig, x: &mut [f32], act: &[f32]) {
        let t = x.len() / cfg.hidden_size;
        let mut d = self.project(linear_index(cfg, "mlp.down_proj"), act, t);
        if let Some([_, mlp_out_norm]) = &self.sandwich_norms {
            d = normed(&d, mlp_out_norm, cfg.rms_norm_eps);
        }
        add_assign(x, &d);
    }

    /// Run one stage on `windows` windows of `seq` tokens: `x` is the residual stream
    /// `[windows·seq, hidden]` (the residual stages add to it in place), `prev` the previous
    /// stage's output. Returns the stage's output (the input of [`Stage::site`]'s linears;
    /// empty for the last stage).
    pub fn run_stage(
        &self,
        cfg: &LlamaConfig,
        rope: &Rope,
        stage: Stage,
        x: &mut [f32],
        prev: &[f32],
        windows: usize,
        seq: usize,
    ) -> Vec<f32> {
        self.run_stage_with(cfg, stage, x, prev, &mut Attend::Windows { rope, windows, seq, kv_absmax: None })
    }

    /// [`Block::run_stage`] for either kind of sequence ([`Attend`]).
    pub fn run_stage_with(
        &self,
        cfg: &LlamaConfig,
        stage: Stage,
        x: &mut [f32],
        prev: &[f32],
        how: &mut Attend,
    ) -> Vec<f32> {
        match stage {
            Stage::AttnNorm => self.attn_input(cfg, x),
            Stage::Attention => self.attend(cfg, prev, how),
            Stage::AttnResidual => self.mlp_input(cfg, x, prev),
            Stage::MlpAct => self.mlp_act(cfg, prev),
            Stage::MlpResidual => {
                self.mlp_output(cfg, x, prev);
                Vec::new()
            }
        }
    }

    /// Run the block in place on `x` (`[windows·seq, hidden]`), showing each linear
    /// site's input to `hook`.
    pub fn forward(
        &self,
        cfg: &LlamaConfig,
        rope: &Rope,
        x: &mut [f32],
        windows: usize,
        seq: usize,
        hook: Option<&mut dyn BlockHook>,
    ) -> Result<()> {
        debug_assert_eq!(x.len(), windows * seq * cfg.hidden_size);
        self.forward_with(cfg, x, &mut Attend::Windows { rope, windows, seq, kv_absmax: None }, hook)
    }

    /// Run the block in place on `x` (`[tokens, hidden]`), stage by stage ([`BLOCK_STAGES`]).
    pub fn forward_with(
        &self,
        cfg: &LlamaConfig,
        x: &mut [f32],
        how: &mut Attend,
        mut hook: Option<&mut dyn BlockHook>,
    ) -> Result<()> {
        let t = x.len() / cfg.hidden_size;
        let mut cur = Vec::new();
        for stage in BLOCK_STAGES {
            cur = self.run_stage_with(cfg, stage, x, &cur, how);
            if let (Some(site), Some(hk)) = (stage.site(), hook.as_deref_mut()) {
                hk.on_input(site, &cur, t)?;
            }
        }
        Ok(())
    }

    pub fn weight_bytes(&self) -> usize {
        let dense = self.input_norm.len()
            + self.post_norm.len()
            + self.sandwich_norms.as_ref().map_or(0, |[a, m]| a.len() + m.len())
            + self.biases.iter().flatten().map(Vec::len).sum::<usize>()
            + self.qk_norm.as_ref().map_or(0, |[q, k]| q.len() + k.len());
        self.linears.iter().map(|l| l.weight_bytes()).sum::<usize>() + dense * 4
    }
}

/// Token embedding plus the LM head (tied to the embedding, or its own linear).
pub struct LlamaModel {
    pub config: LlamaConfig,
    /// `[vocab, hidden]`
    /// Left in the memory-mapped file (the tied head reads it too).
    pub embed: MappedLinear,
    pub blocks: Vec<Block>,
    pub norm: Vec<f32>,
    /// `None` when the head is tied to `embed`.
    pub lm_head: Option<Box<dyn Linear>>,
}

impl LlamaModel {
    /// Load a Hugging Face directory with dense weights (f32/f16/bf16 safetensors).
    pub fn load(dir: &Path) -> Result<Self> {
        let cfg = LlamaConfig::from_file(&dir.join("config.json"))?;
        let store = SafetensorsStore::open(dir)?;
        Self::load_with(cfg, &store, &|name, o, i| dense_from_store(&store, name, o, i))
    }

    /// Load with a custom linear factory (quantized, GPU...).
    pub fn load_with(cfg: LlamaConfig, store: &SafetensorsStore, make: &LinearFactory) -> Result<Self> {
        check_store(&cfg, store)?;
        let (h, vocab) = (cfg.hidden_size, cfg.vocab_size);
        let embed = MappedLinear::new(store.mapped("model.embed_tokens.weight", [vocab, h])?);
        let blocks = (0..cfg.num_layers).map(|i| Block::load(&cfg, store, i, make)).collect::<Result<Vec<_>>>()?;
        let norm = load_norm(&cfg, store, "model.norm.weight", h)?;
        let lm_head = if store.contains("lm_head.weight")
            || store.contains("lm_head.qweight")
            || store.contains("lm_head.weight_packed")
        {
            Some(make("lm_head", vocab, h)?)
        } else if cfg.tie_word_embeddings {
            None
        } else {
            return Err(Error::tensor("lm_head.weight", "missing, and config.json does not set tie_word_embeddings"));
        };
        Ok(Self { config: cfg, embed, blocks, norm, lm_head })
    }

    /// Embedding rows of `tokens` -> `[tokens.len(), hidden]`. Refuses ids outside the vocabulary.
    pub fn embed_tokens(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        embed_tokens(&self.config, &self.embed, tokens)
    }

    /// Final norm and LM head: `[tokens, hidden]` -> logits `[tokens, vocab]`.
    pub fn head(&self, x: &[f32], tokens: usize) -> Vec<f32> {
        let cfg = &self.config;
        let normed = normed(x, &self.norm, cfg.rms_norm_eps);
        let mut logits = vec![0.0f32; tokens * cfg.vocab_size];
        match &self.lm_head {
            Some(l) => l.forward(&normed, tokens, &mut logits),
            None => self.embed.forward(&normed, tokens, &mut logits),
        }
        if let Some(c) = cfg.final_softcap {
            // transformers: `logits / c`, `tanh`, `* c` (gemma2 `final_logit_softcapping`).
            logits.iter_mut().for_each(|l| *l = (*l / c).tanh() * c);
        }
        logits
    }

    /// Logits for `windows` independent windows of `seq` tokens each
    /// (`tokens.len() == windows·seq`): `[windows·seq, vocab]`.
    pub fn forward(&self, tokens: &[u32], windows: usize, seq: usize) -> Result<Vec<f32>> {
        assert_eq!(tokens.len(), windows * seq, "forward: tokens must be windows × seq");
        let rope = self.config.rope_tables(seq);
        let mut x = self.embed_tokens(tokens)?;
        for b in &self.blocks {
            b.forward(&self.config, &rope, &mut x, windows, seq, None)?;
        }
        Ok(self.head(&x, tokens.len()))
    }

    /// Logits only where they are scored: rows `first .. seq-1` of every window
    /// (the last position predicts nothing inside the window). Returns
    /// `[windows·(seq-1-first), vocab]`; the head runs on those rows alone.
    pub fn forward_scored(&self, tokens: &[u32], windows: usize, seq: usize, first: usize) -> Result<Vec<f32>> {
        assert_eq!(tokens.len(), windows * seq, "forward_scored: tokens must be windows × seq");
        assert!(first < seq, "forward_scored: first scored row {first} outside a window of {seq}");
        let h = self.config.hidden_size;
        let rope = self.config.rope_tables(seq);
        let mut x = self.embed_tokens(tokens)?;
        for b in &self.blocks {
            b.forward(&self.config, &rope, &mut x, windows, seq, None)?;
        }
        let per = seq - 1 - first;
        let mut rows = Vec::with_capacity(windows * per * h);
        for w in 0..windows {
            rows.extend_from_slice(&x[(w * seq + first) * h..(w * seq + seq - 1) * h]);
        }
        Ok(self.head(&rows, windows * per))
    }

    /// Run `tokens` after the ones `cache` holds (a prompt, or one token while decoding),
    /// appending their keys and values; returns the logits of the last one, `[vocab]`.
    pub fn forward_cached(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        // On a pool thread: a decoding step runs ~15 small parallel operations per block,
        // and each one started from outside the pool would put this thread to sleep on a
        // latch and wake it again (measured: 20% of a token's time in futex calls).
        rayon::scope(|_| self.forward_cached_on_pool(tokens, cache))
    }

    fn forward_cached_on_pool(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let h = self.config.hidden_size;
        if tokens.is_empty() {
            return Err(Error::other_msg("nothing to run: no tokens were given"));
        }
        cache.check_room(tokens.len())?;
        let mut x = self.embed_tokens(tokens)?;
        let (rope, layers, scratch) = cache.parts();
        for (b, kv) in self.blocks.iter().zip(layers) {
            b.forward_with(&self.config, &mut x, &mut Attend::Cached { rope, kv, scratch: &mut *scratch }, None)?;
        }
        Ok(self.head(&x[(tokens.len() - 1) * h..], 1))
    }

    /// An empty KV cache for up to `capacity` positions of this model.
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        let scales: Vec<Option<[f32; 2]>> = self.blocks.iter().map(|b| b.kv_scales).collect();
        KvCache::new(&self.config, capacity, &scales)
    }

    /// Resident bytes of all weights (embedding, blocks, norm, head).
    pub fn weight_bytes(&self) -> usize {
        self.embed.weight_bytes()
            + self.blocks.iter().map(Block::weight_bytes).sum::<usize>()
            + self.norm.len() * 4
            + self.lm_head.as_ref().map_or(0, |l| l.weight_bytes())
    }
}

/// The model's input rows for `tokens`: embedding rows (`embed`: `[vocab, hidden]`), times
/// the config's embedding scale (gemma's `√hidden`) where it has one: `[tokens, hidden]`.
pub fn embed_tokens(cfg: &LlamaConfig, embed: &MappedLinear, tokens: &[u32]) -> Result<Vec<f32>> {
    let mut x = embed.rows(tokens)?;
    if let Some(s) = cfg.embed_scale {
        x.iter_mut().for_each(|v| *v *= s);
    }
    Ok(x)
}

/// `rms_norm(x)` with multiplier `weight`, as a new vector.
fn normed(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    rms_norm(x, weight, eps, &mut out);
    out
}

/// `gate = act(gate) * up`, in place, for the config's activation.
fn gated(act: Activation, gate: &mut [f32], up: &[f32]) {
    match act {
        Activation::Silu => swiglu(gate, up),
        Activation::GeluTanh => geglu_tanh(gate, up),
    }
}
