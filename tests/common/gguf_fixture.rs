//! Test fixture: a minimal GGUF v3 writer and a tiny synthetic llama model
//! (byte-level BPE tokenizer, q/k rows permuted as llama.cpp's converter does).
#![allow(dead_code)]

use half::f16;
use quantize::io::gguf::{GgufFile, Value};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------- GGUF writer

pub struct Tensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub data: Vec<u8>,
    pub offset: Option<u64>,
}

/// Minimal GGUF v3 writer (alignment 32) for synthetic test files.
pub struct Gguf {
    pub version: u32,
    pub kv: Vec<(String, Value)>,
    pub tensors: Vec<Tensor>,
}

// The value encoding is the library writer's (one place for the GGUF value layout).
pub use quantize::io::gguf::writer::{put_str, put_value, type_id};

impl Gguf {
    pub fn new() -> Self {
        Self { version: 3, kv: Vec::new(), tensors: Vec::new() }
    }
    pub fn kv(mut self, k: &str, v: Value) -> Self {
        self.kv.push((k.to_string(), v));
        self
    }
    pub fn raw(&mut self, name: &str, dims: &[u64], type_id: u32, data: Vec<u8>) {
        self.tensors.push(Tensor { name: name.into(), dims: dims.to_vec(), type_id, data, offset: None });
    }
    /// An F32 tensor; `dims` innermost first, `vals` row-major.
    pub fn f32(&mut self, name: &str, dims: &[u64], vals: &[f32]) {
        assert_eq!(vals.len() as u64, dims.iter().product::<u64>());
        self.raw(name, dims, 0, vals.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut b, k);
            b.extend(type_id(v).to_le_bytes());
            put_value(&mut b, v);
        }
        let mut data = Vec::new();
        for t in &self.tensors {
            put_str(&mut b, &t.name);
            b.extend((t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
            b.extend(t.type_id.to_le_bytes());
            b.extend(t.offset.unwrap_or(data.len() as u64).to_le_bytes());
            data.extend(&t.data);
            data.resize(data.len().div_ceil(32) * 32, 0);
        }
        b.resize(b.len().div_ceil(32) * 32, 0);
        b.extend(data);
        b
    }
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.bytes()).unwrap();
        p
    }
}

pub fn s(x: &str) -> Value {
    Value::String(x.into())
}

pub fn err_of(path: &Path) -> String {
    match GgufFile::open(path) {
        Ok(_) => panic!("{} opened but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

// ------------------------------------------------------------ tiny llama model

pub const HIDDEN: usize = 32;
pub const HEADS: usize = 2;
pub const KV_HEADS: usize = 1;
pub const HEAD_DIM: usize = HIDDEN / HEADS;
pub const FFN: usize = 64;
pub const LAYERS: usize = 2;

/// GPT-2 `bytes_to_unicode`.
pub fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(b) {
        return b as char;
    }
    char::from_u32(256 + (0..b).filter(|&x| !printable(x)).count() as u32).unwrap()
}

pub fn tokens() -> Vec<String> {
    let mut t = vec!["<|endoftext|>".to_string(), "<|im_start|>".to_string()];
    t.extend((0..=255u8).map(|b| byte_char(b).to_string()));
    t.extend(["he".to_string(), "hel".to_string()]);
    t
}

/// HF-layout q_proj/k_proj rows, value = layer * 1e5 + row * 100 + col.
pub fn hf_qk(layer: usize, rows: usize) -> Vec<f32> {
    (0..rows * HIDDEN).map(|i| (layer * 100_000 + (i / HIDDEN) * 100 + i % HIDDEN) as f32).collect()
}

/// llama.cpp's permute: GGUF row h*hd + 2i + j = HF row h*hd + j*hd/2 + i.
pub fn llama_cpp_permute(w: &[f32], rows: usize, heads: usize) -> Vec<f32> {
    let (hd, cols) = (rows / heads, w.len() / rows);
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let (g, s) = (h * hd + 2 * i + j, h * hd + j * hd / 2 + i);
                out[g * cols..(g + 1) * cols].copy_from_slice(&w[s * cols..(s + 1) * cols]);
            }
        }
    }
    out
}

/// Q8_0 blocks with d = 1 holding the integers `q` exactly.
pub fn q8_0(q: &[i8]) -> Vec<u8> {
    q.chunks(32).flat_map(|c| f16::from_f32(1.0).to_le_bytes().into_iter().chain(c.iter().map(|&x| x as u8))).collect()
}

pub fn up_values(layer: usize) -> Vec<i8> {
    (0..FFN * HIDDEN).map(|i| (((i * 7 + layer) % 201) as i32 - 100) as i8).collect()
}

pub fn tiny_llama(with_output: bool) -> Gguf {
    let toks = tokens();
    let vocab = toks.len();
    let mut types = vec![Value::I32(1); vocab];
    types[0] = Value::I32(3);
    types[1] = Value::I32(3);
    let mut g = Gguf::new()
        .kv("general.architecture", s("llama"))
        .kv("general.alignment", Value::U32(32))
        .kv("llama.block_count", Value::U32(LAYERS as u32))
        .kv("llama.context_length", Value::U32(256))
        .kv("llama.embedding_length", Value::U32(HIDDEN as u32))
        .kv("llama.feed_forward_length", Value::U32(FFN as u32))
        .kv("llama.attention.head_count", Value::U32(HEADS as u32))
        .kv("llama.attention.head_count_kv", Value::U32(KV_HEADS as u32))
        .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .kv("llama.rope.freq_base", Value::F32(100000.0))
        .kv("tokenizer.ggml.model", s("gpt2"))
        .kv("tokenizer.ggml.pre", s("smollm"))
        .kv("tokenizer.ggml.tokens", Value::Array(toks.iter().map(|t| s(t)).collect()))
        .kv("tokenizer.ggml.token_type", Value::Array(types))
        .kv("tokenizer.ggml.merges", Value::Array(vec![s("h e"), s("he l")]))
        .kv("tokenizer.ggml.bos_token_id", Value::U32(1))
        .kv("tokenizer.ggml.eos_token_id", Value::U32(0))
        .kv("tokenizer.ggml.add_bos_token", Value::Bool(false))
        .kv("tokenizer.chat_template", s("{{ messages }}"));
    let h = HIDDEN as u64;
    g.f32("token_embd.weight", &[h, vocab as u64], &(0..vocab * HIDDEN).map(|i| i as f32 * 0.5).collect::<Vec<_>>());
    for l in 0..LAYERS {
        let n = |p: &str| format!("blk.{l}.{p}.weight");
        let (q_rows, kv_rows) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
        g.f32(&n("attn_q"), &[h, q_rows as u64], &llama_cpp_permute(&hf_qk(l, q_rows), q_rows, HEADS));
        g.f32(&n("attn_k"), &[h, kv_rows as u64], &llama_cpp_permute(&hf_qk(l, kv_rows), kv_rows, KV_HEADS));
        g.f32(&n("attn_v"), &[h, kv_rows as u64], &vec![l as f32; kv_rows * HIDDEN]);
        g.f32(&n("attn_output"), &[q_rows as u64, h], &vec![2.0; q_rows * HIDDEN]);
        g.f32(&n("ffn_gate"), &[h, FFN as u64], &vec![3.0; FFN * HIDDEN]);
        g.raw(&n("ffn_up"), &[h, FFN as u64], 8, q8_0(&up_values(l)));
        g.f32(&n("ffn_down"), &[FFN as u64, h], &vec![-1.0; FFN * HIDDEN]);
        g.f32(&n("attn_norm"), &[h], &[1.0; HIDDEN]);
        g.f32(&n("ffn_norm"), &[h], &[1.25; HIDDEN]);
    }
    g.f32("output_norm.weight", &[h], &[0.75; HIDDEN]);
    if with_output {
        g.f32("output.weight", &[h, vocab as u64], &vec![0.125; vocab * HIDDEN]);
    }
    g
}
