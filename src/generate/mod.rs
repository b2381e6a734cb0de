//! Running a model token by token: a [`Session`] holds the KV cache and the tokens it
//! stands for; [`Session::generate`] runs a context (reusing the cached prefix it shares
//! with the last one, so a chat turn only runs its new tokens) and then decodes one
//! token at a time until a stop token or the token budget.

pub mod bench;
pub mod chat;
pub mod sampler;

use crate::error::{Error, Result};
use crate::model::kv_cache::KvCache;
use crate::model::LlamaModel;
use sampler::Sampler;
use serde_json::Value;
use std::path::Path;
use std::time::Instant;

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Stop {
    /// A stop token (EOS) was produced; it is not part of the output.
    StopToken,
    /// `max_tokens` were produced.
    MaxTokens,
    /// The context (KV cache) is full.
    ContextFull,
}

/// What one generation did, for the summary line.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GenerationStats {
    /// Context tokens run in the prefill (those not already cached).
    pub prefill_tokens: usize,
    pub prefill_seconds: f64,
    pub generated_tokens: usize,
    pub decode_seconds: f64,
    pub stop: Stop,
}

impl GenerationStats {
    pub fn summary(&self) -> String {
        let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        format!(
            "prefill {} tokens in {:.2}s ({:.1} tokens/s); generated {} tokens in {:.2}s ({:.1} tokens/s); stopped: {}",
            self.prefill_tokens,
            self.prefill_seconds,
            rate(self.prefill_tokens, self.prefill_seconds),
            self.generated_tokens,
            self.decode_seconds,
            // The first generated token comes from the prefill's logits.
            rate(self.generated_tokens.saturating_sub(1), self.decode_seconds),
            match self.stop {
                Stop::StopToken => "end-of-sequence token",
                Stop::MaxTokens => "--max-tokens reached",
                Stop::ContextFull => "the context is full",
            }
        )
    }
}

/// A model with its KV cache.
pub struct Session<'m> {
    model: &'m LlamaModel,
    cache: KvCache,
    /// The tokens whose keys and values `cache` holds.
    tokens: Vec<u32>,
}

impl<'m> Session<'m> {
    /// A session with room for `capacity` tokens (prompt and output together).
    pub fn new(model: &'m LlamaModel, capacity: usize) -> Result<Self> {
        Ok(Self { model, cache: model.new_cache(capacity)?, tokens: Vec::new() })
    }

    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }

    /// Bytes of KV cache per token.
    pub fn cache_bytes_per_token(&self) -> usize {
        self.cache.bytes_per_token()
    }

    /// Make `context` the session's context, then generate up to `max_tokens` tokens with
    /// `sampler`, handing each to `on_token` as it is made (stop tokens are not handed
    /// over, nor kept). The part of `context` already cached is not run again.
    pub fn generate(
        &mut self,
        context: &[u32],
        max_tokens: usize,
        stop_tokens: &[u32],
        sampler: &mut Sampler,
        mut on_token: impl FnMut(u32) -> Result<()>,
    ) -> Result<GenerationStats> {
        if context.is_empty() {
            return Err(Error::other_msg("the prompt is empty: there is nothing to continue"));
        }
        if context.len() >= self.capacity() {
            return Err(Error::other_msg(format!(
                "the prompt is {} tokens, which leaves no room in a context of {} (--ctx, at most the model's \
                 max_position_embeddings = {})",
                context.len(),
                self.capacity(),
                self.model.config.max_position_embeddings
            )));
        }
        // Keep the cached prefix shared with `context`, but always run its last token.
        let shared = self.tokens.iter().zip(context).take_while(|(a, b)| a == b).count().min(context.len() - 1);
        self.cache.truncate(shared);
        self.tokens.truncate(shared);
        let t0 = Instant::now();
        let mut logits = self.model.forward_cached(&context[shared..], &mut self.cache)?;
        self.tokens.extend_from_slice(&context[shared..]);
        let prefill_seconds = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut generated = 0;
        let stop = loop {
            if generated == max_tokens {
                break Stop::MaxTokens;
            }
            let next = sampler.next(&mut logits, &self.tokens);
            if stop_tokens.contains(&next) {
                break Stop::StopToken;
            }
            generated += 1;
            on_token(next)?;
            // The last token is not run: nothing would read its logits. (A later turn
            // runs it with its own new tokens.)
            if generated == max_tokens {
                break Stop::MaxTokens;
            }
            if self.cache.len() == self.capacity() {
                break Stop::ContextFull;
            }
            logits = self.model.forward_cached(&[next], &mut self.cache)?;
            self.tokens.push(next);
        };
        Ok(GenerationStats {
            prefill_tokens: context.len() - shared,
            prefill_seconds,
            generated_tokens: generated,
            decode_seconds: t1.elapsed().as_secs_f64(),
            stop,
        })
    }
}

/// The end-of-sequence ids of the model in `dir`: `eos_token_id` (a number or a list) of
/// `generation_config.json`, else of `config.json`; `[]` when neither names one.
pub fn stop_tokens(dir: &Path) -> Result<Vec<u32>> {
    for file in ["generation_config.json", "config.json"] {
        let path = dir.join(file);
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::format(&path, format!("not valid JSON: {e}")))?;
        let ids = match &v["eos_token_id"] {
            Value::Null => continue,
            Value::Array(a) => a.iter().map(Value::as_u64).collect::<Option<Vec<_>>>(),
            n => n.as_u64().map(|n| vec![n]),
        };
        let ids = ids.ok_or_else(|| {
            Error::format(
                &path,
                format!("eos_token_id must be a token id or a list of them, not {}", v["eos_token_id"]),
            )
        })?;
        return Ok(ids.into_iter().map(|i| i as u32).collect());
    }
    Ok(Vec::new())
}
