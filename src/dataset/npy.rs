//! The `.npy` format (NumPy's array files, version 1.0) for the arrays of the reference's
//! dataset layout: C-order `uint8` and `int32` arrays of any shape.
//!
//! Layout: the magic `\x93NUMPY`, version bytes 1 and 0, a little-endian u16 header length,
//! then an ASCII dict `{'descr': '|u1', 'fortran_order': False, 'shape': (n, m), }` padded
//! with spaces and a final newline so that the data starts at a multiple of 64 bytes, then the
//! elements.

use anyhow::{Context, Result, bail};
use std::path::Path;

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// An array's element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    U8,
    I32,
}

impl Dtype {
    fn descr(self) -> &'static str {
        match self {
            Dtype::U8 => "|u1",
            Dtype::I32 => "<i4",
        }
    }
    fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::I32 => 4,
        }
    }
}

/// The bytes of a `.npy` file holding `data` (little-endian elements) of `shape`.
/// The `.npy` header of an array (magic, version 1.0, the dict padded to a multiple of 64).
fn header(dtype: Dtype, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    // a 1-d shape is written `(n,)`, as NumPy does
    let shape_text =
        if shape.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header =
        format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape_text}, }}", dtype.descr());
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

/// Writes the header, then `data` as it lies (no copy of a multi-gigabyte array), atomically.
fn write_array(path: &Path, dtype: Dtype, shape: &[usize], data: &[u8]) -> Result<()> {
    let head = header(dtype, shape);
    crate::fsutil::write_atomic_with(path, |w| {
        use std::io::Write;
        w.write_all(&head)?;
        w.write_all(data)
    })
}

/// Writes a `uint8` array (atomically).
pub fn write_u8(path: &Path, shape: &[usize], data: &[u8]) -> Result<()> {
    assert_eq!(shape.iter().product::<usize>(), data.len(), "{}: shape and data disagree", path.display());
    write_array(path, Dtype::U8, shape, data)
}

/// Writes an `int32` array (atomically).
pub fn write_i32(path: &Path, shape: &[usize], data: &[i32]) -> Result<()> {
    assert_eq!(shape.iter().product::<usize>(), data.len(), "{}: shape and data disagree", path.display());
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_array(path, Dtype::I32, shape, &bytes)
}

/// A read array: its shape and its elements' bytes (little endian).
#[derive(Debug)]
pub struct Array {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Array {
    /// The elements as `u8`, or an error naming `what` when the array holds another type.
    pub fn into_u8(self, what: &str) -> Result<Vec<u8>> {
        if self.dtype != Dtype::U8 {
            bail!("{what}: holds {:?}, expected uint8", self.dtype);
        }
        Ok(self.data)
    }
    /// The elements as `i32` (from `int32`).
    pub fn to_i32(&self, what: &str) -> Result<Vec<i32>> {
        if self.dtype != Dtype::I32 {
            bail!("{what}: holds {:?}, expected int32", self.dtype);
        }
        Ok(self.data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

/// Reads a C-order `uint8` or little-endian `int32` `.npy` file; errors name the file and what
/// is wrong with it.
pub fn read(path: &Path) -> Result<Array> {
    let p = path.display();
    let bytes = crate::fsutil::read_regular(path, "a .npy array")?;
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        bail!("{p}: not a .npy file (no \\x93NUMPY magic)");
    }
    let (major, hlen) = (bytes[6], u16::from_le_bytes([bytes[8], bytes[9]]) as usize);
    if major != 1 {
        bail!("{p}: .npy version {major}.{}, this build reads 1.0", bytes[7]);
    }
    let header = bytes.get(10..10 + hlen).with_context(|| format!("{p}: truncated header"))?;
    let header = std::str::from_utf8(header).with_context(|| format!("{p}: header not ASCII"))?;
    let field = |key: &str| -> Result<&str> {
        let at = header.find(&format!("'{key}':")).with_context(|| format!("{p}: header has no '{key}'"))?;
        Ok(header[at + key.len() + 3..].trim_start())
    };
    let descr = field("descr")?;
    let dtype = if descr.starts_with("'|u1'") || descr.starts_with("'<u1'") {
        Dtype::U8
    } else if descr.starts_with("'<i4'") {
        Dtype::I32
    } else {
        bail!(
            "{p}: element type {}, expected uint8 ('|u1') or int32 ('<i4')",
            descr.split(',').next().unwrap_or("")
        );
    };
    if !field("fortran_order")?.starts_with("False") {
        bail!("{p}: Fortran-order array, expected C order");
    }
    let shape_text = field("shape")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .with_context(|| format!("{p}: unreadable shape"))?;
    let shape = (inner.split(',').map(str::trim).filter(|s| !s.is_empty()))
        .map(|d| d.parse::<usize>().with_context(|| format!("{p}: bad dimension {d:?}")))
        .collect::<Result<Vec<usize>>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .with_context(|| format!("{p}: shape overflows"))?;
    let data = &bytes[10 + hlen..];
    if data.len() != n * dtype.size() {
        bail!("{p}: {} data bytes, the shape {shape:?} of {dtype:?} needs {}", data.len(), n * dtype.size());
    }
    Ok(Array { dtype, shape, data: data.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_round_trip_with_numpy_headers() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.npy"), dir.path().join("b.npy"));
        write_u8(&a, &[2, 3], &[1, 2, 3, 4, 5, 6]).unwrap();
        write_i32(&b, &[4], &[0, -1, 7, i32::MAX]).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        // the bytes `numpy.save` writes for this array: the dict, spaces, a newline, the data
        // at offset 128
        let want = "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3), }";
        assert_eq!(&bytes[..10], b"\x93NUMPY\x01\x00v\x00");
        assert_eq!(std::str::from_utf8(&bytes[10..10 + want.len()]).unwrap(), want);
        assert!(bytes[10 + want.len()..127].iter().all(|&c| c == b' ') && bytes[127] == b'\n');
        assert_eq!(&bytes[128..], &[1, 2, 3, 4, 5, 6]);
        let ra = read(&a).unwrap();
        assert_eq!((ra.dtype, ra.shape.clone()), (Dtype::U8, vec![2, 3]));
        assert_eq!(ra.into_u8("a").unwrap(), vec![1, 2, 3, 4, 5, 6]);
        let rb = read(&b).unwrap();
        assert_eq!(rb.shape, vec![4]);
        assert!(
            std::str::from_utf8(&std::fs::read(&b).unwrap()[10..128]).unwrap().contains("'shape': (4,), }")
        );
        assert_eq!(rb.to_i32("b").unwrap(), vec![0, -1, 7, i32::MAX]);
        assert!(rb.into_u8("b").unwrap_err().to_string().contains("expected uint8"));
        // truncated data is named
        std::fs::write(&a, &std::fs::read(&a).unwrap()[..131]).unwrap();
        let e = read(&a).unwrap_err().to_string();
        assert!(e.contains("a.npy") && e.contains("data bytes"), "{e}");
    }
}
