//! Quantized checkpoints on disk: write a Hugging Face model directory whose quantized
//! linears are stored as gptq, compressed-tensors or awq (docs/FORMATS.md), and read one back,
//! ours or another tool's.
//!
//! Writing: every source tensor is copied through (same dtype, same bytes) except
//! `<module>.weight` of each quantized module, replaced by the format's tensors. Tensors are
//! ordered as the safetensors crate orders them (dtype alignment descending, then name, so
//! every tensor starts aligned) and split into shards of at most [`MAX_SHARD_BYTES`]
//! (`model.safetensors`, or `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`).
//! The header has every key sorted ([`HeaderLayout::Sorted`] of
//! [`super::safetensors::write_file`]) so the bytes are deterministic. Everything goes
//! through [`AtomicDir`]: on any error nothing is left behind.

use super::atomic::AtomicDir;
use super::safetensors::{self as st, sort_crate_order, write_file, HeaderLayout, SafetensorsStore};
use crate::error::{Error, Result};
use crate::format::activation::{ActParams, ActScheme, CtInputSchemes};
use crate::format::awq::{self, AwqConfig};
use crate::format::compressed_tensors::{self as ct, CtConfig, CtFormat, PyMatch};
use crate::format::gptq::{self, GptqConfig, GptqLayout};
use crate::format::kv_cache;
use crate::format::pack::RawTensor;
use crate::format::QuantizedTensor;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Shard size limit: Hugging Face's default `max_shard_size` ("5GB").
pub const MAX_SHARD_BYTES: usize = 5_000_000_000;

/// Files copied unchanged from the source directory when present.
pub const COPIED_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
];

/// Reserved `__metadata__` keys (the `meta` argument may not override them).
const RESERVED_META: &[&str] = &["format", "quantize_tool", "quantize_version", "quantize_checkpoint_format"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CheckpointFormat {
    /// AutoGPTQ/GPTQModel `checkpoint_format: "gptq"` (v1).
    Gptq,
    /// compressed-tensors `pack-quantized` (int) or `float-quantized` (FP8 E4M3).
    CompressedTensors,
    /// AutoAWQ GEMM (`quant_method: "awq"`, `version: "gemm"`), 4-bit groups only.
    Awq,
    /// One llama.cpp GGUF file (`pipeline::gguf_export`), not a safetensors directory.
    Gguf,
}

impl CheckpointFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointFormat::Gptq => "gptq",
            CheckpointFormat::CompressedTensors => "compressed-tensors",
            CheckpointFormat::Awq => "awq",
            CheckpointFormat::Gguf => "gguf",
        }
    }
}

impl std::str::FromStr for CheckpointFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gptq" => Ok(Self::Gptq),
            "compressed-tensors" | "ct" => Ok(Self::CompressedTensors),
            "awq" => Ok(Self::Awq),
            "gguf" => Ok(Self::Gguf),
            other => Err(Error::option(
                "--format",
                format!("{other:?} is not a checkpoint format (gptq, compressed-tensors, awq, gguf)"),
            )),
        }
    }
}

impl std::fmt::Display for CheckpointFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not valid JSON: {e}")))
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(v).expect("a JSON value serializes");
    s.push(b'\n');
    s
}

/// Module names of 2-D `<m>.weight` source tensors that look like linears (not
/// embeddings) and are not quantized: the formats must be told to leave them alone.
fn unquantized_linears(store: &SafetensorsStore, quantized: &BTreeMap<String, QuantizedTensor>) -> Result<Vec<String>> {
    let mut out = vec![];
    for name in store.names() {
        if let Some(m) = name.strip_suffix(".weight") {
            if !quantized.contains_key(m) && !m.contains("embed") && store.raw(name)?.shape.len() == 2 {
                out.push(m.to_string());
            }
        }
    }
    Ok(out)
}

/// Escape a module name for a Python regex (`re.match`), anchored at both ends.
fn exact_regex(name: &str) -> String {
    format!("^{}$", crate::format::gptq::py_escape(name))
}

/// Write `quantized` (module name -> tensor, e.g. `model.layers.0.self_attn.q_proj`) over
/// the model in `src_dir` to a new directory `out` in `format`. `meta` goes into every
/// shard's `__metadata__` next to the tool name and version.
pub fn write_quantized_checkpoint(
    src_dir: &Path,
    out: &Path,
    quantized: &BTreeMap<String, QuantizedTensor>,
    format: CheckpointFormat,
    meta: &BTreeMap<String, String>,
) -> Result<()> {
    write_quantized_checkpoint_with(src_dir, out, quantized, &BTreeMap::new(), format, meta)
}

/// [`write_quantized_checkpoint`], with the values of some dense source tensors replaced
/// (`dense`: tensor name -> f32 values, written in the source tensor's dtype and shape),
/// e.g. the norm weights AWQ divided by its scales.
pub fn write_quantized_checkpoint_with(
    src_dir: &Path,
    out: &Path,
    quantized: &BTreeMap<String, QuantizedTensor>,
    dense: &BTreeMap<String, Vec<f32>>,
    format: CheckpointFormat,
    meta: &BTreeMap<String, String>,
) -> Result<()> {
    write_checkpoint_files(src_dir, out, quantized, dense, None, format, meta, &[])
}

/// Activation quantization of every quantized linear, written with the weights.
pub struct ActivationWrite<'a> {
    pub scheme: ActScheme,
    /// The calibration, written as the compressed-tensors `observer` of a static scheme.
    pub observer: &'a str,
    /// Static input parameters by module name (empty when dynamic).
    pub params: &'a BTreeMap<String, ActParams>,
}

/// [`write_quantized_checkpoint_with`] for W8A8: compressed-tensors `int-quantized` (INT8
/// weights) or `float-quantized` (FP8 E4M3 weights) with `input_activations` in every config
/// group and, when static, `<m>.input_scale` (and `<m>.input_zero_point`) per linear, the
/// layout vLLM's `CompressedTensorsW8A8Int8` / `CompressedTensorsW8A8Fp8` load.
pub fn write_activation_checkpoint(
    src_dir: &Path,
    out: &Path,
    quantized: &BTreeMap<String, QuantizedTensor>,
    dense: &BTreeMap<String, Vec<f32>>,
    act: &ActivationWrite<'_>,
    meta: &BTreeMap<String, String>,
) -> Result<()> {
    write_checkpoint_files(src_dir, out, quantized, dense, Some(act), CheckpointFormat::CompressedTensors, meta, &[])
}

/// The tensors of one W8A8 linear (weights and, when static, its input parameters).
fn activation_tensors(
    m: &str,
    q: &QuantizedTensor,
    act: &ActivationSpec,
    params: Option<ActParams>,
) -> Result<Vec<RawTensor>> {
    let s = q.scheme;
    act.scheme.check_weights(s).map_err(|e| Error::tensor(m, e.to_string()))?;
    if q.g_idx.is_some() {
        return Err(Error::tensor(m, format!("{s} with act-order: activation checkpoints hold no g_idx")));
    }
    let mut raws = if s.is_fp8() { ct::to_tensors(q, m)? } else { ct::to_int_quantized_tensors(q, m)? };
    match (act.scheme.dynamic, params) {
        (true, None) => {}
        (false, Some(p)) => raws.extend(act.scheme.ct_tensors(m, p)),
        (true, Some(_)) => {
            return Err(Error::tensor(m, format!("{} is dynamic but a static input scale was given", act.scheme)))
        }
        (false, None) => {
            return Err(Error::tensor(
                m,
                format!("{} is static but this linear has no calibrated input scale", act.scheme),
            ))
        }
    }
    Ok(raws)
}

/// The activation quantization a [`CheckpointWriter`] writes (owned form of [`ActivationWrite`]).
#[derive(Clone, Debug)]
pub struct ActivationSpec {
    pub scheme: ActScheme,
    pub observer: String,
}

/// The general writer: [`write_quantized_checkpoint_with`], with activation quantization
/// when `act` is given, and `extra` files (name, bytes) written beside the tensors
/// (e.g. the run's `recipe.toml`).
#[allow(clippy::too_many_arguments)]
pub fn write_checkpoint_files(
    src_dir: &Path,
    out: &Path,
    quantized: &BTreeMap<String, QuantizedTensor>,
    dense: &BTreeMap<String, Vec<f32>>,
    act: Option<&ActivationWrite<'_>>,
    format: CheckpointFormat,
    meta: &BTreeMap<String, String>,
    extra: &[(&str, &[u8])],
) -> Result<()> {
    let spec = act.map(|a| ActivationSpec { scheme: a.scheme, observer: a.observer.to_string() });
    let mut w = CheckpointWriter::create(src_dir, out, format, spec, meta)?;
    for (m, q) in quantized {
        w.check_quantized(m, q)?;
    }
    for (m, q) in quantized {
        w.add_quantized(m, q, act.and_then(|a| a.params.get(m).copied()))?;
    }
    for (name, values) in dense {
        w.replace_dense(name, values)?;
    }
    w.finish(extra)
}

/// One tensor waiting for its shard: its own bytes, kept at `offset` in the shard's
/// [`Spill`] file, or a source tensor read from the memory-mapped store when the shard is
/// written.
enum Pending {
    Spilled { name: String, dtype: Dtype, shape: Vec<usize>, offset: usize, len: usize },
    Source(String),
}

/// The bytes of the pending shard's new tensors, appended to a file in the output's
/// temporary directory as they come, so that a waiting shard (up to 5 GB by default) holds
/// no memory of the process: it is read back through a memory map (page cache, which the
/// kernel may drop) when the shard is written in the safetensors order, then deleted.
struct Spill {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    len: usize,
}

impl Spill {
    fn create(path: PathBuf) -> Result<Self> {
        // Read too: the file is mapped back when the shard is written.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Self { path, file: std::io::BufWriter::with_capacity(1 << 20, file), len: 0 })
    }

    /// Append `bytes`; their offset in the file.
    fn append(&mut self, bytes: &[u8]) -> Result<usize> {
        use std::io::Write;
        self.file.write_all(bytes).map_err(|e| Error::io(&self.path, e))?;
        self.len += bytes.len();
        Ok(self.len - bytes.len())
    }

    /// Everything appended, mapped read-only (None when nothing was).
    fn map(self) -> Result<(PathBuf, Option<memmap2::Mmap>)> {
        let io = |e| Error::io(&self.path, e);
        let file = self.file.into_inner().map_err(|e| io(e.into_error()))?;
        // SAFETY: the file is private to this writer's temporary directory and no longer
        // written; the map is dropped before the file is deleted.
        let map = if self.len == 0 { None } else { Some(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?) };
        Ok((self.path, map))
    }
}

/// Writes a quantized checkpoint as the quantization proceeds, so memory holds at most one
/// shard's worth of output: the quantized tensors of each block are encoded in the
/// checkpoint's layout as they come ([`CheckpointWriter::add_quantized`]), the block's
/// dense tensors follow when the block is done ([`CheckpointWriter::block_done`]), and a
/// shard file is written whenever the next tensor would take the waiting ones past
/// [`MAX_SHARD_BYTES`] (or [`CheckpointWriter::set_max_shard_bytes`]). [`CheckpointWriter::finish`]
/// adds the remaining source tensors (embeddings, final norm, head), names the shards
/// (`model.safetensors` when there is one, else `model-0000i-of-0000n.safetensors` and
/// the index), writes config.json with the `quantization_config` of every tensor written,
/// and renames the directory into place. A model whose output fits one shard gets the
/// same single file, byte for byte, as writing everything at once. On any error (or drop)
/// nothing is left behind.
pub struct CheckpointWriter {
    src_dir: PathBuf,
    dir: AtomicDir,
    store: SafetensorsStore,
    config: Value,
    format: CheckpointFormat,
    act: Option<ActivationSpec>,
    meta: BTreeMap<String, String>,
    /// Every quantized module with its codes dropped (the config needs schemes and shapes).
    schemes: BTreeMap<String, QuantizedTensor>,
    /// Names of every output tensor so far (written or pending).
    names: BTreeSet<String>,
    /// Source tensors replaced by quantized storage or by new dense values.
    replaced: BTreeSet<String>,
    pending: Vec<Pending>,
    pending_bytes: usize,
    /// Where the pending tensors' own bytes wait (created with the shard's first one).
    spill: Option<Spill>,
    /// Shards written so far: temporary file name and the tensor names it holds.
    shards: Vec<(String, Vec<String>)>,
    total_bytes: usize,
    max_shard_bytes: usize,
    /// An FP8 KV cache is declared (`kv_cache_scheme`) and its scales written.
    kv_cache: bool,
    /// The quantized `lm_head` comes from the tied embedding ([`CheckpointWriter::untie_head`]).
    head_untied: bool,
}

impl CheckpointWriter {
    /// Start writing the checkpoint of the model in `src_dir` to the new directory `out`.
    pub fn create(
        src_dir: &Path,
        out: &Path,
        format: CheckpointFormat,
        act: Option<ActivationSpec>,
        meta: &BTreeMap<String, String>,
    ) -> Result<Self> {
        if format == CheckpointFormat::Gguf {
            return Err(Error::option(
                "--format",
                "gguf is one file written by pipeline::gguf_export, not a directory",
            ));
        }
        if act.is_some() && format != CheckpointFormat::CompressedTensors {
            return Err(Error::option(
                "--format",
                format!("{format} cannot store activation quantization; use compressed-tensors"),
            ));
        }
        if let Some(a) = &act {
            a.scheme.check()?;
        }
        let mut metadata: BTreeMap<String, String> = BTreeMap::new();
        metadata.insert("format".into(), "pt".into());
        metadata.insert("quantize_tool".into(), env!("CARGO_PKG_NAME").into());
        metadata.insert("quantize_version".into(), env!("CARGO_PKG_VERSION").into());
        metadata.insert("quantize_checkpoint_format".into(), format.as_str().into());
        for (k, v) in meta {
            if RESERVED_META.contains(&k.as_str()) {
                return Err(Error::option("metadata", format!("key {k:?} is reserved")));
            }
            metadata.insert(k.clone(), v.clone());
        }
        let store = SafetensorsStore::open(src_dir)?;
        let cfg_path = src_dir.join("config.json");
        let config = read_json(&cfg_path)?;
        if !config.is_object() {
            return Err(Error::config(&cfg_path, "config.json is not a JSON object"));
        }
        let dir = AtomicDir::create(out)?;
        Ok(Self {
            src_dir: src_dir.to_path_buf(),
            dir,
            store,
            config,
            format,
            act,
            meta: metadata,
            schemes: BTreeMap::new(),
            names: BTreeSet::new(),
            replaced: BTreeSet::new(),
            pending: vec![],
            pending_bytes: 0,
            spill: None,
            shards: vec![],
            total_bytes: 0,
            max_shard_bytes: MAX_SHARD_BYTES,
            kv_cache: false,
            head_untied: false,
        })
    }

    /// Largest shard in bytes (default [`MAX_SHARD_BYTES`]; one tensor larger than it gets
    /// a shard of its own).
    pub fn set_max_shard_bytes(&mut self, n: usize) {
        self.max_shard_bytes = n.max(1);
    }

    /// Refuse a quantized module the source model cannot hold (no weight, another shape).
    pub fn check_quantized(&self, m: &str, q: &QuantizedTensor) -> Result<()> {
        let wname = match m {
            "lm_head" if self.head_untied => "model.embed_tokens.weight".to_string(),
            _ => format!("{m}.weight"),
        };
        let src = self
            .store
            .raw(&wname)
            .map_err(|_| Error::tensor(&wname, "quantized module has no weight in the source model"))?;
        if src.shape != [q.rows, q.cols] {
            return Err(Error::tensor(
                &wname,
                format!("source shape {:?} but the quantized tensor is [{}, {}]", src.shape, q.rows, q.cols),
            ));
        }
        Ok(())
    }

    /// Encode the quantized module `m` (e.g. `model.layers.0.self_attn.q_proj`) in the
    /// checkpoint's layout, with its static input parameters when activations are quantized.
    pub fn add_quantized(&mut self, m: &str, q: &QuantizedTensor, input: Option<ActParams>) -> Result<()> {
        self.check_quantized(m, q)?;
        let raws = match (self.format, &self.act) {
            (CheckpointFormat::Gptq, _) => gptq::to_tensors(q, m)?,
            (CheckpointFormat::Awq, _) => awq::to_tensors(q, m)?,
            (CheckpointFormat::CompressedTensors, None) => ct::to_tensors(q, m)?,
            (CheckpointFormat::CompressedTensors, Some(a)) => activation_tensors(m, q, a, input)?,
            (CheckpointFormat::Gguf, _) => unreachable!("CheckpointWriter::create refuses gguf"),
        };
        let skeleton = QuantizedTensor {
            scheme: q.scheme,
            rows: q.rows,
            cols: q.cols,
            codes: vec![],
            scales: vec![],
            zeros: q.zeros.as_ref().map(|_| vec![]),
            g_idx: q.g_idx.as_ref().map(|_| vec![]),
            ggml: None,
        };
        self.schemes.insert(m.to_string(), skeleton);
        self.replaced.insert(format!("{m}.weight"));
        for r in raws {
            if self.store.contains(&r.name) && !self.replaced.contains(&r.name) {
                return Err(Error::tensor(&r.name, "already exists in the source model (is it already quantized?)"));
            }
            self.push_owned(r)?;
        }
        Ok(())
    }

    /// Replace the values of the dense source tensor `name` (written in its dtype and
    /// shape), e.g. a norm weight AWQ divided by its scales.
    pub fn replace_dense(&mut self, name: &str, values: &[f32]) -> Result<()> {
        if name.strip_suffix(".weight").is_some_and(|m| self.schemes.contains_key(m)) {
            return Err(Error::tensor(name, "is quantized; it cannot also be replaced by dense values"));
        }
        if !self.store.contains(name) {
            return Err(Error::tensor(name, "replacement for a tensor the source model does not have"));
        }
        let raw = self.dense_like(name, name, values)?;
        if !self.replaced.insert(name.to_string()) {
            return Err(Error::tensor(name, "replaced twice"));
        }
        self.push_owned(raw)
    }

    /// Add the dense tensor `name`, which the source model lacks, in the dtype and shape
    /// of its tensor `like` (a rotated tied head: `lm_head.weight` like the embedding).
    pub fn add_dense(&mut self, name: &str, like: &str, values: &[f32]) -> Result<()> {
        if self.store.contains(name) {
            return Err(Error::tensor(name, "is in the source model already; it can only be replaced"));
        }
        let raw = self.dense_like(like, name, values)?;
        self.push_owned(raw)
    }

    /// `values` as the tensor `name`, in the dtype and shape of the source tensor `like`.
    fn dense_like(&self, like: &str, name: &str, values: &[f32]) -> Result<RawTensor> {
        let src = self.store.raw(like)?;
        let shape = src.shape.to_vec();
        if shape.iter().product::<usize>() != values.len() {
            return Err(Error::tensor(name, format!("{} values for shape {shape:?}", values.len())));
        }
        Ok(match src.dtype {
            Dtype::F32 => RawTensor::from_f32(name.to_string(), &shape, values),
            Dtype::F16 => RawTensor::from_f16(name.to_string(), &shape, values),
            Dtype::BF16 => {
                let bytes = values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect();
                RawTensor { name: name.to_string(), dtype: Dtype::BF16, shape, data: bytes }
            }
            other => {
                return Err(Error::tensor(like, format!("dtype {other:?}: only F32/F16/BF16 tensors can be replaced")))
            }
        })
    }

    /// Block `b` is done: its remaining source tensors (norms, biases, unquantized
    /// linears) join the pending shard, which is written if it is full.
    pub fn block_done(&mut self, b: usize) -> Result<()> {
        let prefix = format!("model.layers.{b}.");
        let names: Vec<String> = self.store.names().filter(|n| n.starts_with(&prefix)).map(str::to_string).collect();
        for n in names {
            self.push_source(n)?;
        }
        Ok(())
    }

    fn push_source(&mut self, name: String) -> Result<()> {
        if self.replaced.contains(&name) || self.names.contains(&name) {
            return Ok(());
        }
        let bytes = self.store.raw(&name)?.bytes.len();
        self.reserve(&name, bytes)?;
        self.pending.push(Pending::Source(name));
        Ok(())
    }

    /// Queue a new tensor: its bytes go to the shard's spill file, not to memory.
    fn push_owned(&mut self, r: RawTensor) -> Result<()> {
        self.reserve(&r.name, r.data.len())?;
        let spill = match &mut self.spill {
            Some(s) => s,
            None => {
                self.spill.insert(Spill::create(self.dir.path(&format!("shard-{:05}.spill", self.shards.len() + 1)))?)
            }
        };
        let offset = spill.append(&r.data)?;
        self.pending.push(Pending::Spilled { name: r.name, dtype: r.dtype, shape: r.shape, offset, len: r.data.len() });
        Ok(())
    }

    /// Count `bytes` of tensor `name` into the pending shard, writing the shard first if
    /// they would take it past `max_shard_bytes` (one tensor alone may be larger).
    fn reserve(&mut self, name: &str, bytes: usize) -> Result<()> {
        if !self.names.insert(name.to_string()) {
            return Err(Error::tensor(name, "written twice"));
        }
        if self.pending_bytes > 0 && self.pending_bytes + bytes > self.max_shard_bytes {
            self.flush()?;
        }
        self.pending_bytes += bytes;
        Ok(())
    }

    /// Write the pending tensors as the next shard (a temporary name until `finish`).
    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        // (the spill file, its bytes mapped): the pending shard's own tensors.
        let spill = self.spill.take().map(Spill::map).transpose()?;
        let spilled = spill.as_ref().and_then(|(_, map)| map.as_ref());
        let mut all: Vec<st::RawTensor<'_>> = Vec::with_capacity(pending.len());
        for p in &pending {
            all.push(match p {
                Pending::Spilled { name, dtype, shape, offset, len } => {
                    let bytes = spilled.map_or(&[][..], |m| &m[*offset..*offset + *len]);
                    st::RawTensor { name, dtype: *dtype, shape, bytes }
                }
                Pending::Source(n) => self.store.raw(n)?,
            });
        }
        sort_crate_order(&mut all);
        let file = format!("shard-{:05}.safetensors.part", self.shards.len() + 1);
        write_file(&self.dir.path(&file), &all, &self.meta, HeaderLayout::Sorted)?;
        self.total_bytes += self.pending_bytes;
        self.shards.push((file, all.iter().map(|t| t.name.to_string()).collect()));
        self.pending_bytes = 0;
        drop(all);
        if let Some((path, map)) = spill {
            drop(map); // unmapped before the file goes
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    /// Write the rest (the source tensors not written yet, the config, `extra` files
    /// beside the tensors) and move the checkpoint into place.
    pub fn finish(mut self, extra: &[(&str, &[u8])]) -> Result<()> {
        let rest: Vec<String> = self.store.names().map(str::to_string).collect();
        for n in rest {
            self.push_source(n)?;
        }
        // Nothing quantized (a rotated model with every linear ignored): a dense model.
        let dense_only = self.schemes.is_empty() && !self.kv_cache;
        let qconfig = if dense_only { Value::Null } else { self.quantization_config()? };
        self.flush()?;
        let count = self.shards.len().max(1);
        if self.shards.is_empty() {
            write_file(&self.dir.path("model.safetensors"), &[], &self.meta, HeaderLayout::Sorted)?;
        } else if count == 1 {
            self.rename(&self.shards[0].0, "model.safetensors")?;
        } else {
            let mut weight_map = serde_json::Map::new();
            for (i, (tmp, names)) in self.shards.iter().enumerate() {
                let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
                self.rename(tmp, &file)?;
                for n in names {
                    weight_map.insert(n.clone(), json!(file));
                }
            }
            let index = json!({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map});
            self.dir.write("model.safetensors.index.json", &pretty(&index))?;
        }
        let mut config = std::mem::take(&mut self.config);
        if !dense_only {
            config["quantization_config"] = qconfig;
        }
        self.dir.write("config.json", &pretty(&config))?;
        if self.format == CheckpointFormat::Gptq && !dense_only {
            let layout = GptqLayout::for_tensors(self.schemes.iter().map(|(k, v)| (k.as_str(), v)))?;
            let mut qcfg = layout.base.quantize_config();
            qcfg["lm_head"] = config["quantization_config"]["lm_head"].clone();
            if let Some(d) = config["quantization_config"].get("dynamic") {
                qcfg["dynamic"] = d.clone();
            }
            self.dir.write("quantize_config.json", &pretty(&qcfg))?;
        }
        for f in COPIED_FILES {
            let p = self.src_dir.join(f);
            if p.exists() {
                std::fs::copy(&p, self.dir.path(f)).map_err(|e| Error::io(&p, e))?;
            }
        }
        for (file, bytes) in extra {
            self.dir.write(file, bytes)?;
        }
        self.dir.commit()?;
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (a, b) = (self.dir.path(from), self.dir.path(to));
        std::fs::rename(&a, &b).map_err(|e| Error::io(&b, e))
    }

    /// The LM head is written as its own (quantized) `lm_head` although the source ties it
    /// to the embedding: config.json gets `tie_word_embeddings: false`.
    pub fn untie_head(&mut self) {
        self.config["tie_word_embeddings"] = json!(false);
        self.head_untied = true;
    }

    /// Declare an FP8 KV cache (compressed-tensors `kv_cache_scheme`); every block then
    /// needs its scales ([`CheckpointWriter::add_kv_scales`]).
    pub fn declare_kv_cache(&mut self) -> Result<()> {
        if self.format != CheckpointFormat::CompressedTensors {
            return Err(Error::option(
                "--kv-cache",
                format!("the {} format cannot declare a KV cache scheme; use --format compressed-tensors", self.format),
            ));
        }
        self.kv_cache = true;
        Ok(())
    }

    /// Block `layer`'s `[k_scale, v_scale]` of the declared FP8 KV cache (f32, shape `[1]`).
    pub fn add_kv_scales(&mut self, layer: usize, scales: [f32; 2]) -> Result<()> {
        assert!(self.kv_cache, "add_kv_scales without declare_kv_cache");
        for (name, s) in kv_cache::scale_names(layer).into_iter().zip(scales) {
            if self.store.contains(&name) {
                return Err(Error::tensor(&name, "the source model already holds it; quantize the unquantized model"));
            }
            self.push_owned(RawTensor::from_f32(name, &[1], &[s]))?;
        }
        Ok(())
    }

    /// `quantization_config` for every quantized module written.
    fn quantization_config(&self) -> Result<Value> {
        let mut qc = self.linears_quantization_config()?;
        if self.kv_cache {
            qc["kv_cache_scheme"] = kv_cache::to_ct_json();
        }
        Ok(qc)
    }

    fn linears_quantization_config(&self) -> Result<Value> {
        let skipped = unquantized_linears(&self.store, &self.schemes)?;
        let quantized = &self.schemes;
        Ok(match self.format {
            CheckpointFormat::Gptq => {
                let layout = GptqLayout::for_tensors(quantized.iter().map(|(k, v)| (k.as_str(), v)))?;
                let mut qc = layout.base.quantization_config();
                // GPTQModel's flag for a quantized LM head (transformers' GPTQ loader reads it).
                qc["lm_head"] = json!(quantized.contains_key("lm_head"));
                // GPTQModel "dynamic" (vLLM reads it): a "-:" pattern leaves a module
                // unquantized, a "+:" pattern gives modules another scheme.
                let mut dynamic: serde_json::Map<String, Value> =
                    skipped.iter().map(|m| (format!("-:{}", exact_regex(m)), json!({}))).collect();
                dynamic.extend(layout.dynamic());
                if !dynamic.is_empty() {
                    qc["dynamic"] = Value::Object(dynamic);
                }
                qc
            }
            CheckpointFormat::CompressedTensors => {
                let mut ignore: BTreeSet<String> = skipped.into_iter().collect();
                if !quantized.contains_key("lm_head") {
                    ignore.insert("lm_head".into());
                }
                let mut cfg = CtConfig::for_tensors(quantized, ignore.into_iter().collect())?;
                match &self.act {
                    None => cfg.to_json(),
                    Some(act) => {
                        if cfg.format == CtFormat::PackQuantized {
                            cfg.format = CtFormat::IntQuantized;
                        }
                        let mut qc = cfg.to_json();
                        for g in qc["config_groups"].as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
                            g["input_activations"] = act.scheme.to_ct_json(&act.observer);
                        }
                        qc
                    }
                }
            }
            CheckpointFormat::Awq => {
                let cfg = AwqConfig::for_tensors(quantized.iter().map(|(k, v)| (k.as_str(), v)))?;
                cfg.quantization_config(&skipped)
            }
            CheckpointFormat::Gguf => unreachable!("CheckpointWriter::create refuses gguf"),
        })
    }
}

/// A quantized checkpoint read back: each quantized linear's layout (decoded on demand,
/// one at a time, by [`LoadedCheckpoint::decode`]: codes take a byte per weight, 7 GB at
/// 8B, so a loader packs each before the next is read), everything else left in the
/// memory-mapped store for the model loader.
pub struct LoadedCheckpoint {
    pub dir: PathBuf,
    pub format: CheckpointFormat,
    /// The whole config.json (activation args, if any, are under `quantization_config`).
    pub config: Value,
    /// Module name -> its layout, as the config gives it.
    modules: BTreeMap<String, ModuleLayout>,
    /// Module name -> tensor: every module, decoded by [`read_quantized_checkpoint`];
    /// empty after [`open_quantized_checkpoint`].
    pub quantized: BTreeMap<String, QuantizedTensor>,
    /// Every tensor of the checkpoint, memory-mapped.
    pub store: SafetensorsStore,
    /// `__metadata__` of the shards, merged.
    pub metadata: BTreeMap<String, String>,
}

/// How one quantized module's tensors are laid out.
enum ModuleLayout {
    Gptq(GptqConfig),
    CompressedTensors(ct::CtWeights),
    Awq(AwqConfig),
}

const GPTQ_PARTS: &[&str] = &["qweight", "qzeros", "scales", "g_idx"];
const CT_PARTS: &[&str] = &["weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight_g_idx"];
const AWQ_PARTS: &[&str] = &["qweight", "qzeros", "scales"];

impl LoadedCheckpoint {
    /// Whether `name` is part of a quantized linear's storage (the loader skips those).
    pub fn is_quantized_storage(&self, name: &str) -> bool {
        let Some((m, part)) = name.rsplit_once('.') else { return false };
        if !self.modules.contains_key(m) {
            return false;
        }
        match self.format {
            CheckpointFormat::Gptq => GPTQ_PARTS.contains(&part),
            // `weight` is a quantized module's storage when it is not packed (FP8, int-quantized).
            CheckpointFormat::CompressedTensors => {
                CT_PARTS.contains(&part) || matches!(part, "weight" | "input_scale" | "input_zero_point")
            }
            CheckpointFormat::Awq => AWQ_PARTS.contains(&part),
            CheckpointFormat::Gguf => false,
        }
    }

    /// The quantized modules' names, sorted.
    pub fn module_names(&self) -> impl Iterator<Item = &str> {
        self.modules.keys().map(String::as_str)
    }

    /// Decode quantized module `m` from its tensors (codes, scales, zero points), checking
    /// them against the config.
    pub fn decode(&self, m: &str) -> Result<QuantizedTensor> {
        let layout =
            self.modules.get(m).ok_or_else(|| Error::tensor(m, "is not a quantized module of this checkpoint"))?;
        let get = |n: &str| tensor_view(&self.store, n);
        match layout {
            ModuleLayout::Gptq(cfg) => gptq::from_tensors(m, &get, cfg),
            ModuleLayout::CompressedTensors(w) => ct::from_tensors(m, &get, w),
            ModuleLayout::Awq(cfg) => awq::from_tensors(m, &get, cfg),
        }
    }

    /// Tensors that are not quantized storage (embeddings, norms, biases, lm_head...).
    pub fn dense_names(&self) -> Vec<&str> {
        self.store.names().filter(|n| !self.is_quantized_storage(n)).collect()
    }
}

/// One GPTQModel `dynamic` rule: `-:pattern` skips a module, `+:pattern` or `pattern`
/// overrides bits/group_size/sym/desc_act for the modules it matches (`re.match`).
struct DynamicRule<'a> {
    key: &'a str,
    skip: bool,
    pattern: PyMatch,
    overrides: &'a Value,
}

/// The `dynamic` rules of a gptq config, each pattern compiled once; an invalid one is an
/// error naming the file, the key and the pattern.
fn gptq_dynamic_rules<'a>(dynamic: Option<&'a Value>, path: &Path) -> Result<Vec<DynamicRule<'a>>> {
    let Some(map) = dynamic.and_then(Value::as_object) else { return Ok(vec![]) };
    let mut rules = Vec::with_capacity(map.len());
    for (key, overrides) in map {
        let (skip, p) = match key.strip_prefix("-:") {
            Some(p) => (true, p),
            None => (false, key.strip_prefix("+:").unwrap_or(key)),
        };
        let pattern = PyMatch::parse(p, path, &format!("quantization_config.dynamic[{key:?}]"))?;
        rules.push(DynamicRule { key, skip, pattern, overrides });
    }
    Ok(rules)
}

/// The gptq config of `module`: the first `dynamic` rule matching it, over `base`.
fn gptq_config_for(base: &GptqConfig, rules: &[DynamicRule<'_>], module: &str, path: &Path) -> Result<GptqConfig> {
    let Some(rule) = rules.iter().find(|r| r.pattern.matches(module)) else { return Ok(base.clone()) };
    if rule.skip {
        return Err(Error::tensor(
            module,
            format!("holds gptq tensors but quantization_config.dynamic skips it ({:?})", rule.key),
        ));
    }
    let mut merged = base.quantization_config();
    for (k, v) in rule.overrides.as_object().into_iter().flatten() {
        merged[k] = v.clone();
    }
    GptqConfig::from_json(&merged, path)
}

/// [`open_quantized_checkpoint`], then every module decoded (all checked; memory: a byte
/// per weight, so for tests and tools, not for loading large models).
pub fn read_quantized_checkpoint(dir: &Path) -> Result<LoadedCheckpoint> {
    let mut ckpt = open_quantized_checkpoint(dir)?;
    ckpt.quantized = ckpt.module_names().map(|m| Ok((m.to_string(), ckpt.decode(m)?))).collect::<Result<_>>()?;
    Ok(ckpt)
}

/// A checkpoint tensor as the format readers take it, `None` when absent.
fn tensor_view<'a>(store: &'a SafetensorsStore, name: &str) -> Option<TensorView<'a>> {
    let t = store.raw(store.key(name)?).ok()?;
    TensorView::new(t.dtype, t.shape.to_vec(), t.bytes).ok()
}

/// Open a quantized checkpoint: detect its format from config.json's `quantization_config`
/// (or a lone quantize_config.json) and each quantized module's layout (its `dynamic` or
/// config-group scheme), checking the config; the modules are decoded by
/// [`LoadedCheckpoint::decode`].
pub fn open_quantized_checkpoint(dir: &Path) -> Result<LoadedCheckpoint> {
    let cfg_path = dir.join("config.json");
    let config = read_json(&cfg_path)?;
    let (qc, qc_path) = match config.get("quantization_config") {
        Some(v) => (v.clone(), cfg_path.clone()),
        None if dir.join("quantize_config.json").exists() => {
            let p = dir.join("quantize_config.json");
            (read_json(&p)?, p)
        }
        None => return Err(Error::config(&cfg_path, "no quantization_config: not a quantized checkpoint")),
    };
    let method = qc.get("quant_method").and_then(Value::as_str).unwrap_or("gptq");
    let store = SafetensorsStore::open(dir)?;
    let (format, quantized) = {
        let names: BTreeSet<&str> = store.names().collect();
        let get = |n: &str| tensor_view(&store, n);
        let mut quantized = BTreeMap::new();
        let format = match method {
            "gptq" => {
                let base = GptqConfig::from_json(&qc, &qc_path)?;
                let rules = gptq_dynamic_rules(qc.get("dynamic"), &qc_path)?;
                for m in names.iter().filter_map(|n| n.strip_suffix(".qweight")) {
                    let cfg = gptq_config_for(&base, &rules, m, &qc_path)?;
                    quantized.insert(m.to_string(), ModuleLayout::Gptq(cfg));
                }
                CheckpointFormat::Gptq
            }
            "compressed-tensors" => {
                let cfg = CtConfig::from_json(&qc, &qc_path)?;
                let packed = names.iter().filter_map(|n| n.strip_suffix(".weight_packed"));
                let fp8 = names.iter().filter_map(|n| n.strip_suffix(".weight_scale")).filter(|m| {
                    get(&format!("{m}.weight"))
                        .is_some_and(|w| matches!(w.dtype(), Dtype::F8_E4M3 | Dtype::F8_E5M2 | Dtype::I8))
                });
                let modules: BTreeSet<&str> = packed.chain(fp8).collect();
                for m in modules {
                    let w = cfg.weights_for(m)?;
                    let is_int = names.contains(format!("{m}.weight_packed").as_str())
                        || get(&format!("{m}.weight")).is_some_and(|t| t.dtype() == Dtype::I8);
                    if is_int == w.scheme.is_fp8() {
                        let found = if is_int { "integer" } else { "FP8" };
                        return Err(Error::tensor(
                            m,
                            format!("holds {found} weights but the config gives it {}", w.scheme),
                        ));
                    }
                    quantized.insert(m.to_string(), ModuleLayout::CompressedTensors(w));
                }
                CheckpointFormat::CompressedTensors
            }
            "awq" => {
                let cfg = AwqConfig::from_json(&qc, &qc_path)?;
                for m in names.iter().filter_map(|n| n.strip_suffix(".qweight")) {
                    quantized.insert(m.to_string(), ModuleLayout::Awq(cfg.clone()));
                }
                CheckpointFormat::Awq
            }
            other => {
                return Err(Error::config(
                    &qc_path,
                    format!("quant_method {other:?} is not supported (gptq, compressed-tensors, awq)"),
                ))
            }
        };
        if quantized.is_empty() {
            return Err(Error::config(
                &qc_path,
                format!("quant_method {method:?} but no quantized tensors were found in {}", dir.display()),
            ));
        }
        (format, quantized)
    };
    let metadata = store.user_metadata().into_iter().collect();
    Ok(LoadedCheckpoint {
        dir: dir.to_path_buf(),
        format,
        config,
        modules: quantized,
        quantized: BTreeMap::new(),
        store,
        metadata,
    })
}

/// The activation quantization of each quantized linear of a checkpoint, as its config
/// says (compressed-tensors `input_activations`; other formats have none): module name ->
/// scheme and, when static, the stored parameters.
pub fn checkpoint_activations(ckpt: &LoadedCheckpoint) -> Result<BTreeMap<String, (ActScheme, Option<ActParams>)>> {
    let mut out = BTreeMap::new();
    if ckpt.format != CheckpointFormat::CompressedTensors {
        return Ok(out);
    }
    let Some(qc) = ckpt.config.get("quantization_config") else { return Ok(out) };
    let path = ckpt.dir.join("config.json");
    let get = |n: &str| tensor_view(&ckpt.store, n);
    let schemes = CtInputSchemes::from_json(qc, &path)?;
    for m in ckpt.module_names() {
        if let Some(s) = schemes.for_module(m)? {
            let p = if s.dynamic { None } else { Some(s.read_ct_tensors(m, &get)?) };
            out.insert(m.to_string(), (s, p));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::compressed_tensors::{CtFormat, CtGroup, CtWeights, Target};
    use crate::format::QuantScheme;

    #[test]
    fn format_names_and_regex_escape() {
        assert_eq!("gptq".parse::<CheckpointFormat>().unwrap(), CheckpointFormat::Gptq);
        assert_eq!("awq".parse::<CheckpointFormat>().unwrap(), CheckpointFormat::Awq);
        assert!("marlin".parse::<CheckpointFormat>().unwrap_err().to_string().contains("marlin"));
        let r = exact_regex("model.layers.0.mlp.down_proj");
        assert_eq!(r, r"^model\.layers\.0\.mlp\.down_proj$");
        let t = Target::new(format!("re:{r}")).unwrap();
        assert!(t.matches("model.layers.0.mlp.down_proj"));
        assert!(!t.matches("model.layers.0.mlp.down_proj2"));
    }

    #[test]
    fn regex_follows_python_re_match() {
        let m = |p: &str, s: &str| Target::new(format!("re:{p}")).unwrap().matches(s);
        assert!(m(".*lm_head", "lm_head"));
        assert!(m(".*self_attn.(q|k|v)_proj$", "model.layers.0.self_attn.k_proj"));
        assert!(!m(".*self_attn.(q|k|v)_proj$", "model.layers.0.self_attn.o_proj"));
        assert!(m("model.layers.\\d+.mlp", "model.layers.12.mlp.up_proj"), "prefix match like re.match");
        assert!(!m("mlp", "model.layers.0.mlp"), "anchored at the start");
        assert!(m("^model\\.layers\\.[0-9]+\\.mlp\\.(?:gate|up)_proj$", "model.layers.3.mlp.up_proj"));
        assert!(m("a?b*c+$", "bbc") && !m("a?b*c+$", "ab"));
        assert!(m("a{2}", "aab") && !m("a{2}", "ab"), "counted repetition, as Python has it");
        for bad in ["re:(a", "re:\\p"] {
            let cfg = json!({"format": "pack-quantized", "config_groups": {}, "ignore": ["lm_head", bad]});
            let e = CtConfig::from_json(&cfg, Path::new("c.json")).unwrap_err().to_string();
            assert!(e.contains("c.json") && e.contains("quantization_config.ignore[1]"), "{e}");
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        let t = Target::new("lm_head").unwrap();
        assert!(t.matches("lm_head") && !t.matches("model.lm_head"), "plain names match exactly");
    }

    #[test]
    fn invalid_target_pattern_names_file_key_and_pattern() {
        let cfg = json!({
            "format": "pack-quantized",
            "config_groups": {"group_0": {"targets": ["Linear", "re:.*(q|k_proj"], "weights": {"num_bits": 4}}},
        });
        let e = CtConfig::from_json(&cfg, Path::new("/m/config.json")).unwrap_err().to_string();
        assert!(e.starts_with("/m/config.json: quantization_config.config_groups.group_0.targets[1]: "), "{e}");
        assert!(e.contains(r#""re:.*(q|k_proj""#), "{e}");
    }

    #[test]
    fn gptq_dynamic_patterns_compile_once_and_refuse_invalid_ones() {
        let base = GptqConfig::from_json(&json!({"bits": 4, "group_size": 128}), Path::new("c")).unwrap();
        let dynamic = json!({"-:.*lm_head$": {}, r"+:.*layers\.0\..*": {"bits": 8}});
        let rules = gptq_dynamic_rules(Some(&dynamic), Path::new("c")).unwrap();
        let bits = |m: &str| gptq_config_for(&base, &rules, m, Path::new("c")).map(|c| c.bits);
        assert_eq!(bits("model.layers.0.mlp.up_proj").unwrap(), 8);
        assert_eq!(bits("model.layers.1.mlp.up_proj").unwrap(), 4);
        assert!(bits("lm_head").unwrap_err().to_string().contains("skips it"));
        let bad = json!({"-:(a*)*b)": {}});
        let e = gptq_dynamic_rules(Some(&bad), Path::new("q.json")).err().unwrap().to_string();
        assert!(e.contains("q.json") && e.contains(r#"quantization_config.dynamic["-:(a*)*b)"]"#), "{e}");
    }

    #[test]
    fn weights_args_round_trip_and_resolve() {
        let path = Path::new("config.json");
        for s in [
            QuantScheme::int(4).unwrap().group(128).unwrap(),
            QuantScheme::int(8).unwrap().asymmetric().unwrap(),
            QuantScheme::int(3).unwrap().per_tensor(),
            QuantScheme::fp8_e4m3(),
            QuantScheme::fp8_e4m3().per_tensor(),
        ] {
            let w = CtWeights::new("m", s, false).unwrap();
            assert_eq!(CtWeights::from_json(&w.to_json(), path).unwrap(), w);
        }
        let cfg = CtConfig {
            format: CtFormat::PackQuantized,
            groups: vec![
                CtGroup {
                    targets: vec![Target::new("Linear").unwrap()],
                    weights: CtWeights::new("m", QuantScheme::int(4).unwrap(), false).unwrap(),
                },
                CtGroup {
                    targets: vec![Target::new("re:.*down_proj$").unwrap()],
                    weights: CtWeights::new("m", QuantScheme::int(8).unwrap(), false).unwrap(),
                },
            ],
            ignore: vec![Target::new("lm_head").unwrap()],
        };
        let back = CtConfig::from_json(&cfg.to_json(), path).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(back.weights_for("model.layers.0.mlp.down_proj").unwrap().scheme.bits(), 8);
        assert_eq!(back.weights_for("model.layers.0.mlp.up_proj").unwrap().scheme.bits(), 4);
        assert!(back.weights_for("lm_head").unwrap_err().to_string().contains("ignore"));
    }
}
