//! Tests of the GGUF reader: truncation, corruption, alignment, type checks, IQ4_NL conversion.
use super::*;
use std::io::Cursor;

/// A tiny but valid GGUF v3 file: two metadata entries and one F32 tensor.
fn tiny_gguf() -> Vec<u8> {
    sized_gguf(8)
}

/// As [`tiny_gguf`] with an F32 tensor of `n` (a multiple of 4) elements, shape [4, n/4].
fn sized_gguf(n: usize) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // tensors
    b.extend_from_slice(&2u64.to_le_bytes()); // kv
    let s = |b: &mut Vec<u8>, s: &str| {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    };
    s(&mut b, "general.architecture");
    b.extend_from_slice(&8u32.to_le_bytes());
    s(&mut b, "llama");
    s(&mut b, "general.alignment");
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&32u32.to_le_bytes());
    s(&mut b, "w");
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&4u64.to_le_bytes());
    b.extend_from_slice(&(n as u64 / 4).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // F32
    b.extend_from_slice(&0u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    for i in 0..n {
        b.extend_from_slice(&(i as f32).to_le_bytes());
    }
    b
}

/// Byte offset of the type field of [`sized_gguf`]'s tensor `w` (after its name, n_dims and 2 dims).
fn type_field(bytes: &[u8]) -> usize {
    let pattern = b"\x01\x00\x00\x00\x00\x00\x00\x00w\x02\x00\x00\x00";
    bytes
        .windows(pattern.len())
        .position(|w| w == pattern)
        .expect("tensor name and n_dims")
        + pattern.len()
        + 16
}

#[test]
fn valid_file_parses_and_reads_its_tensor() {
    let mut f = GgufFile::from_reader(Cursor::new(tiny_gguf())).expect("parses");
    assert_eq!(f.get_str("general.architecture").expect("arch"), "llama");
    let t = f.tensor("w").expect("tensor");
    assert_eq!(t.shape().dims(), &[2, 4]);
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let full = tiny_gguf();
    for len in 0..full.len() {
        let r = GgufFile::from_reader(Cursor::new(full[..len].to_vec()));
        assert!(r.is_err(), "truncated to {len} bytes should fail");
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    let full = tiny_gguf();
    // deterministic pseudo-random single and double byte corruptions
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..3000 {
        let mut bytes = full.clone();
        for _ in 0..2 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x as usize) % bytes.len();
            bytes[at] = (x >> 32) as u8;
        }
        if let Ok(mut f) = GgufFile::from_reader(Cursor::new(bytes)) {
            let _ = f.tensor("w");
        }
    }
}

#[test]
fn an_unsupported_tensor_type_is_an_error_naming_tensor_and_type() {
    // 32 F32 values relabelled Q8_1 (type 9, one 36-byte block), the data cut to that one block
    let mut bytes = sized_gguf(32);
    let data_start = bytes.len() - 32 * 4;
    let pos = type_field(&bytes);
    bytes[pos..pos + 4].copy_from_slice(&9u32.to_le_bytes());
    bytes.truncate(data_start + 36);
    let mut f = GgufFile::from_reader(Cursor::new(bytes)).expect("a well-formed directory");
    let err = f
        .tensor("w")
        .expect_err("Q8_1 is not a weight type we run")
        .to_string();
    assert!(err.contains("`w`") && err.contains("Q8_1"), "{err}");
}

#[test]
fn iq4_nl_blocks_become_the_same_values_as_q8_0() {
    let mut block = vec![0x00, 0x3c]; // f16 1.0
    block.extend((0u8..16).map(|j| j | ((15 - j) << 4)));
    let q8 = iq4nl_to_q8_0(&block);
    assert_eq!(q8.len(), 34);
    assert_eq!(&q8[..2], &[0x00, 0x3c]);
    for j in 0..16 {
        assert_eq!(q8[2 + j] as i8, IQ4NL_LEVELS[j], "value {j}: low nibble");
        assert_eq!(
            q8[2 + 16 + j] as i8,
            IQ4NL_LEVELS[15 - j],
            "value {}: high nibble",
            16 + j
        );
    }
}

#[test]
fn a_type_we_cannot_read_is_named_with_its_tensor() {
    for (id, name) in [(16u32, "IQ2_XXS"), (23, "IQ4_XS"), (99, "ggml type 99")] {
        let mut bytes = sized_gguf(32);
        let pos = type_field(&bytes);
        bytes[pos..pos + 4].copy_from_slice(&id.to_le_bytes());
        let err = GgufFile::from_reader(Cursor::new(bytes))
            .err()
            .expect("unreadable type")
            .to_string();
        assert!(err.contains("`w`") && err.contains(name), "{err}");
    }
}

#[test]
fn zero_alignment_is_an_error() {
    let mut bytes = tiny_gguf();
    // the alignment value 32u32 follows "general.alignment" + type
    let pos = bytes
        .windows(17)
        .position(|w| w == b"general.alignment")
        .expect("key present")
        + 17
        + 4;
    bytes[pos..pos + 4].copy_from_slice(&0u32.to_le_bytes());
    let err = GgufFile::from_reader(Cursor::new(bytes))
        .err()
        .expect("alignment 0");
    assert_eq!(
        err.to_string(),
        "metadata key `general.alignment` has the wrong type or value: must be a positive power of two, got 0"
    );
}

#[test]
fn a_tensor_whose_type_does_not_describe_its_data_is_refused() {
    // 64 F32 values (256 bytes) relabelled F16 (2): the declared 128 bytes end 128 bytes before the file.
    let mut bytes = sized_gguf(64);
    let pos = type_field(&bytes);
    assert_eq!(bytes[pos..pos + 4], 0u32.to_le_bytes(), "the type field");
    bytes[pos..pos + 4].copy_from_slice(&1u32.to_le_bytes());
    let err = GgufFile::from_reader(Cursor::new(bytes))
        .err()
        .expect("relabelled");
    assert!(
        err.to_string()
            .contains("its type or shape does not match the data"),
        "{err}"
    );
    assert!(GgufFile::from_reader(Cursor::new(sized_gguf(64))).is_ok());
}

#[test]
fn a_fifo_is_refused_instead_of_hanging() {
    let dir = std::env::temp_dir().join(format!("llama-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let made = std::process::Command::new("mkfifo")
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        return; // no mkfifo on this machine: nothing to check
    }
    let err = GgufFile::open(&dir).err().expect("a FIFO is not a model");
    assert!(
        err.to_string().contains("not a regular file: it is a FIFO"),
        "{err}"
    );
    let _ = std::fs::remove_file(&dir);
    let err = GgufFile::open(Path::new("/dev/null"))
        .err()
        .expect("a device");
    assert!(err.to_string().contains("not a regular file"), "{err}");
}
