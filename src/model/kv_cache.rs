//! The KV cache of generation: every block's keys and values (after RoPE) of the
//! positions run so far, so a new token attends to the past without recomputing it.
//!
//! Layout per block: `keys`, `values` `[capacity, kv_heads·head_dim]` row-major f32, the
//! layout the k/v projections produce, so a prefill appends its rows as computed and
//! attention reads each head with a row stride (`layers::cached_attention`). The buffers
//! are allocated for `capacity` positions at once (zeroed pages, so memory grows as they
//! fill) and never reallocated: decoding allocates nothing here. Size per token:
//! `2 · layers · kv_dim · 4` bytes (SmolLM2-135M: 46,080 B).

use super::config::LlamaConfig;
use super::layers::Rope;
use crate::error::{Error, Result};

/// One block's keys and values.
pub struct LayerKv {
    keys: Vec<f32>,
    values: Vec<f32>,
    width: usize,
    len: usize,
}

impl LayerKv {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append the rows of `k`, `v` (`[rows, kv_dim]`, RoPE applied to `k`).
    pub fn append(&mut self, k: &[f32], v: &[f32]) {
        let (a, b) = (self.len * self.width, self.len * self.width + k.len());
        assert!(b <= self.keys.len() && k.len() == v.len(), "LayerKv: append past the capacity");
        self.keys[a..b].copy_from_slice(k);
        self.values[a..b].copy_from_slice(v);
        self.len += k.len() / self.width;
    }

    /// Keys and values of the positions held, `[len, kv_dim]` each.
    pub fn keys_values(&self) -> (&[f32], &[f32]) {
        let n = self.len * self.width;
        (&self.keys[..n], &self.values[..n])
    }
}

/// The cache of a whole model, with the RoPE tables for its `capacity` positions.
pub struct KvCache {
    layers: Vec<LayerKv>,
    rope: Rope,
    capacity: usize,
}

impl KvCache {
    /// An empty cache for up to `capacity` positions; refuses more than the model's
    /// `max_position_embeddings`.
    pub fn new(cfg: &LlamaConfig, capacity: usize) -> Result<Self> {
        if capacity > cfg.max_position_embeddings {
            return Err(Error::other_msg(format!(
                "a context of {capacity} tokens is longer than the model's max_position_embeddings = {}",
                cfg.max_position_embeddings
            )));
        }
        let width = cfg.kv_dim();
        let layers = (0..cfg.num_layers)
            .map(|_| LayerKv { keys: vec![0.0; capacity * width], values: vec![0.0; capacity * width], width, len: 0 })
            .collect();
        Ok(Self { layers, rope: cfg.rope_tables(capacity.max(1)), capacity })
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
        self.layers.iter().map(|l| 2 * l.width * 4).sum()
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

    /// The RoPE tables and the blocks' caches, for one forward.
    pub fn parts(&mut self) -> (&Rope, &mut [LayerKv]) {
        (&self.rope, &mut self.layers)
    }
}
