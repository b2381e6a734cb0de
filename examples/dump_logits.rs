//! Logits of a model (dense or any quantized checkpoint, loaded as `eval` loads it) for a
//! token sequence, to compare with another runtime's: reads `TOKENS` (u32 little-endian),
//! writes `[tokens, vocab]` f32 little-endian to `OUT`; W8A8 activations rounded as
//! `RUNTIME` (vllm, the default, or compressed-tensors) rounds them.
//!
//!   cargo run --release --example dump_logits -- MODEL_DIR TOKENS OUT [RUNTIME]
use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (model, tokens, out, rt) = match &args[..] {
        [_, m, t, o] => (m, t, o, "vllm"),
        [_, m, t, o, r] => (m, t, o, r.as_str()),
        _ => return Err("usage: dump_logits MODEL_DIR TOKENS OUT [RUNTIME]".into()),
    };
    let bytes = std::fs::read(tokens)?;
    let ids: Vec<u32> = bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
    let rt: quantize::format::activation::ActRuntime = rt.parse()?;
    let factory = quantize::model::load::cpu_quantized_linear;
    let (m, _) = quantize::model::load::load_model_as(std::path::Path::new(model), &factory, rt)?;
    let logits = m.forward(&ids, 1, ids.len())?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(out)?);
    for v in logits {
        f.write_all(&v.to_le_bytes())?;
    }
    Ok(())
}
