//! Memory-mapped safetensors, single file or sharded with `model.safetensors.index.json`.
//! Tensors are read lazily: nothing is copied until a caller asks for one tensor.
//!
//! [`write_file`] is the one safetensors writer of the tool (checkpoints, converted models,
//! calibration statistics): deterministic bytes (metadata keys sorted; no `HashMap` order,
//! unlike the crate's serializer), the tensors' data in the order given.

use crate::error::{Error, Result};
use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct Shard {
    path: PathBuf,
    /// Shared with the [`MappedTensor`]s handed out, which outlive the store.
    mmap: Arc<Mmap>,
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
        // tensor -> shard file, as `model.safetensors.index.json` declares it.
        let mut weight_map: Vec<(String, String)> = Vec::new();
        let index_path = path.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if path.is_dir() {
            let single = path.join("model.safetensors");
            if index_path.exists() {
                let index = &index_path;
                let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| Error::format(index, format!("not valid JSON: {e}")))?;
                let map = v
                    .get("weight_map")
                    .and_then(|m| m.as_object())
                    .ok_or_else(|| Error::format(index, "missing \"weight_map\" object"))?;
                for (tensor, file) in map {
                    let f = file.as_str().filter(|f| {
                        let p = Path::new(f);
                        p.components().count() == 1
                            && matches!(p.components().next(), Some(std::path::Component::Normal(_)))
                    });
                    let Some(f) = f else {
                        return Err(Error::format(
                            index,
                            format!("weight_map[{tensor:?}] = {file} is not a file name in this directory"),
                        ));
                    };
                    weight_map.push((tensor.clone(), f.to_string()));
                }
                let mut names: Vec<&str> = weight_map.iter().map(|(_, f)| f.as_str()).collect();
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
        for (tensor, file) in &weight_map {
            let actual = index.get(tensor).map(|&i| &files[i]);
            if actual != Some(&path.join(file)) {
                let found = actual.map_or("in no shard".to_string(), |p| format!("in {}", p.display()));
                return Err(Error::format(
                    &index_path,
                    format!("weight_map puts {tensor} in {file}, but it is {found}"),
                ));
            }
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
        Ok(Shard { path: path.to_path_buf(), mmap: Arc::new(mmap), data_start: 8 + header_len, metadata })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The store's own copy of tensor name `name` (for borrows that outlive the argument).
    pub fn key(&self, name: &str) -> Option<&str> {
        self.index.get_key_value(name).map(|(k, _)| k.as_str())
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

    /// A float tensor (F32, F16, BF16) left in the memory-mapped file: it holds no copy, and
    /// its pages are read (and may be dropped again by the OS) as rows are used.
    pub fn mapped(&self, name: &str, shape: [usize; 2]) -> Result<MappedTensor> {
        let (shard, info) = self.info(name)?;
        if info.shape != shape {
            return Err(Error::tensor(name, format!("expected shape {shape:?}, found {:?}", info.shape)));
        }
        check_float(name, info.dtype)?;
        let (a, b) = info.data_offsets;
        Ok(MappedTensor {
            map: Arc::clone(&shard.mmap),
            start: shard.data_start + a,
            end: shard.data_start + b,
            dtype: info.dtype,
            shape,
        })
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

/// A 2-D float tensor inside a memory-mapped safetensors file ([`SafetensorsStore::mapped`]).
#[derive(Clone)]
pub struct MappedTensor {
    map: Arc<Mmap>,
    start: usize,
    end: usize,
    pub dtype: Dtype,
    /// `[rows, cols]`
    pub shape: [usize; 2],
}

impl MappedTensor {
    /// The tensor's little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.end]
    }

    /// The values themselves when the file stores aligned f32 (no copy needed).
    pub fn as_f32(&self) -> Option<&[f32]> {
        if self.dtype != Dtype::F32 {
            return None;
        }
        // SAFETY: any 4 bytes are a valid f32; `align_to` gives a middle slice only at
        // 4-byte-aligned addresses, and we take it only when nothing is left over.
        let (head, mid, tail) = unsafe { self.bytes().align_to::<f32>() };
        (head.is_empty() && tail.is_empty() && cfg!(target_endian = "little")).then_some(mid)
    }

    /// Rows `r0 ..` converted to f32 into `out` (`out.len() / cols` rows).
    pub fn rows_into(&self, r0: usize, out: &mut [f32]) {
        let e = self.dtype.bitsize() / 8;
        let start = r0 * self.shape[1] * e;
        floats_into(self.dtype, &self.bytes()[start..start + out.len() * e], out);
    }
}

/// Little-endian F32/F16/BF16 `bytes` -> `out` (one value per element; other dtypes are
/// refused before, where the tensor is named).
fn floats_into(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        Dtype::F32 => {
            out.iter_mut().zip(bytes.chunks_exact(4)).for_each(|(o, b)| *o = f32::from_le_bytes(b.try_into().unwrap()))
        }
        Dtype::F16 => out
            .iter_mut()
            .zip(bytes.chunks_exact(2))
            .for_each(|(o, b)| *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        _ => out
            .iter_mut()
            .zip(bytes.chunks_exact(2))
            .for_each(|(o, b)| *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
    }
}

/// Little-endian F32/F16/BF16 bytes -> f32.
pub fn bytes_to_f32(name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    check_float(name, dtype)?;
    let mut out = vec![0.0f32; bytes.len() * 8 / dtype.bitsize()];
    floats_into(dtype, bytes, &mut out);
    Ok(out)
}

/// F32, F16 and BF16 are the float types the loaders read; anything else names the tensor.
fn check_float(name: &str, dtype: Dtype) -> Result<()> {
    match dtype {
        Dtype::F32 | Dtype::F16 | Dtype::BF16 => Ok(()),
        other => {
            Err(Error::tensor(name, format!("dtype {other:?} is not a float type this loader reads (F32, F16, BF16)")))
        }
    }
}

/// Readers refuse larger headers (the safetensors crate's limit).
const MAX_HEADER_BYTES: usize = 100_000_000;

/// How [`write_file`] orders the keys of the JSON header. The data section always holds
/// the tensors in the order given; the header is compact JSON, padded with spaces to a
/// multiple of 8 bytes (so the data starts aligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderLayout {
    /// Every key sorted bytewise (`__metadata__` sorts among the tensor names), each
    /// tensor's fields as `data_offsets, dtype, shape`: quantized checkpoints and
    /// calibration statistics.
    Sorted,
    /// The safetensors crate's own layout: `__metadata__` first, then the tensors in data
    /// order with fields `dtype, shape, data_offsets`: converted models.
    DataOrder,
}

/// Sort tensors as the safetensors crate orders them: dtype alignment descending, then
/// name (every tensor then starts aligned to its element size).
pub fn sort_crate_order(tensors: &mut [RawTensor<'_>]) {
    tensors.sort_by(|l, r| r.dtype.cmp(&l.dtype).then(l.name.cmp(r.name)));
}

#[derive(serde::Serialize)]
struct SortedInfo<'a> {
    data_offsets: [usize; 2],
    dtype: Dtype,
    shape: &'a [usize],
}

#[derive(serde::Serialize)]
struct DataOrderInfo<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    data_offsets: [usize; 2],
}

fn json<T: serde::Serialize + ?Sized>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("strings, numbers and string maps serialize")
}

/// The header of [`write_file`] (padded); errors name the tensor that cannot be stored.
pub fn header_bytes(
    tensors: &[RawTensor<'_>],
    meta: &BTreeMap<String, String>,
    layout: HeaderLayout,
) -> Result<Vec<u8>> {
    // (key, value) in header order; a JSON object is `{k:v,k:v}` in compact form.
    let mut entries: Vec<(&str, Vec<u8>)> = Vec::with_capacity(tensors.len() + 1);
    if !meta.is_empty() {
        entries.push(("__metadata__", json(meta)));
    }
    let mut offset = 0usize;
    for t in tensors {
        let elems = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if elems.and_then(|n| n.checked_mul(t.dtype.bitsize())) != t.bytes.len().checked_mul(8) {
            return Err(Error::tensor(
                t.name,
                format!("{} bytes for {:?} {:?}: not one element per stored value", t.bytes.len(), t.dtype, t.shape),
            ));
        }
        let data_offsets = [offset, offset + t.bytes.len()];
        offset += t.bytes.len();
        let info = match layout {
            HeaderLayout::Sorted => json(&SortedInfo { data_offsets, dtype: t.dtype, shape: t.shape }),
            HeaderLayout::DataOrder => json(&DataOrderInfo { dtype: t.dtype, shape: t.shape, data_offsets }),
        };
        entries.push((t.name, info));
    }
    let mut names: Vec<&str> = tensors.iter().map(|t| t.name).chain(["__metadata__"]).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::tensor(w[0], "appears twice among the tensors to write (or is the metadata key)"));
    }
    if layout == HeaderLayout::Sorted {
        entries.sort_by(|a, b| a.0.cmp(b.0));
    }
    let mut h = vec![b'{'];
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            h.push(b',');
        }
        h.extend(json(*k));
        h.push(b':');
        h.extend(v);
    }
    h.push(b'}');
    h.resize(h.len().next_multiple_of(8), b' ');
    Ok(h)
}

/// Write one safetensors file at `path`: u64 header length, the header
/// ([`HeaderLayout`]; `__metadata__` = `meta`, left out when empty), then the tensors'
/// bytes in the given order. Callers write into an [`super::atomic::AtomicDir`] or
/// [`super::atomic::AtomicFile`], so a failure leaves nothing behind.
pub fn write_file(
    path: &Path,
    tensors: &[RawTensor<'_>],
    meta: &BTreeMap<String, String>,
    layout: HeaderLayout,
) -> Result<()> {
    use std::io::Write;
    let h = header_bytes(tensors, meta, layout)?;
    if h.len() > MAX_HEADER_BYTES {
        return Err(Error::format(path, format!("safetensors header of {} bytes exceeds {MAX_HEADER_BYTES}", h.len())));
    }
    let io = |e| Error::io(path, e);
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&h).map_err(io)?;
    for t in tensors {
        w.write_all(t.bytes).map_err(io)?;
    }
    w.flush().map_err(io)
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

        // Issue 15.10: an index naming a missing tensor, the wrong shard, or a path
        // outside the directory is an error naming the tensor and the files.
        let index = dir.path().join("model.safetensors.index.json");
        for (map, needles) in [
            (
                r#"{"a":"m-1.safetensors","b":"m-2.safetensors","c":"m-2.safetensors"}"#,
                &["puts c in m-2.safetensors", "in no shard"][..],
            ),
            (r#"{"a":"m-2.safetensors","b":"m-1.safetensors"}"#, &["puts a in m-2.safetensors", "m-1.safetensors"][..]),
            (r#"{"a":"../m-1.safetensors","b":"m-2.safetensors"}"#, &["weight_map[\"a\"]", "not a file name"][..]),
            (r#"{"a":"m-1.safetensors","b":7}"#, &["weight_map[\"b\"] = 7"][..]),
        ] {
            std::fs::write(&index, format!(r#"{{"weight_map":{map}}}"#)).unwrap();
            let e = SafetensorsStore::open(dir.path()).err().expect("must fail").to_string();
            assert!(e.contains("model.safetensors.index.json"), "{e}");
            for n in needles {
                assert!(e.contains(n), "{e} lacks {n}");
            }
        }
    }

    fn sample() -> Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)> {
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        vec![
            ("model.b", Dtype::F32, vec![2], f32s(&[1.0, 2.0])),
            ("model.a", Dtype::I8, vec![3], vec![1, 2, 3]),
            ("lm_head.x", Dtype::I64, vec![1], 7i64.to_le_bytes().to_vec()),
            ("model.c", Dtype::F32, vec![1, 1], f32s(&[3.0])),
            ("Upper", Dtype::U8, vec![0], vec![]),
        ]
    }

    fn views<'a>(t: &'a [(&'static str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<RawTensor<'a>> {
        t.iter().map(|(name, dtype, shape, bytes)| RawTensor { name, dtype: *dtype, shape, bytes }).collect()
    }

    #[test]
    fn data_order_layout_is_the_crate_serializer() {
        // The crate's bytes are deterministic with at most one metadata key (it iterates a
        // HashMap); ours equal them then, and sort the keys otherwise.
        let dir = tempfile::tempdir().unwrap();
        let sample = sample();
        for meta in [BTreeMap::new(), BTreeMap::from([("format".to_string(), "pt".to_string())])] {
            let mut ours = views(&sample);
            sort_crate_order(&mut ours);
            let p = dir.path().join("ours.safetensors");
            write_file(&p, &ours, &meta, HeaderLayout::DataOrder).unwrap();
            let crate_views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = sample
                .iter()
                .map(|(n, d, s, b)| (*n, safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
                .collect();
            let hm = (!meta.is_empty()).then(|| meta.clone().into_iter().collect());
            let theirs = safetensors::serialize(crate_views, hm).unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), theirs, "meta {meta:?}");
            std::fs::remove_file(&p).unwrap();
        }
        let meta = BTreeMap::from([("b".to_string(), "2".to_string()), ("a".to_string(), "1".to_string())]);
        let h = header_bytes(&views(&sample[..1]), &meta, HeaderLayout::DataOrder).unwrap();
        let want = r#"{"__metadata__":{"a":"1","b":"2"},"model.b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        assert_eq!(String::from_utf8(h).unwrap(), format!("{want:<96}"));
    }

    #[test]
    fn sorted_layout_bytes_are_pinned_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let sample = sample();
        let mut t = views(&sample);
        sort_crate_order(&mut t);
        let order: Vec<&str> = t.iter().map(|t| t.name).collect();
        assert_eq!(order, ["lm_head.x", "model.b", "model.c", "model.a", "Upper"], "dtype descending, then name");
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string()), ("a".to_string(), "x".to_string())]);
        let p = dir.path().join("s.safetensors");
        write_file(&p, &t, &meta, HeaderLayout::Sorted).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let want = concat!(
            r#"{"Upper":{"data_offsets":[23,23],"dtype":"U8","shape":[0]},"#,
            r#""__metadata__":{"a":"x","format":"pt"},"#,
            r#""lm_head.x":{"data_offsets":[0,8],"dtype":"I64","shape":[1]},"#,
            r#""model.a":{"data_offsets":[20,23],"dtype":"I8","shape":[3]},"#,
            r#""model.b":{"data_offsets":[8,16],"dtype":"F32","shape":[2]},"#,
            r#""model.c":{"data_offsets":[16,20],"dtype":"F32","shape":[1,1]}}"#,
        );
        let n = want.len().next_multiple_of(8);
        assert_eq!(bytes[..8], (n as u64).to_le_bytes());
        assert_eq!(std::str::from_utf8(&bytes[8..8 + n]).unwrap(), format!("{want:<n$}"));
        assert_eq!(bytes.len(), 8 + n + 23);
        let s = SafetensorsStore::open(&p).unwrap();
        assert_eq!(s.f32("model.b").unwrap().0, vec![1.0, 2.0]);
        assert_eq!(s.raw("model.a").unwrap().bytes, [1, 2, 3]);
        assert_eq!(s.user_metadata().get("format").map(String::as_str), Some("pt"));
    }

    #[test]
    fn malformed_tensors_are_refused_by_name() {
        let bytes = [0u8; 6];
        let bad = [RawTensor { name: "w", dtype: Dtype::F32, shape: &[2], bytes: &bytes }];
        let e = header_bytes(&bad, &BTreeMap::new(), HeaderLayout::Sorted).unwrap_err().to_string();
        assert!(e.contains("tensor w") && e.contains("6 bytes"), "{e}");
        let twice = [
            RawTensor { name: "w", dtype: Dtype::U8, shape: &[1], bytes: &bytes[..1] },
            RawTensor { name: "w", dtype: Dtype::U8, shape: &[1], bytes: &bytes[..1] },
        ];
        let e = header_bytes(&twice, &BTreeMap::new(), HeaderLayout::DataOrder).unwrap_err().to_string();
        assert!(e.contains("tensor w") && e.contains("twice"), "{e}");
        let meta_name = [RawTensor { name: "__metadata__", dtype: Dtype::U8, shape: &[1], bytes: &bytes[..1] }];
        assert!(header_bytes(&meta_name, &BTreeMap::new(), HeaderLayout::Sorted).is_err());
    }
}
