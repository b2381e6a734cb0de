//! GGUF v3 writer: the header (metadata, tensor infos) is laid out first from the
//! tensors' names, types and shapes, so each tensor's data can then be written at its
//! offset in any order, as the quantizer finishes it, without holding the model.
//!
//! Layout (ggml `gguf.cpp`): magic `GGUF`, version 3, tensor count (u64), metadata
//! count (u64), metadata key/values, tensor infos (name, dims innermost first, type,
//! offset from the data start), padding to `general.alignment` (32), then the data,
//! each tensor at an aligned offset. Everything little-endian.

use super::{Value, DEFAULT_ALIGNMENT};
use crate::error::{Error, Result};
use crate::format::ggml::GgmlType;
use crate::io::atomic::AtomicFile;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A tensor to write: `dims` in GGUF order (innermost first: a `[rows, cols]` matrix
/// has dims `[cols, rows]`).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub ty: GgmlType,
    pub dims: Vec<u64>,
}

impl TensorEntry {
    pub fn bytes(&self) -> Option<u64> {
        self.ty.bytes_for(self.dims.iter().product())
    }
}

/// A GGUF string: u64 length, then the bytes.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// The GGUF value type id of `v`.
pub fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

/// The bytes of `v` (its type id written by the caller; arrays carry their element type).
pub fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => {
            // An empty array is written as an array of u32 (any type reads back empty).
            out.extend(a.first().map_or(4, type_id).to_le_bytes());
            out.extend((a.len() as u64).to_le_bytes());
            for e in a {
                put_value(out, e);
            }
        }
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
    }
}

fn align(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

/// A GGUF file being written to a temporary file beside `dest`, renamed into place by
/// [`GgufWriter::finish`] once every tensor was written (dropped before: removed).
pub struct GgufWriter {
    file: File,
    tmp: AtomicFile,
    entries: Vec<TensorEntry>,
    /// Absolute file offset of each tensor's data.
    offsets: Vec<u64>,
    written: Vec<bool>,
}

impl GgufWriter {
    /// Lay out and write the header for `metadata` and `entries`; refuses an existing
    /// `dest`, duplicate names, and shapes that are not whole blocks of their type.
    pub fn create(dest: &Path, metadata: &[(String, Value)], entries: Vec<TensorEntry>) -> Result<Self> {
        let mut seen = std::collections::HashSet::new();
        for e in &entries {
            if !seen.insert(e.name.as_str()) {
                return Err(Error::tensor(&e.name, "appears twice in the GGUF tensor list".to_string()));
            }
            if e.bytes().is_none() || e.dims.is_empty() || e.dims.len() > 4 {
                return Err(Error::tensor(
                    &e.name,
                    format!(
                        "shape {:?} (innermost first) is not whole {} blocks of {}",
                        e.dims,
                        e.ty,
                        e.ty.block_size()
                    ),
                ));
            }
        }
        let mut head = Vec::new();
        head.extend(b"GGUF");
        head.extend(3u32.to_le_bytes());
        head.extend((entries.len() as u64).to_le_bytes());
        head.extend((metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut head, k);
            head.extend(type_id(v).to_le_bytes());
            put_value(&mut head, v);
        }
        let mut rel = Vec::with_capacity(entries.len());
        let mut at = 0u64;
        for e in &entries {
            rel.push(at);
            put_str(&mut head, &e.name);
            head.extend((e.dims.len() as u32).to_le_bytes());
            for d in &e.dims {
                head.extend(d.to_le_bytes());
            }
            head.extend(e.ty.id().to_le_bytes());
            head.extend(at.to_le_bytes());
            at = align(at + e.bytes().expect("checked"), DEFAULT_ALIGNMENT);
        }
        let data_start = align(head.len() as u64, DEFAULT_ALIGNMENT);
        head.resize(data_start as usize, 0);
        let tmp = AtomicFile::create(dest)?;
        let file = File::create(tmp.path()).map_err(|e| Error::io(tmp.path(), e))?;
        file.set_len(data_start + at).map_err(|e| Error::io(tmp.path(), e))?;
        file.write_all_at(&head, 0).map_err(|e| Error::io(tmp.path(), e))?;
        let offsets = rel.iter().map(|r| data_start + r).collect();
        let written = vec![false; entries.len()];
        Ok(Self { file, tmp, entries, offsets, written })
    }

    /// Write the data of tensor `name` (exactly its size in bytes).
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let i =
            self.entries.iter().position(|e| e.name == name).ok_or_else(|| {
                Error::tensor(name, "is not in the GGUF tensor list laid out for this file".to_string())
            })?;
        let want = self.entries[i].bytes().expect("checked at create");
        if data.len() as u64 != want {
            return Err(Error::tensor(
                name,
                format!(
                    "{} bytes of data, but {} {:?} takes {want}",
                    data.len(),
                    self.entries[i].ty,
                    self.entries[i].dims
                ),
            ));
        }
        if self.written[i] {
            return Err(Error::tensor(name, "written twice to the GGUF file".to_string()));
        }
        self.file.write_all_at(data, self.offsets[i]).map_err(|e| Error::io(self.tmp.path(), e))?;
        self.written[i] = true;
        Ok(())
    }

    pub fn is_written(&self, name: &str) -> bool {
        self.entries.iter().position(|e| e.name == name).is_some_and(|i| self.written[i])
    }

    /// Check that every tensor was written, sync and rename into place.
    pub fn finish(self) -> Result<PathBuf> {
        if let Some(i) = self.written.iter().position(|w| !w) {
            return Err(Error::tensor(&self.entries[i].name, "was never written to the GGUF file".to_string()));
        }
        self.file.sync_all().map_err(|e| Error::io(self.tmp.path(), e))?;
        drop(self.file);
        self.tmp.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::super::GgufFile;
    use super::*;

    #[test]
    fn written_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("t.gguf");
        let meta = vec![
            ("general.architecture".to_string(), Value::String("llama".into())),
            ("llama.block_count".to_string(), Value::U32(2)),
            ("x.f".to_string(), Value::F32(1.5)),
            ("x.flag".to_string(), Value::Bool(true)),
            ("x.tokens".to_string(), Value::Array(vec![Value::String("a".into()), Value::String("bc".into())])),
            ("x.types".to_string(), Value::Array(vec![Value::I32(1), Value::I32(3)])),
        ];
        let entries = vec![
            TensorEntry { name: "a".into(), ty: GgmlType::F32, dims: vec![3] },
            TensorEntry { name: "b".into(), ty: GgmlType::Q8_0, dims: vec![32, 2] },
        ];
        let mut w = GgufWriter::create(&dest, &meta, entries).unwrap();
        let q8: Vec<u8> = (0..68).map(|i| if i % 34 < 2 { [0x00, 0x3C][i % 34] } else { i as u8 }).collect();
        w.write_tensor("b", &q8).unwrap();
        assert!(w.write_tensor("a", &[0u8; 8]).unwrap_err().to_string().contains("8 bytes"));
        assert!(!dest.exists());
        let a: Vec<u8> = [1.0f32, -2.0, 3.5].iter().flat_map(|x| x.to_le_bytes()).collect();
        w.write_tensor("a", &a).unwrap();
        assert!(w.write_tensor("a", &a).is_err());
        w.finish().unwrap();
        let g = GgufFile::open(&dest).unwrap();
        assert_eq!(g.version(), 3);
        for (k, v) in &meta {
            assert_eq!(g.metadata(k), Some(v), "{k}");
        }
        let t = g.tensor("a").unwrap();
        assert_eq!(g.dequantize(t).unwrap(), vec![1.0, -2.0, 3.5]);
        let t = g.tensor("b").unwrap();
        assert_eq!(g.tensor_data(t), &q8[..]);
        assert_eq!((g.data_start() + t.offset) % 32, 0);
    }

    #[test]
    fn unfinished_file_is_removed_and_bad_shapes_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("t.gguf");
        let e = GgufWriter::create(
            &dest,
            &[],
            vec![TensorEntry { name: "w".into(), ty: GgmlType::Q4_K, dims: vec![576, 2] }],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("w") && e.contains("Q4_K") && e.contains("256"), "{e}");
        let w =
            GgufWriter::create(&dest, &[], vec![TensorEntry { name: "w".into(), ty: GgmlType::F32, dims: vec![4] }])
                .unwrap();
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("never written"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing left behind");
    }
}
