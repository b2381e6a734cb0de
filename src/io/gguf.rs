//! GGUF reader (versions 2 and 3, little-endian), memory-mapped.
//!
//! Layout (ggml `docs/gguf.md`): magic `GGUF`, `version: u32`, `tensor_count: u64`,
//! `metadata_kv_count: u64`, the key/value pairs (`key: string`, `type: u32`, value),
//! the tensor infos (`name: string`, `n_dims: u32`, `dims: [u64; n_dims]` innermost
//! first, `type: u32`, `offset: u64` relative to the data section), padding to
//! `general.alignment` (default 32), then the data section. A string is a `u64`
//! length and that many UTF-8 bytes (no terminator).
//!
//! Every length, count and offset is checked against the file size before use, so
//! a damaged file gives an error naming the file, the key or tensor, and the values.

use crate::error::{Error, Result};
use crate::format::ggml::{self, GgmlType};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const MAGIC: [u8; 4] = *b"GGUF";
/// `general.alignment` when the key is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Arrays nested deeper than this are rejected (bounds the parser's recursion).
const MAX_NESTING: usize = 8;

mod value;
pub mod writer;
pub use value::Value;

/// One tensor's description. Only [`GgufFile::open`] makes these, after checking
/// that the data lies inside the file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF dims, innermost (contiguous) first: `blk.0.attn_k.weight` = `[576, 192]`.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the data relative to the data section.
    pub offset: u64,
    start: usize,
    len: usize,
}

impl TensorInfo {
    /// Row-major (Hugging Face / PyTorch) shape: the dims reversed, e.g. `[192, 576]`.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
    /// Bytes of data in the file.
    pub fn n_bytes(&self) -> usize {
        self.len
    }
}

/// An open, validated GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    version: u32,
    alignment: u64,
    data_start: u64,
    metadata: Vec<(String, Value)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

/// Little-endian cursor over the mapped bytes; every read is bounds-checked.
struct Reader<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, msg: String) -> Error {
        Error::format(self.path, msg)
    }
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            return Err(self.err(format!(
                "truncated file: {} needs {n} bytes at offset {}, but the file is {} bytes",
                what(),
                self.pos,
                self.buf.len()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn fixed<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64, what)?);
        Ok(a)
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.fixed(what).map(u32::from_le_bytes)
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.fixed(what).map(u64::from_le_bytes)
    }
    fn left(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }
    /// Reject a count whose items (each at least `min_bytes`) cannot fit in the rest
    /// of the file, before allocating anything for them.
    fn check_count(&self, count: u64, min_bytes: u64, what: &dyn Fn() -> String) -> Result<()> {
        if count.saturating_mul(min_bytes) > self.left() {
            return Err(self.err(format!(
                "{} = {count} is impossible: {count} items of at least {min_bytes} bytes do not fit in the {} bytes left after offset {} (corrupt count or truncated file)",
                what(),
                self.left(),
                self.pos
            )));
        }
        Ok(())
    }
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let n = self.u64(&|| format!("length of {}", what()))?;
        if n > self.left() {
            return Err(self.err(format!(
                "{}: string length {n} at offset {} runs past the end of the file ({} bytes)",
                what(),
                self.pos - 8,
                self.buf.len()
            )));
        }
        Ok(String::from_utf8_lossy(self.take(n, what)?).into_owned())
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        let w = || format!("value of {key}");
        Ok(match ty {
            0 => Value::U8(self.fixed::<1>(&w)?[0]),
            1 => Value::I8(self.fixed::<1>(&w)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.fixed(&w)?)),
            3 => Value::I16(i16::from_le_bytes(self.fixed(&w)?)),
            4 => Value::U32(u32::from_le_bytes(self.fixed(&w)?)),
            5 => Value::I32(i32::from_le_bytes(self.fixed(&w)?)),
            6 => Value::F32(f32::from_le_bytes(self.fixed(&w)?)),
            7 => match self.fixed::<1>(&w)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("{key}: bool value {b} is neither 0 nor 1"))),
            },
            8 => Value::String(self.string(&w)?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(self.err(format!("{key}: arrays nested deeper than {MAX_NESTING} levels")));
                }
                let ety = self.u32(&|| format!("array element type of {key}"))?;
                let n = self.u64(&|| format!("array length of {key}"))?;
                let min = match ety {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => return Err(self.err(format!("{key}: unknown array element type {ety}"))),
                };
                self.check_count(n, min, &|| format!("array length of {key}"))?;
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(ety, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(u64::from_le_bytes(self.fixed(&w)?)),
            11 => Value::I64(i64::from_le_bytes(self.fixed(&w)?)),
            12 => Value::F64(f64::from_le_bytes(self.fixed(&w)?)),
            _ => return Err(self.err(format!("{key}: unknown metadata value type {ty} (known: 0..=12)"))),
        })
    }
}

impl GgufFile {
    /// Open, map and validate a GGUF file (header, metadata, tensor infos and that
    /// every tensor's data lies inside the file). Tensor data is read lazily.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len < 24 {
            return Err(Error::format(&path, format!("truncated file: {len} bytes, a GGUF header needs 24")));
        }
        // SAFETY: the map is read-only; like every mmap reader we assume nobody
        // truncates the file while it is open.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let parsed = parse(&path, &mmap)?;
        let meta_index = parsed.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let tensor_index = parsed.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(Self {
            path,
            mmap,
            version: parsed.version,
            alignment: parsed.alignment,
            data_start: parsed.data_start,
            metadata: parsed.metadata,
            meta_index,
            tensors: parsed.tensors,
            tensor_index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// Absolute file offset of the data section.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }
    /// File size in bytes.
    pub fn file_len(&self) -> u64 {
        self.mmap.len() as u64
    }

    /// All metadata, in file order.
    pub fn metadata_entries(&self) -> &[(String, Value)] {
        &self.metadata
    }
    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn typed<'a, T>(&'a self, key: &str, want: &str, f: impl Fn(&'a Value) -> Option<T>) -> Result<T> {
        let v =
            self.metadata(key).ok_or_else(|| Error::format(&self.path, format!("metadata key {key} is missing")))?;
        f(v).ok_or_else(|| {
            Error::format(&self.path, format!("metadata key {key} is a {}, expected {want}", v.type_name()))
        })
    }
    /// A required non-negative integer (any integer type).
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.typed(key, "a non-negative integer", Value::as_u64)
    }
    /// A required number (float or integer).
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.typed(key, "a number", Value::as_f64)
    }
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.typed(key, "a bool", Value::as_bool)
    }
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.typed(key, "a string", Value::as_str)
    }
    pub fn get_array(&self, key: &str) -> Result<&[Value]> {
        self.typed(key, "an array", Value::as_array)
    }
    /// A required array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        let a = self.get_array(key)?;
        a.iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().ok_or_else(|| {
                    Error::format(&self.path, format!("metadata {key}[{i}] is a {}, expected a string", v.type_name()))
                })
            })
            .collect()
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
    /// The raw bytes of a tensor of this file (empty for an info from another file).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        self.mmap.get(t.start..t.start + t.len).unwrap_or(&[])
    }
    /// Dequantize to f32, row-major in [`TensorInfo::shape`] order.
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let data = self.tensor_data(t);
        if data.len() != t.len {
            return Err(Error::tensor(&t.name, format!("tensor info does not belong to {}", self.path.display())));
        }
        ggml::dequantize(t.ggml_type, data, t.n_elements())
            .map_err(|e| Error::tensor(&t.name, format!("{}: {e}", self.path.display())))
    }
}

struct Parsed {
    version: u32,
    alignment: u64,
    data_start: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
}

fn parse(path: &Path, buf: &[u8]) -> Result<Parsed> {
    let mut r = Reader { path, buf, pos: 0 };
    let magic: [u8; 4] = r.fixed(&|| "magic".into())?;
    if magic != MAGIC {
        return Err(Error::format(
            path,
            format!(
                "bad magic 0x{:08x} ({:?}); a GGUF file starts with 0x{:08x} (\"GGUF\")",
                u32::from_le_bytes(magic),
                String::from_utf8_lossy(&magic),
                u32::from_le_bytes(MAGIC)
            ),
        ));
    }
    let version = r.u32(&|| "version".into())?;
    match version {
        2 | 3 => {}
        v if v.swap_bytes() <= 3 && v.swap_bytes() > 0 => {
            return Err(Error::format(path, format!("big-endian GGUF (version 0x{v:08x}) is not supported")))
        }
        1 => return Err(Error::format(path, "unsupported GGUF version 1 (32-bit counts); supported: 2 and 3")),
        v => return Err(Error::format(path, format!("unsupported GGUF version {v}; supported: 2 and 3"))),
    }
    let n_tensors = r.u64(&|| "tensor count".into())?;
    let n_kv = r.u64(&|| "metadata count".into())?;
    // A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes;
    // a tensor info at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
    r.check_count(n_kv, 13, &|| "metadata count".into())?;
    r.check_count(n_tensors, 24, &|| "tensor count".into())?;

    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut seen = HashMap::new();
    for i in 0..n_kv {
        let key = r.string(&|| format!("key of metadata entry {i}"))?;
        let ty = r.u32(&|| format!("value type of {key}"))?;
        let value = r.value(ty, &key, 0)?;
        if seen.insert(key.clone(), ()).is_some() {
            return Err(Error::format(path, format!("duplicate metadata key {key}")));
        }
        metadata.push((key, value));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if a.is_power_of_two() => *a as u64,
        Some((_, v)) => {
            return Err(Error::format(path, format!("general.alignment must be a power-of-two u32, got {v:?}")));
        }
    };

    let mut infos = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = r.string(&|| format!("name of tensor {i}"))?;
        let n_dims = r.u32(&|| format!("n_dims of tensor {name}"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(Error::format(path, format!("tensor {name}: n_dims = {n_dims}, expected 1..={MAX_DIMS}")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(r.u64(&|| format!("dim {d} of tensor {name}"))?);
        }
        let type_id = r.u32(&|| format!("type of tensor {name}"))?;
        let ggml_type = GgmlType::from_id(type_id)
            .ok_or_else(|| Error::format(path, format!("tensor {name}: unknown GGML tensor type id {type_id}")))?;
        let offset = r.u64(&|| format!("offset of tensor {name}"))?;
        infos.push((name, dims, ggml_type, offset));
    }
    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;

    let mut tensors = Vec::with_capacity(infos.len());
    let mut names = HashMap::new();
    for (name, dims, ggml_type, offset) in infos {
        let bad = |msg: String| Error::format(path, format!("tensor {name}: {msg}"));
        let n = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= isize::MAX as u64 / 4)
            .ok_or_else(|| bad(format!("dims {dims:?} overflow the element count")))?;
        if dims[0] % ggml_type.block_size() as u64 != 0 {
            return Err(bad(format!(
                "row length {} is not a multiple of the {ggml_type} block size {}",
                dims[0],
                ggml_type.block_size()
            )));
        }
        let size = ggml_type.bytes_for(n).ok_or_else(|| bad(format!("{n} elements of {ggml_type} overflow")))?;
        if offset % alignment != 0 {
            return Err(bad(format!("data offset {offset} is not a multiple of the alignment {alignment}")));
        }
        let end = data_start.checked_add(offset).and_then(|s| s.checked_add(size));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(bad(format!(
                    "data (offset {offset} + {size} bytes, {ggml_type} {dims:?}) runs past the end of the file: \
                     data section starts at {data_start}, file is {file_len} bytes (truncated file?)"
                )))
            }
        }
        if names.insert(name.clone(), ()).is_some() {
            return Err(bad("duplicate tensor name".into()));
        }
        let (start, len) = ((data_start + offset) as usize, size as usize);
        tensors.push(TensorInfo { name, dims, ggml_type, offset, start, len });
    }
    Ok(Parsed { version, alignment, data_start, metadata, tensors })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Vec<u8> {
        let mut v = (x.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(x.as_bytes());
        v
    }

    /// Header + one kv + one F32 tensor of 2 elements.
    fn tiny() -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(s("general.name"));
        b.extend(8u32.to_le_bytes());
        b.extend(s("tiny"));
        b.extend(s("w"));
        b.extend(1u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.resize(b.len().div_ceil(32) * 32, 0);
        b.extend(1.5f32.to_le_bytes());
        b.extend((-2f32).to_le_bytes());
        b
    }

    #[test]
    fn reads_tiny_file_and_every_prefix_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.gguf");
        let full = tiny();
        std::fs::write(&p, &full).unwrap();
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.get_str("general.name").unwrap(), "tiny");
        let t = g.tensor("w").unwrap();
        assert_eq!(g.dequantize(t).unwrap(), [1.5, -2.0]);
        assert_eq!(g.data_start() % 32, 0);
        for n in 0..full.len() {
            std::fs::write(&p, &full[..n]).unwrap();
            let e = GgufFile::open(&p).err().unwrap_or_else(|| panic!("prefix of {n} bytes opened")).to_string();
            assert!(e.contains("truncated") || e.contains("past the end"), "prefix {n}: {e}");
        }
    }

    #[test]
    fn typed_getters_report_type_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.gguf");
        std::fs::write(&p, tiny()).unwrap();
        let g = GgufFile::open(&p).unwrap();
        let e = g.get_u64("general.name").unwrap_err().to_string();
        assert!(e.contains("general.name is a string, expected a non-negative integer"), "{e}");
        let e = g.get_u64("nope").unwrap_err().to_string();
        assert!(e.contains("nope is missing"), "{e}");
        assert_eq!(Value::F32(1e-5).as_f64(), Some(1e-5));
        assert_eq!(Value::I32(-1).as_u64(), None);
    }
}
