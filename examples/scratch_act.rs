use std::io::Write;
fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let (m, _) = quantize::model::load::load_model(std::path::Path::new(&dir)).unwrap();
    let bytes = std::fs::read("/tmp/io/tokens.bin").unwrap();
    let ids: Vec<u32> = bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
    let seq = ids.len();
    let rope = m.config.rope_tables(seq);
    let mut x = m.embed_tokens(&ids).unwrap();
    let mut f = std::fs::File::create("/tmp/io/hidden.bin").unwrap();
    for v in &x {
        f.write_all(&v.to_le_bytes()).unwrap();
    }
    for b in &m.blocks {
        b.forward(&m.config, &rope, &mut x, 1, seq, None).unwrap();
        for v in &x {
            f.write_all(&v.to_le_bytes()).unwrap();
        }
    }
}
