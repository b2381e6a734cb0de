//! `quantize generate`: text from a prompt, or a chat, streamed token by token.

use crate::generate::chat::{ChatTemplate, Message};
use crate::generate::sampler::{Sampler, Sampling};
use crate::generate::{stop_tokens, Session};
use crate::io::tokenizer::{read_text, Tokenizer};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Model directory (dense or quantized checkpoint).
    #[arg(long)]
    pub model: PathBuf,
    /// The prompt (else --prompt-file, else stdin).
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from this file.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Wrap the prompt in the model's chat template (tokenizer_config.json); without a
    /// prompt and with stdin a terminal, an interactive chat (an empty line ends it).
    #[arg(long)]
    pub chat: bool,
    /// System message of the chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Stop after this many new tokens (an end-of-sequence token stops earlier).
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Keep generating past end-of-sequence tokens (for timing runs, as llama.cpp's flag).
    #[arg(long)]
    pub ignore_eos: bool,
    /// 0 is greedy decoding; above 0, sampling at this temperature.
    #[arg(long, default_value_t = 0.0, help_heading = "Sampling", allow_negative_numbers = true)]
    pub temperature: f32,
    /// Sample among the k most likely tokens only (0: all).
    #[arg(long, default_value_t = 0, help_heading = "Sampling")]
    pub top_k: usize,
    /// Sample among the most likely tokens whose probability adds up to p (1: all).
    #[arg(long, default_value_t = 1.0, help_heading = "Sampling")]
    pub top_p: f32,
    /// Drop tokens less likely than this times the most likely one (0: none).
    #[arg(long, default_value_t = 0.0, help_heading = "Sampling")]
    pub min_p: f32,
    /// Penalize tokens already in the context (transformers' repetition_penalty; 1: off).
    #[arg(long, default_value_t = 1.0, help_heading = "Sampling")]
    pub repeat_penalty: f32,
    /// Seed of the sampling draws.
    #[arg(long, default_value_t = 0, help_heading = "Sampling")]
    pub seed: u64,
    /// Context length in tokens (prompt and output; KV cache size). Default: the prompt
    /// plus --max-tokens (4096 for an interactive chat), at most max_position_embeddings.
    #[arg(long)]
    pub ctx: Option<usize>,
    #[command(flatten)]
    pub runtime: super::RuntimeArgs,
}

/// Default context of an interactive chat.
const CHAT_CTX: usize = 4096;

pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let sampling = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        seed: a.seed,
    };
    let mut sampler = Sampler::new(sampling.clone())?;
    if a.ctx == Some(0) {
        anyhow::bail!("invalid option --ctx: 0; the context must hold the prompt and the output");
    }
    let tok = Tokenizer::for_model(&a.model)?;
    let template = match a.chat {
        true => Some(ChatTemplate::from_model_dir(&a.model)?.ok_or_else(|| {
            anyhow::anyhow!(
                "invalid option --chat: {} has no chat_template (tokenizer_config.json or chat_template.jinja)",
                a.model.display()
            )
        })?),
        false => None,
    };
    let prompt = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) => Some(read_text(f)?),
        (None, None) if !std::io::stdin().is_terminal() => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            Some(s)
        }
        (None, None) if a.chat => None, // interactive
        (None, None) => anyhow::bail!("no prompt: give --prompt, --prompt-file, or pipe it on stdin (or --chat)"),
    };
    let mut messages: Vec<Message> = a.system.iter().map(|s| Message::new("system", s)).collect();
    // Tokens of the first context, to size the cache and check the prompt before loading.
    let first = match (&prompt, &template) {
        (Some(p), Some(t)) => {
            messages.push(Message::new("user", p));
            Some(tok.encode(&t.render(&messages, true)?)?)
        }
        (Some(p), None) => Some(tok.encode_prompt(p)?),
        (None, _) => None,
    };
    if first.as_ref().is_some_and(|t| t.is_empty()) {
        anyhow::bail!("the prompt is empty (no tokens): there is nothing to continue");
    }
    let (model, info) = a.runtime.loader()?.load(&a.model)?;
    let max_pos = model.config.max_position_embeddings;
    let ctx = a.ctx.unwrap_or_else(|| match &first {
        Some(t) => (t.len() + a.max_tokens).min(max_pos),
        None => CHAT_CTX.min(max_pos),
    });
    if ctx > max_pos {
        anyhow::bail!(
            "invalid option --ctx: {ctx} is beyond {}'s max_position_embeddings = {max_pos}",
            a.model.display()
        );
    }
    let stops = if a.ignore_eos { Vec::new() } else { stop_tokens(&a.model)? };
    let mut session = Session::new(&model, ctx)?;
    eprintln!(
        "model: {} ({}, {:.2} bits/weight{}); context {ctx} tokens, KV cache {} KiB/token; {}",
        a.model.display(),
        info.format.as_deref().unwrap_or("dense"),
        info.bits_per_weight.unwrap_or(32.0),
        if info.dot.is_some() { ", int8 inputs (--dot int8)" } else { "" },
        session.cache_bytes_per_token() / 1024,
        if sampling.is_greedy() { "greedy".to_string() } else { format!("sampling at temperature {}", a.temperature) }
    );
    let mut out = std::io::stdout().lock();
    let mut reply = |session: &mut Session, context: &[u32], sampler: &mut Sampler| -> anyhow::Result<String> {
        let mut stream = tok.text_stream();
        let mut text = String::new();
        let stats = session.generate(context, a.max_tokens, &stops, sampler, |id| {
            if let Some(piece) = stream.step(id)? {
                text.push_str(&piece);
                out.write_all(piece.as_bytes())
                    .and_then(|_| out.flush())
                    .map_err(|e| crate::Error::other_msg(e.to_string()))?;
            }
            Ok(())
        })?;
        writeln!(out)?;
        eprintln!("{}", stats.summary());
        Ok(text)
    };
    match first {
        Some(context) => {
            reply(&mut session, &context, &mut sampler)?;
        }
        None => {
            let template = template.expect("interactive only with --chat");
            let stdin = std::io::stdin();
            loop {
                eprint!("> ");
                let mut line = String::new();
                if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
                    break;
                }
                messages.push(Message::new("user", line.trim_end_matches(['\n', '\r'])));
                let context = tok.encode(&template.render(&messages, true)?)?;
                let text = reply(&mut session, &context, &mut sampler)?;
                messages.push(Message::new("assistant", &text));
            }
        }
    }
    Ok(())
}
