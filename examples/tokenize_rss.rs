//! Peak RSS of tokenizing a long text whole or in pieces (issue 20: bounded memory).
//! `cargo run --release --example tokenize_rss -- TOKENIZER.json TEXT whole|pieces`

use quantize::io::tokenizer::{read_text, Tokenizer};
use std::path::Path;

fn main() -> quantize::error::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (tok, text, mode) = (Tokenizer::from_file(Path::new(&args[1]))?, read_text(Path::new(&args[2]))?, &args[3]);
    let t = std::time::Instant::now();
    let ids = if mode == "whole" { tok.encode(&text)? } else { tok.encode_long(&text)? };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status.lines().find(|l| l.starts_with("VmHWM")).unwrap_or("VmHWM: ?");
    println!("{mode}: {} tokens in {:.2}s, {hwm}", ids.len(), t.elapsed().as_secs_f64());
    Ok(())
}
