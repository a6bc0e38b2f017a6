//! Our own reader of the GGUF header (magic, metadata, tensor directory), into candle's `Content` so the rest
//! of candle's quantized machinery reads the tensors. Ours rather than candle's because it must know every
//! tensor type llama.cpp's quantizer emits, including the ones candle has no type for (IQ4_NL, the fallback
//! of Q2_K/Q3_K mixes): those are recorded beside the directory, listed under the candle type of the same
//! block geometry, and converted when read (see [`super::GgufFile::tensor`]). Every length is checked
//! against what is left of the file before anything is allocated, and nothing here can panic.

use std::collections::HashMap;
use std::io::{Read, Seek};

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};

/// A tensor type of the file as llama.cpp numbers it (`enum ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// One candle has.
    Candle(GgmlDType),
    /// IQ4_NL: 32 values per block, an f16 scale and 16 bytes of 4-bit indices into a fixed non-linear
    /// table of int8 levels (the same 18-byte block as Q4_0).
    Iq4Nl,
    /// Any other ggml type: named in the error when a model needs it.
    Other(u32),
}

impl FileType {
    pub fn from_id(id: u32) -> Self {
        use GgmlDType as D;
        Self::Candle(match id {
            0 => D::F32,
            1 => D::F16,
            2 => D::Q4_0,
            3 => D::Q4_1,
            6 => D::Q5_0,
            7 => D::Q5_1,
            8 => D::Q8_0,
            9 => D::Q8_1,
            10 => D::Q2K,
            11 => D::Q3K,
            12 => D::Q4K,
            13 => D::Q5K,
            14 => D::Q6K,
            15 => D::Q8K,
            30 => D::BF16,
            20 => return Self::Iq4Nl,
            other => return Self::Other(other),
        })
    }

    /// The candle type whose block geometry (values per block, bytes per block) this type shares.
    pub fn geometry(self) -> Option<GgmlDType> {
        match self {
            Self::Candle(d) => Some(d),
            Self::Iq4Nl => Some(GgmlDType::Q4_0),
            Self::Other(_) => None,
        }
    }

    /// llama.cpp's name for the type.
    pub fn name(self) -> String {
        match self {
            Self::Candle(d) => ggml_name(d).into(),
            Self::Iq4Nl => "IQ4_NL".into(),
            Self::Other(id) => match GGML_NAMES.get(id as usize) {
                Some(n) if !n.is_empty() => (*n).into(),
                _ => format!("ggml type {id}"),
            },
        }
    }
}

/// llama.cpp's name of a candle type (`Q4_K`, where candle's `Debug` says `Q4K`).
pub fn ggml_name(d: GgmlDType) -> &'static str {
    use GgmlDType as D;
    match d {
        D::F32 => "F32",
        D::F16 => "F16",
        D::BF16 => "BF16",
        D::Q4_0 => "Q4_0",
        D::Q4_1 => "Q4_1",
        D::Q5_0 => "Q5_0",
        D::Q5_1 => "Q5_1",
        D::Q8_0 => "Q8_0",
        D::Q8_1 => "Q8_1",
        D::Q2K => "Q2_K",
        D::Q3K => "Q3_K",
        D::Q4K => "Q4_K",
        D::Q5K => "Q5_K",
        D::Q6K => "Q6_K",
        D::Q8K => "Q8_K",
    }
}

/// `ggml_type` names by id, for error messages about types we do not load.
const GGML_NAMES: &[&str] = &[
    "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K",
    "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",
    "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16", "", "", "", "TQ1_0",
    "TQ2_0", "", "", "", "MXFP4",
];

/// A parsed header: candle's view plus the types candle does not know.
pub struct Header {
    pub content: Content,
    /// Tensors whose type is not a candle type (listed in `content` under their geometry's candle type).
    pub foreign: HashMap<String, FileType>,
}

const MAX_DIMS: u32 = 4;
const MAX_DEPTH: usize = 8;

struct Cursor<'a, R> {
    r: &'a mut R,
    pos: u64,
    size: u64,
    v1: bool,
}

impl<R: Read> Cursor<'_, R> {
    fn left(&self) -> u64 {
        self.size.saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        if self.left() < N as u64 {
            return Err(format!(
                "the header is truncated at byte {} (needs {N} more bytes)",
                self.pos
            ));
        }
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).map_err(|e| e.to_string())?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.bytes::<4>().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.bytes::<8>().map(u64::from_le_bytes)
    }

    /// A length: u32 in GGUF v1, u64 since.
    fn len(&mut self) -> Result<u64, String> {
        if self.v1 {
            self.u32().map(u64::from)
        } else {
            self.u64()
        }
    }

    /// A count of items of at least `min_bytes` each, refused when the rest of the file cannot hold them.
    fn count(&mut self, what: &str, min_bytes: u64) -> Result<usize, String> {
        let at = self.pos;
        let n = self.len()?;
        if n.saturating_mul(min_bytes) > self.left() {
            return Err(format!(
                "{what} at byte {at} declares {n} items, more than the {} bytes left in the file can hold",
                self.left()
            ));
        }
        usize::try_from(n).map_err(|_| format!("{what}: {n} items"))
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.count("a string", 1)?;
        let mut b = vec![0u8; n];
        self.r.read_exact(&mut b).map_err(|e| e.to_string())?;
        self.pos += n as u64;
        String::from_utf8(b).map_err(|_| format!("a string before byte {} is not UTF-8", self.pos))
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(self.bytes::<1>()?[0]),
            1 => Value::I8(i8::from_le_bytes(self.bytes::<1>()?)),
            2 => Value::U16(u16::from_le_bytes(self.bytes::<2>()?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes::<2>()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.bytes::<4>()?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes::<4>()?)),
            7 => Value::Bool(match self.bytes::<1>()?[0] {
                0 => false,
                1 => true,
                b => return Err(format!("a bool value is {b}, not 0 or 1")),
            }),
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(format!("arrays nested deeper than {MAX_DEPTH}"));
                }
                let elem = self.u32()?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    _ => 8,
                };
                let n = self.count("an array", min)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.bytes::<8>()?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes::<8>()?)),
            t => return Err(format!("unknown metadata value type {t}")),
        })
    }
}

/// Reads the header from the start of `r` (`size`: the file's length).
pub fn read<R: Read + Seek>(r: &mut R, size: u64) -> Result<Header, String> {
    r.seek(std::io::SeekFrom::Start(0))
        .map_err(|e| e.to_string())?;
    let mut c = Cursor {
        r,
        pos: 0,
        size,
        v1: false,
    };
    if &c.bytes::<4>()? != b"GGUF" {
        return Err("not a GGUF file (the magic is not `GGUF`)".into());
    }
    let magic = match c.u32()? {
        1 => VersionedMagic::GgufV1,
        2 => VersionedMagic::GgufV2,
        3 => VersionedMagic::GgufV3,
        v => return Err(format!("unsupported GGUF version {v}")),
    };
    c.v1 = magic == VersionedMagic::GgufV1;
    let len_size = if c.v1 { 4 } else { 8 };
    let n_tensors = c.count("the tensor count", len_size + 4 + 4 + 8)?;
    let n_kv = c.count("the metadata count", len_size + 4 + 1)?;
    let mut metadata = HashMap::with_capacity(n_kv);
    for _ in 0..n_kv {
        let key = c.string()?;
        let ty = c.u32()?;
        let value = c
            .value(ty, 0)
            .map_err(|e| format!("metadata `{key}`: {e}"))?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata key `{key}` appears twice"));
        }
    }
    let mut tensor_infos = HashMap::with_capacity(n_tensors);
    let mut foreign = HashMap::new();
    for _ in 0..n_tensors {
        let name = c.string()?;
        let n_dims = c.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS})"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = c.len()?;
            dims.push(usize::try_from(d).map_err(|_| format!("tensor `{name}`: dimension {d}"))?);
        }
        // GGUF lists the innermost dimension first; candle's shapes are outermost first
        dims.reverse();
        let ty = FileType::from_id(c.u32()?);
        let offset = c.u64()?;
        let Some(geometry) = ty.geometry() else {
            return Err(format!(
                "tensor `{name}` has type {}, which this server cannot read",
                ty.name()
            ));
        };
        if !matches!(ty, FileType::Candle(_)) {
            foreign.insert(name.clone(), ty);
        }
        let info = TensorInfo {
            ggml_dtype: geometry,
            shape: candle_core::Shape::from(dims),
            offset,
        };
        if tensor_infos.insert(name.clone(), info).is_some() {
            return Err(format!("tensor `{name}` appears twice"));
        }
    }
    // The data starts at the next multiple of the alignment (checked to be a power of two by the caller;
    // here only kept from dividing by zero).
    let alignment = match metadata.get("general.alignment") {
        Some(Value::U8(a)) => u64::from(*a),
        Some(Value::U16(a)) => u64::from(*a),
        Some(Value::U32(a)) => u64::from(*a),
        Some(Value::U64(a)) => *a,
        Some(Value::I8(a)) => u64::try_from(*a).unwrap_or(0),
        Some(Value::I16(a)) => u64::try_from(*a).unwrap_or(0),
        Some(Value::I32(a)) => u64::try_from(*a).unwrap_or(0),
        Some(Value::I64(a)) => u64::try_from(*a).unwrap_or(0),
        _ => 32,
    }
    .max(1);
    let tensor_data_offset = c
        .pos
        .div_ceil(alignment)
        .checked_mul(alignment)
        .ok_or("the data offset overflows")?;
    Ok(Header {
        content: Content {
            magic,
            metadata,
            tensor_infos,
            tensor_data_offset,
        },
        foreign,
    })
}
