//! Tokenizer from `tokenizer.json`, through the `tokenizers` crate.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl Tokenizer {
    /// The tokenizer of a model: `MODEL/tokenizer.json`, or the metadata of a `.gguf` file.
    pub fn for_model(model: &Path) -> Result<Self> {
        if !is_gguf(model) {
            return Self::from_file(&model.join("tokenizer.json"));
        }
        let g = crate::io::gguf::GgufFile::open(model)?;
        let json = crate::io::tokenizer_build::GgufTokenizer::from_gguf(&g)?.tokenizer_json().to_string();
        let inner = json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| Error::format(model, format!("cannot load its tokenizer: {e}")))?;
        Ok(Self { inner, path: model.to_path_buf() })
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::format(
                path,
                "tokenizer.json not found (a model directory needs one; `quantize convert` writes it)",
            ));
        }
        let text = read_text(path)?;
        // Malformed JSON gets serde_json's line and column.
        serde_json::from_str::<serde::de::IgnoredAny>(&text)
            .map_err(|e| Error::format(path, format!("tokenizer.json is not valid JSON: {e}")))?;
        // tokenizers panics on some ill-typed documents (a bad `decoder` hits an
        // `expect("Helper")`): the panic is caught at this boundary and reported.
        let parsed = quietly_catch_unwind(|| text.parse::<tokenizers::Tokenizer>());
        let inner = match parsed {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(Error::format(path, format!("cannot load tokenizer: {e}"))),
            Err(why) => {
                return Err(Error::format(path, format!("cannot load tokenizer: the tokenizers crate failed ({why})")))
            }
        };
        Ok(Self { inner, path: path.to_path_buf() })
    }

    /// Token ids of `text`, without special tokens added (the model's BOS policy is the
    /// caller's: SmolLM2 adds none).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc =
            self.inner.encode(text, false).map_err(|e| Error::format(&self.path, format!("encoding failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a long `text`, identical to [`Tokenizer::encode`] but in bounded memory:
    /// the tokenizers crate keeps ~600 bytes per token of a whole-text encoding (strings,
    /// offsets, alignments), 0.8 GB for the 5.5 MB Brown calibration text. The text is cut
    /// into pieces of [`PIECE_BYTES`] at line ends, each encoded with [`OVERLAP_BYTES`] of
    /// the next; consecutive pieces are joined where both agree on [`SYNC_TOKENS`] tokens
    /// in a row (ids and positions), far from the first piece's cut end. From such a point
    /// a pre-tokenizer's scan is the same whichever piece it started in, so the join gives
    /// the whole-text tokens; where no agreement is found the text is encoded whole.
    pub fn encode_long(&self, text: &str) -> Result<Vec<u32>> {
        match self.encode_in_pieces(text)? {
            Some(ids) => Ok(ids),
            None => self.encode(text),
        }
    }

    /// The pieces of [`Tokenizer::encode_long`] joined, or `None` where two pieces never
    /// agree (or the text is one piece).
    pub fn encode_in_pieces(&self, text: &str) -> Result<Option<Vec<u32>>> {
        if text.len() <= 2 * PIECE_BYTES {
            return Ok(None);
        }
        let cuts = piece_cuts(text);
        let encode_at = |i: usize| -> Result<(Vec<u32>, Vec<usize>)> {
            let (a, end) = (cuts[i], cuts.get(i + 1).map_or(text.len(), |&b| extend(text, b)));
            let enc = self
                .inner
                .encode(&text[a..end], false)
                .map_err(|e| Error::format(&self.path, format!("encoding failed: {e}")))?;
            Ok((enc.get_ids().to_vec(), enc.get_offsets().iter().map(|o| a + o.0).collect()))
        };
        let mut out = Vec::new();
        let mut cur = encode_at(0)?;
        let mut from = 0usize; // the current piece's tokens are emitted from this index
        for i in 1..cuts.len() {
            let next = encode_at(i)?;
            let limit = extend(text, cuts[i]).saturating_sub(SYNC_MARGIN_BYTES);
            let Some((here, there)) = join_point(&cur, &next, cuts[i], limit) else {
                return Ok(None);
            };
            out.extend_from_slice(&cur.0[from..here]);
            cur = next;
            from = there;
        }
        out.extend_from_slice(&cur.0[from..]);
        Ok(Some(out))
    }

    /// Token ids of a prompt as `tokenizer(text)` gives them in transformers: with the
    /// special tokens the tokenizer's post-processor adds (Llama 3's BOS; SmolLM2 adds none).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let enc =
            self.inner.encode(text, true).map_err(|e| Error::format(&self.path, format!("encoding failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of generated tokens as they come: each step returns what the new token
    /// completes (nothing while a multi-byte character is unfinished); special tokens skipped.
    pub fn text_stream(&self) -> TextStream<'_> {
        TextStream { inner: self.inner.decode_stream(true), path: &self.path }
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::format(&self.path, format!("decoding failed: {e}")))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Incremental decoding of generated tokens ([`Tokenizer::text_stream`]).
pub struct TextStream<'a> {
    inner: tokenizers::DecodeStream<
        'a,
        tokenizers::ModelWrapper,
        tokenizers::NormalizerWrapper,
        tokenizers::PreTokenizerWrapper,
        tokenizers::PostProcessorWrapper,
        tokenizers::DecoderWrapper,
    >,
    path: &'a Path,
}

impl TextStream<'_> {
    /// The text `id` adds, if any yet.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.inner.step(id).map_err(|e| Error::format(self.path, format!("decoding token {id} failed: {e}")))
    }
}

/// Bytes of text per piece of [`Tokenizer::encode_long`].
pub const PIECE_BYTES: usize = 1 << 16;
/// Bytes of the next piece each piece is encoded with.
pub const OVERLAP_BYTES: usize = 1 << 12;
/// A join point is at least this far before a piece's cut end (beyond any look-ahead).
const SYNC_MARGIN_BYTES: usize = 1 << 10;
/// Consecutive agreeing tokens that make a join point.
const SYNC_TOKENS: usize = 8;

/// Piece starts: 0, then about every [`PIECE_BYTES`], just after a line end when there is one.
fn piece_cuts(text: &str) -> Vec<usize> {
    let mut cuts = vec![0];
    let mut at = 0;
    while text.len() - at > PIECE_BYTES + OVERLAP_BYTES {
        let mut c = at + PIECE_BYTES;
        while !text.is_char_boundary(c) {
            c += 1;
        }
        let back = text[at + PIECE_BYTES / 2..c].rfind('\n').map(|k| at + PIECE_BYTES / 2 + k + 1);
        at = back.unwrap_or(c);
        cuts.push(at);
    }
    cuts
}

/// End of the piece that the next piece starts at `cut`: `OVERLAP_BYTES` further.
fn extend(text: &str, cut: usize) -> usize {
    let mut e = (cut + OVERLAP_BYTES).min(text.len());
    while !text.is_char_boundary(e) {
        e += 1;
    }
    e
}

/// Where piece `a` (ids, absolute token starts) hands over to piece `b`: the first token
/// index pair `(i, j)` with `a`'s token `i` and `b`'s token `j` at the same position
/// `p ≥ cut`, `p < limit`, and [`SYNC_TOKENS`] tokens agreeing from there.
fn join_point(
    a: &(Vec<u32>, Vec<usize>),
    b: &(Vec<u32>, Vec<usize>),
    cut: usize,
    limit: usize,
) -> Option<(usize, usize)> {
    let (ia, pa) = a;
    let (ib, pb) = b;
    let mut j = 0;
    for i in 0..ia.len() {
        let p = pa[i];
        if p < cut || (i > 0 && pa[i - 1] == p) {
            continue;
        }
        if p >= limit {
            return None;
        }
        while j < ib.len() && pb[j] < p {
            j += 1;
        }
        if j >= ib.len() {
            return None;
        }
        let agree = (0..SYNC_TOKENS).all(|k| {
            i + k < ia.len()
                && j + k < ib.len()
                && ia[i + k] == ib[j + k]
                && pa[i + k] == pb[j + k]
                && pa[i + k] < limit
        });
        if pb[j] == p && (j == 0 || pb[j - 1] != p) && agree {
            return Some((i, j));
        }
    }
    None
}

/// Read a text file, refusing bytes that are not UTF-8 (with the offset).
/// Whether `path` names a GGUF file (by its extension, as llama.cpp's tools take them).
pub fn is_gguf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) && path.is_file()
}

pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        Error::format(
            path,
            format!("text is not valid UTF-8 (first bad byte at offset {})", e.utf8_error().valid_up_to()),
        )
    })
}

/// Run `f`, turning a panic into its message, without the default hook's stderr report.
fn quietly_catch_unwind<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15.2: the bytes that made tokenizers panic, and a well-formed document
    /// whose decoder has the wrong type, are errors naming the file.
    #[test]
    fn malformed_tokenizer_json_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        for (i, doc) in [
            r#"{"decoder":@"#,
            r#"{"decoder":{"type":7}}"#,
            r#"{"decoder":{"type":"ByteLevel","add_prefix_space":"x"}}"#,
        ]
        .iter()
        .enumerate()
        {
            let p = dir.path().join(format!("tokenizer{i}.json"));
            std::fs::write(&p, doc).unwrap();
            let e = Tokenizer::from_file(&p).err().expect("must fail").to_string();
            assert!(e.contains(&format!("tokenizer{i}.json")) && e.contains("tokenizer"), "{e}");
        }
    }
}
