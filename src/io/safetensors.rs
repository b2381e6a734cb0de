//! Memory-mapped safetensors, single file or sharded with `model.safetensors.index.json`.
//! Tensors are read lazily: nothing is copied until a caller asks for one tensor.

use crate::error::{Error, Result};
use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Bytes before the data section (8-byte length + JSON header).
    data_start: usize,
    metadata: Metadata,
}

/// All tensors of a model directory (or of one `.safetensors` file), memory-mapped.
pub struct SafetensorsStore {
    shards: Vec<Shard>,
    /// tensor name -> shard index
    index: BTreeMap<String, usize>,
}

/// A borrowed tensor: dtype, shape and its raw little-endian bytes.
pub struct RawTensor<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

impl SafetensorsStore {
    /// `path` is a directory (with `model.safetensors` or `model.safetensors.index.json`)
    /// or a single `.safetensors` file.
    pub fn open(path: &Path) -> Result<Self> {
        let files: Vec<PathBuf> = if path.is_dir() {
            let index = path.join("model.safetensors.index.json");
            let single = path.join("model.safetensors");
            if index.exists() {
                let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| Error::format(&index, format!("not valid JSON: {e}")))?;
                let map = v
                    .get("weight_map")
                    .and_then(|m| m.as_object())
                    .ok_or_else(|| Error::format(&index, "missing \"weight_map\" object"))?;
                let mut names: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
                names.sort();
                names.dedup();
                names.iter().map(|n| path.join(n)).collect()
            } else if single.exists() {
                vec![single]
            } else {
                let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(|e| Error::io(path, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                    .collect();
                found.sort();
                if found.is_empty() {
                    return Err(Error::format(
                        path,
                        "no model.safetensors, model.safetensors.index.json or *.safetensors in this directory",
                    ));
                }
                found
            }
        } else {
            vec![path.to_path_buf()]
        };
        let mut shards = Vec::with_capacity(files.len());
        let mut index = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            let shard = Self::open_shard(f)?;
            for name in shard.metadata.tensors().keys() {
                if let Some(prev) = index.insert(name.clone(), i) {
                    return Err(Error::format(f, format!("tensor {name} also appears in {}", files[prev].display())));
                }
            }
            shards.push(shard);
        }
        Ok(Self { shards, index })
    }

    fn open_shard(path: &Path) -> Result<Shard> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only map; the file is not expected to change while we read it.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| {
            let declared = mmap.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
            Error::format(
                path,
                format!(
                    "not a valid safetensors file ({e}; header length field {declared:?}, file length {})",
                    mmap.len()
                ),
            )
        })?;
        Ok(Shard { path: path.to_path_buf(), mmap, data_start: 8 + header_len, metadata })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The `__metadata__` of every shard, merged.
    pub fn user_metadata(&self) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for s in &self.shards {
            if let Some(m) = s.metadata.metadata() {
                out.extend(m.clone());
            }
        }
        out
    }

    fn info(&self, name: &str) -> Result<(&Shard, &TensorInfo)> {
        let shard = &self.shards
            [*self.index.get(name).ok_or_else(|| Error::tensor(name, "not found in the model's safetensors"))?];
        let info = shard.metadata.info(name).expect("index built from metadata");
        Ok((shard, info))
    }

    pub fn raw<'a>(&'a self, name: &'a str) -> Result<RawTensor<'a>> {
        let (shard, info) = self.info(name)?;
        let (a, b) = info.data_offsets;
        let bytes = &shard.mmap[shard.data_start + a..shard.data_start + b];
        Ok(RawTensor { name, dtype: info.dtype, shape: &info.shape, bytes })
    }

    /// File holding a tensor (for messages).
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.index.get(name).map(|&i| self.shards[i].path.as_path())
    }

    /// A floating-point tensor (F32, F16 or BF16) converted to f32, with its shape.
    pub fn f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let t = self.raw(name)?;
        Ok((bytes_to_f32(name, t.dtype, t.bytes)?, t.shape.to_vec()))
    }

    /// Like [`Self::f32`], checking the shape.
    pub fn f32_shaped(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (v, s) = self.f32(name)?;
        if s != shape {
            return Err(Error::tensor(name, format!("expected shape {shape:?}, found {s:?}")));
        }
        Ok(v)
    }
}

/// Little-endian F32/F16/BF16 bytes -> f32.
pub fn bytes_to_f32(name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f32()).collect(),
        Dtype::BF16 => {
            bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32()).collect()
        }
        other => {
            return Err(Error::tensor(
                name,
                format!("dtype {other:?} is not a float type this loader reads (F32, F16, BF16)"),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_longer_than_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.safetensors");
        let mut bytes = 1000u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        std::fs::write(&p, &bytes).unwrap();
        let e = SafetensorsStore::open(&p).err().unwrap().to_string();
        assert!(e.contains("bad.safetensors") && e.contains("1000"), "{e}");
    }

    #[test]
    fn sharded_directory_reads_all_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let a: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let b: Vec<u8> = [half::f16::from_f32(3.0)].iter().flat_map(|x| x.to_le_bytes()).collect();
        let ta = safetensors::tensor::TensorView::new(Dtype::F32, vec![2], &a).unwrap();
        let tb = safetensors::tensor::TensorView::new(Dtype::F16, vec![1], &b).unwrap();
        safetensors::serialize_to_file([("a", ta)], None, &dir.path().join("m-1.safetensors")).unwrap();
        safetensors::serialize_to_file([("b", tb)], None, &dir.path().join("m-2.safetensors")).unwrap();
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"weight_map":{"a":"m-1.safetensors","b":"m-2.safetensors"}}"#,
        )
        .unwrap();
        let s = SafetensorsStore::open(dir.path()).unwrap();
        assert_eq!(s.f32("a").unwrap().0, vec![1.0, 2.0]);
        assert_eq!(s.f32_shaped("b", &[1]).unwrap(), vec![3.0]);
        assert!(s.f32_shaped("b", &[2]).unwrap_err().to_string().contains("[2]"));
    }
}
