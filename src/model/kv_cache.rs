//! The KV cache of generation: every block's keys and values (after RoPE) of the
//! positions run so far, so a new token attends to the past without recomputing it.
//!
//! Layout per block: `keys`, `values` `[capacity, kv_heads·head_dim]` row-major f32, the
//! layout the k/v projections produce, so a prefill appends its rows as computed and
//! attention reads each head with a row stride (`layers::cached_attention`). The buffers
//! are allocated for `capacity` positions at once (zeroed pages, so memory grows as they
//! fill) and never reallocated. Size per token: `2 · layers · kv_dim · 4` bytes
//! (SmolLM2-135M: 46,080 B). A checkpoint with an FP8 `kv_cache_scheme` caches E4M3 codes
//! instead (a quarter of that), decoded into one shared f32 buffer for the block that
//! attends (`KvScratch`).

use super::config::LlamaConfig;
use super::layers::Rope;
use crate::error::{Error, Result};
use crate::format::{fp8, kv_cache, NumberFormat};

/// One block's keys and values.
pub struct LayerKv {
    store: KvStore,
    width: usize,
    len: usize,
}

enum KvStore {
    F32 {
        keys: Vec<f32>,
        values: Vec<f32>,
    },
    /// E4M3 codes with the block's static `[k_scale, v_scale]` (`format::kv_cache`).
    Fp8 {
        keys: Vec<u8>,
        values: Vec<u8>,
        scales: [f32; 2],
    },
}

/// Decoded keys and values of an FP8 cache, shared by every block of a model (one block
/// attends at a time), so an FP8 cache costs a quarter of an f32 one plus one block's f32.
#[derive(Default)]
pub struct KvScratch {
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl LayerKv {
    fn new(width: usize, capacity: usize, scales: Option<[f32; 2]>) -> Self {
        let n = capacity * width;
        let store = match scales {
            None => KvStore::F32 { keys: vec![0.0; n], values: vec![0.0; n] },
            Some(scales) => KvStore::Fp8 { keys: vec![0; n], values: vec![0; n], scales },
        };
        Self { store, width, len: 0 }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append the rows of `k`, `v` (`[rows, kv_dim]`, RoPE applied to `k`); an FP8 cache
    /// stores their E4M3 codes.
    pub fn append(&mut self, k: &[f32], v: &[f32]) {
        let (a, b) = (self.len * self.width, self.len * self.width + k.len());
        assert!(k.len() == v.len() && k.len().is_multiple_of(self.width), "LayerKv: rows of k and v");
        match &mut self.store {
            KvStore::F32 { keys, values } => {
                assert!(b <= keys.len(), "LayerKv: append past the capacity");
                keys[a..b].copy_from_slice(k);
                values[a..b].copy_from_slice(v);
            }
            KvStore::Fp8 { keys, values, scales } => {
                assert!(b <= keys.len(), "LayerKv: append past the capacity");
                for (c, &x) in keys[a..b].iter_mut().zip(k) {
                    *c = kv_cache::encode(x, scales[0]);
                }
                for (c, &x) in values[a..b].iter_mut().zip(v) {
                    *c = kv_cache::encode(x, scales[1]);
                }
            }
        }
        self.len += k.len() / self.width;
    }

    /// Keys and values of the positions held, `[len, kv_dim]` each, in f32: the cache
    /// itself, or an FP8 cache decoded into `scratch` (`code · scale`, the values
    /// `kv_cache::fake_quantize` gives).
    pub fn keys_values<'s>(&'s self, scratch: &'s mut KvScratch) -> (&'s [f32], &'s [f32]) {
        let n = self.len * self.width;
        match &self.store {
            KvStore::F32 { keys, values } => (&keys[..n], &values[..n]),
            KvStore::Fp8 { keys, values, scales } => {
                let table = fp8::decode_table(NumberFormat::Fp8E4M3);
                for (out, codes, s) in [(&mut scratch.keys, keys, scales[0]), (&mut scratch.values, values, scales[1])]
                {
                    out.clear();
                    out.extend(codes[..n].iter().map(|&c| table[c as usize] * s));
                }
                (&scratch.keys, &scratch.values)
            }
        }
    }

    fn bytes_per_token(&self) -> usize {
        let elem = match self.store {
            KvStore::F32 { .. } => 4,
            KvStore::Fp8 { .. } => 1,
        };
        2 * self.width * elem
    }
}

/// The cache of a whole model, with the RoPE tables for its `capacity` positions.
pub struct KvCache {
    layers: Vec<LayerKv>,
    rope: Rope,
    capacity: usize,
    scratch: KvScratch,
}

impl KvCache {
    /// An empty cache for up to `capacity` positions; refuses more than the model's
    /// `max_position_embeddings`. `fp8_scales[block]` (`[k_scale, v_scale]`) makes that
    /// block's cache FP8 E4M3; `None` keeps f32.
    pub fn new(cfg: &LlamaConfig, capacity: usize, fp8_scales: &[Option<[f32; 2]>]) -> Result<Self> {
        if capacity > cfg.max_position_embeddings {
            return Err(Error::other_msg(format!(
                "a context of {capacity} tokens is longer than the model's max_position_embeddings = {}",
                cfg.max_position_embeddings
            )));
        }
        assert_eq!(fp8_scales.len(), cfg.num_layers, "KvCache: one scale entry per block");
        let width = cfg.kv_dim();
        let layers = fp8_scales.iter().map(|&s| LayerKv::new(width, capacity, s)).collect();
        let rope = Rope::for_cache(&cfg.rope, cfg.rope_local.as_ref(), cfg.head_dim, capacity.max(1));
        Ok(Self { layers, rope, capacity, scratch: KvScratch::default() })
    }

    /// Positions held (the same in every block between forwards).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerKv::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes the cache takes per position.
    pub fn bytes_per_token(&self) -> usize {
        self.layers.iter().map(LayerKv::bytes_per_token).sum()
    }

    /// An error unless `tokens` more positions fit.
    pub fn check_room(&self, tokens: usize) -> Result<()> {
        if self.len() + tokens > self.capacity {
            return Err(Error::other_msg(format!(
                "the context is full: {} tokens held, {tokens} more asked for, room for {}",
                self.len(),
                self.capacity
            )));
        }
        Ok(())
    }

    /// Forget every position (the buffers are kept).
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| l.len = 0);
    }

    /// Drop the positions from `len` on (e.g. to re-run a prompt's last token).
    pub fn truncate(&mut self, len: usize) {
        self.layers.iter_mut().for_each(|l| l.len = l.len.min(len));
    }

    /// The RoPE tables, the blocks' caches and the shared decode buffer, for one forward.
    pub fn parts(&mut self) -> (&Rope, &mut [LayerKv], &mut KvScratch) {
        (&self.rope, &mut self.layers, &mut self.scratch)
    }
}
