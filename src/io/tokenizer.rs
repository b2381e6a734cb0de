//! Tokenizer from `tokenizer.json`, through the `tokenizers` crate.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl Tokenizer {
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

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::format(&self.path, format!("decoding failed: {e}")))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Read a text file, refusing bytes that are not UTF-8 (with the offset).
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
