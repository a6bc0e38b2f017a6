//! Reading GGUF files: the header (metadata + tensor directory) and individual tensors.
//!
//! The header is read by our own parser ([`header`]: every ggml type llama.cpp's quantizer emits, lengths
//! checked against the file before any allocation) into candle-core's `Content`, whose tensor reader does
//! the rest; every tensor's declared shape and byte range is checked against the file before any tensor is
//! read. A malformed or truncated file is a [`GgufError`], never a panic. Tensors of a type candle lacks
//! (IQ4_NL) are converted when read.

mod header;

pub use header::{FileType, ggml_name};

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};

/// Errors from reading a GGUF file or resolving its metadata.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// (The cause is in the message, not a `source`: error chains would print it twice.)
    #[error("cannot open {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("malformed GGUF header: {0}")]
    Header(String),
    #[error("missing metadata key `{0}`")]
    MissingKey(String),
    #[error("metadata key `{key}` has the wrong type or value: {detail}")]
    BadKey { key: String, detail: String },
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    #[error("tensor `{name}` has unsupported type {dtype}")]
    UnsupportedType { name: String, dtype: String },
    #[error("tensor `{name}`: {detail}")]
    BadTensor { name: String, detail: String },
    #[error("unsupported architecture `{0}` (supported: llama)")]
    UnsupportedArchitecture(String),
    #[error("reading tensor `{name}`: {source}")]
    Read {
        name: String,
        source: candle_core::Error,
    },
}

impl GgufError {
    /// A short, stable label (for metrics and logs).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Open { .. } => "open",
            Self::Header(_) => "header",
            Self::MissingKey(_) => "missing_key",
            Self::BadKey { .. } => "bad_key",
            Self::MissingTensor(_) => "missing_tensor",
            Self::UnsupportedType { .. } => "unsupported_type",
            Self::BadTensor { .. } => "bad_tensor",
            Self::UnsupportedArchitecture(_) => "unsupported_architecture",
            Self::Read { .. } => "read",
        }
    }
}

/// Tensor types the model loader accepts.
pub const SUPPORTED_TYPES: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q8_0,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// An open GGUF file: its parsed header and a reader for tensor data.
pub struct GgufFile<R> {
    content: Content,
    /// Tensors of a type candle has no name for (listed in `content` under the same block geometry).
    foreign: HashMap<String, FileType>,
    reader: R,
    file_size: u64,
}

impl GgufFile<BufReader<File>> {
    /// Opens and parses the header of the GGUF file at `path`.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let open_err = |e: std::io::Error| GgufError::Open {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        // A FIFO or a device would block or never end: only regular files (symlinks followed) are models.
        let meta = std::fs::metadata(path).map_err(open_err)?;
        if !meta.is_file() {
            use std::os::unix::fs::FileTypeExt;
            let t = meta.file_type();
            let kind = if t.is_dir() {
                "a directory"
            } else if t.is_fifo() {
                "a FIFO"
            } else if t.is_char_device() || t.is_block_device() {
                "a device"
            } else if t.is_socket() {
                "a socket"
            } else {
                "a special file"
            };
            return Err(GgufError::Open {
                path: path.to_path_buf(),
                detail: format!("not a regular file: it is {kind}"),
            });
        }
        let file = File::open(path).map_err(open_err)?;
        Self::from_reader(BufReader::new(file))
    }
}

impl<R: Read + Seek> GgufFile<R> {
    /// Parses the header from any seekable reader (used by tests and the fuzz-style checks).
    pub fn from_reader(mut reader: R) -> Result<Self, GgufError> {
        let file_size = reader
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| GgufError::Header(e.to_string()))?;
        reader
            .seek(std::io::SeekFrom::Start(0))
            .map_err(|e| GgufError::Header(e.to_string()))?;
        let header::Header { content, foreign } =
            header::read(&mut reader, file_size).map_err(GgufError::Header)?;
        let file = Self {
            content,
            foreign,
            reader,
            file_size,
        };
        file.check_tensor_directory()?;
        Ok(file)
    }

    /// Every tensor's shape must have a positive, representable element count divisible by its block size,
    /// and its bytes must lie inside the file, start aligned, and not overlap the next tensor's; a gap of a
    /// whole alignment unit or more before the next tensor means the declared type or shape does not
    /// describe the data (a Q4_1 tensor relabelled Q4_0, say).
    fn check_tensor_directory(&self) -> Result<(), GgufError> {
        let alignment = self.alignment()?;
        let mut spans = Vec::with_capacity(self.content.tensor_infos.len());
        for (name, info) in &self.content.tensor_infos {
            let bad = |detail: String| GgufError::BadTensor {
                name: name.clone(),
                detail,
            };
            let elems = info
                .shape
                .dims()
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| bad(format!("shape {:?} overflows", info.shape.dims())))?;
            if elems == 0 {
                // candle would build a typed slice from an empty (dangling, unaligned) buffer
                return Err(bad("has no elements".into()));
            }
            let block = info.ggml_dtype.block_size();
            if !elems.is_multiple_of(block) {
                return Err(bad(format!(
                    "{elems} elements not divisible by block size {block}"
                )));
            }
            let bytes = (elems / block)
                .checked_mul(info.ggml_dtype.type_size())
                .ok_or_else(|| bad("byte size overflows".into()))? as u64;
            let start = self
                .content
                .tensor_data_offset
                .checked_add(info.offset)
                .ok_or_else(|| bad("offset overflows".into()))?;
            let end = start
                .checked_add(bytes)
                .ok_or_else(|| bad("offset overflows".into()))?;
            if end > self.file_size {
                return Err(bad(format!(
                    "data [{start}, {end}) lies beyond the end of the file ({} bytes)",
                    self.file_size
                )));
            }
            if !info.offset.is_multiple_of(alignment) {
                return Err(bad(format!(
                    "data offset {} is not a multiple of the file's alignment {alignment}",
                    info.offset
                )));
            }
            spans.push((start, end, name.as_str(), info.ggml_dtype));
        }
        spans.sort_unstable_by_key(|&(start, ..)| start);
        for (i, &(_, end, name, dtype)) in spans.iter().enumerate() {
            let (next_start, next) = spans
                .get(i + 1)
                .map_or((self.file_size, "the end of the file"), |&(s, _, n, _)| {
                    (s, n)
                });
            let bad = |detail: String| GgufError::BadTensor {
                name: name.to_owned(),
                detail,
            };
            if next_start < end {
                return Err(bad(format!(
                    "its {dtype:?} data ends at byte {end}, past the start of {next} ({next_start})"
                )));
            }
            if next_start - end >= alignment {
                return Err(bad(format!(
                    "its data as {dtype:?} ends at byte {end}, {} bytes before {next} (at {next_start}); \
                     its type or shape does not match the data",
                    next_start - end
                )));
            }
        }
        Ok(())
    }

    /// `general.alignment` (default 32): a positive power of two.
    fn alignment(&self) -> Result<u64, GgufError> {
        let Some(v) = self.content.metadata.get("general.alignment") else {
            return Ok(32);
        };
        let n = v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from));
        match n {
            Some(n) if n.is_power_of_two() => Ok(n),
            _ => Err(GgufError::BadKey {
                key: "general.alignment".into(),
                detail: format!(
                    "must be a positive power of two, got {}",
                    value_i64(v).map_or_else(|| format!("{v:?}"), |n| n.to_string())
                ),
            }),
        }
    }

    /// All metadata.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// Whether a tensor of that name exists.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Names of all tensors.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.content.tensor_infos.keys().map(String::as_str)
    }

    /// The type [`Self::tensor`] returns (IQ4_NL is read as Q8_0) and the (row-major, outermost first) shape
    /// of a tensor.
    pub fn tensor_info(&self, name: &str) -> Result<(GgmlDType, Vec<usize>), GgufError> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))?;
        let dtype = match self.foreign.get(name) {
            Some(FileType::Iq4Nl) => GgmlDType::Q8_0,
            _ => info.ggml_dtype,
        };
        Ok((dtype, info.shape.dims().to_vec()))
    }

    /// The tensor's type as the file declares it.
    pub fn tensor_type(&self, name: &str) -> Result<FileType, GgufError> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))?;
        Ok(self
            .foreign
            .get(name)
            .copied()
            .unwrap_or(FileType::Candle(info.ggml_dtype)))
    }

    /// Reads one tensor (type checked against [`SUPPORTED_TYPES`]) onto the CPU. IQ4_NL becomes Q8_0
    /// exactly (its levels are int8, its scale the same f16).
    pub fn tensor(&mut self, name: &str) -> Result<QTensor, GgufError> {
        let ty = self.tensor_type(name)?;
        let read_err = |source| GgufError::Read {
            name: name.to_string(),
            source,
        };
        match ty {
            FileType::Candle(dtype) if SUPPORTED_TYPES.contains(&dtype) => self
                .content
                .tensor(&mut self.reader, name, &Device::Cpu)
                .map_err(read_err),
            FileType::Iq4Nl => {
                let raw = self
                    .content
                    .tensor(&mut self.reader, name, &Device::Cpu)
                    .and_then(|t| t.data().map(|d| d.into_owned()))
                    .map_err(read_err)?;
                let (dtype, dims) = self.tensor_info(name)?;
                candle_core::quantized::ggml_file::qtensor_from_ggml(
                    dtype,
                    &iq4nl_to_q8_0(&raw),
                    dims,
                    &Device::Cpu,
                )
                .map_err(read_err)
            }
            other => Err(GgufError::UnsupportedType {
                name: name.to_string(),
                dtype: other.name(),
            }),
        }
    }

    /// A metadata value, or [`GgufError::MissingKey`].
    pub fn get(&self, key: &str) -> Result<&Value, GgufError> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|e| bad_key(key, e))
    }

    /// An unsigned integer metadata value (any integer width).
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        value_u64(self.get(key)?).ok_or_else(|| GgufError::BadKey {
            key: key.to_string(),
            detail: "expected a non-negative integer".into(),
        })
    }

    /// A float metadata value (f32 or f64).
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        match self.get(key)? {
            Value::F32(v) => Ok(f64::from(*v)),
            Value::F64(v) => Ok(*v),
            v => value_u64(v)
                .map(|v| v as f64)
                .ok_or_else(|| GgufError::BadKey {
                    key: key.to_string(),
                    detail: "expected a number".into(),
                }),
        }
    }

    /// A boolean metadata value.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        self.get(key)?.to_bool().map_err(|e| bad_key(key, e))
    }

    /// A string-array metadata value.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<String>, GgufError> {
        let arr = self.get(key)?.to_vec().map_err(|e| bad_key(key, e))?;
        arr.iter()
            .map(|v| v.to_string().cloned().map_err(|e| bad_key(key, e)))
            .collect()
    }

    /// A numeric-array metadata value as f32.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        let arr = self.get(key)?.to_vec().map_err(|e| bad_key(key, e))?;
        arr.iter()
            .map(|v| match v {
                Value::F32(x) => Ok(*x),
                Value::F64(x) => Ok(*x as f32),
                other => value_u64(other)
                    .map(|x| x as f32)
                    .ok_or_else(|| bad_key(key, "expected numbers")),
            })
            .collect()
    }

    /// An integer-array metadata value as i64.
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>, GgufError> {
        let arr = self.get(key)?.to_vec().map_err(|e| bad_key(key, e))?;
        arr.iter()
            .map(|v| value_i64(v).ok_or_else(|| bad_key(key, "expected integers")))
            .collect()
    }
}

/// llama.cpp's IQ4_NL levels (`kvalues_iq4nl`): a 4-bit index picks one.
const IQ4NL_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// IQ4_NL blocks (f16 scale, 16 bytes: value j in the low nibble of byte j, value j + 16 in the high
/// nibble) as Q8_0 blocks (the same f16 scale, 32 int8 values): value = scale × level, bit for bit.
pub fn iq4nl_to_q8_0(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() / 18 * 34);
    for block in raw.chunks_exact(18) {
        out.extend_from_slice(&block[..2]);
        let qs = &block[2..];
        out.extend(qs.iter().map(|&b| IQ4NL_LEVELS[usize::from(b & 15)] as u8));
        out.extend(qs.iter().map(|&b| IQ4NL_LEVELS[usize::from(b >> 4)] as u8));
    }
    out
}

fn bad_key(key: &str, e: impl std::fmt::Display) -> GgufError {
    GgufError::BadKey {
        key: key.to_string(),
        detail: e.to_string(),
    }
}

fn value_i64(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => i64::from(*x),
        Value::I8(x) => i64::from(*x),
        Value::U16(x) => i64::from(*x),
        Value::I16(x) => i64::from(*x),
        Value::U32(x) => i64::from(*x),
        Value::I32(x) => i64::from(*x),
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

fn value_u64(v: &Value) -> Option<u64> {
    value_i64(v).and_then(|x| u64::try_from(x).ok())
}

#[cfg(test)]
mod tests;
