//! A strict npz reader: every member of the zip archive is read whole (so its CRC is checked)
//! and parsed as an npy array by this module, so that each way a file can be wrong gets its
//! own message naming the file and the member:
//! * the archive is not a zip file, or its directory is damaged;
//! * a member fails its CRC or cannot be decompressed (corruption: a flipped bit);
//! * a member is not an npy array (no magic, an unknown format version, a header that runs
//!   past the member, a header that is not the npy dict `{'descr': ..., 'fortran_order': ...,
//!   'shape': (...)}`);
//! * the header's shape and dtype need more or fewer bytes than the member holds;
//! * the dtype is well formed but not one we read (only then "unsupported dtype").
//!
//! The data length is checked against the header before anything is allocated for it, so a
//! corrupt shape cannot ask for terabytes. Two members of one name (`a` and `a.npy` count as
//! one name, as NumPy strips the suffix) are an error.

use super::params::StateError;
use ndarray::{ArrayD, IxDyn, ShapeBuilder};
use std::io::{Read, Seek};

/// One npz member: a numeric array (f64, f32 or i64 payloads, held as f64) or a 1-D byte
/// array (`|u1`: the JSON record of a search checkpoint).
#[derive(Clone, Debug, PartialEq)]
pub enum Member {
    F64(ArrayD<f64>),
    Bytes(Vec<u8>),
}

/// Every member of the npz archive `reader`, in archive order, named without the `.npy`
/// suffix; `file` names the archive in errors.
pub fn read_members<R: Read + Seek>(
    reader: R,
    file: &str,
) -> Result<Vec<(String, Member)>, StateError> {
    let file_err = |reason: String| StateError::File {
        file: file.to_string(),
        reason,
    };
    let mut reader = reader;
    // The zip crate keeps one entry per name, silently dropping a second member of the same
    // name: find such a name in the central directory first.
    let start = zip::ZipArchive::new(&mut reader)
        .map_err(|e| file_err(format!("not a readable npz (zip) archive: {e}")))?
        .central_directory_start();
    if let Some(key) = duplicate_name(&mut reader, start) {
        return Err(StateError::Read {
            file: file.to_string(),
            key,
            reason: "appears twice in the archive".into(),
        });
    }
    let mut zip = zip::ZipArchive::new(reader)
        .map_err(|e| file_err(format!("not a readable npz (zip) archive: {e}")))?;
    let mut out: Vec<(String, Member)> = Vec::with_capacity(zip.len().min(1 << 16));
    for i in 0..zip.len() {
        let mut member = zip
            .by_index(i)
            .map_err(|e| file_err(format!("archive member {i} is unreadable: {e}")))?;
        let name = member.name().to_string();
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        let member_err = |reason: String| StateError::Read {
            file: file.to_string(),
            key: key.clone(),
            reason,
        };
        if out.iter().any(|(k, _)| *k == key) {
            return Err(member_err("appears twice in the archive".into()));
        }
        if member.is_dir() {
            return Err(member_err("is a directory entry, not an array".into()));
        }
        // Grows with the data actually decompressed, never with the declared size.
        let mut bytes = Vec::new();
        member
            .read_to_end(&mut bytes)
            .map_err(|e| member_err(format!("corrupt archive member: {e}")))?;
        let value = parse_npy(&bytes).map_err(member_err)?;
        out.push((key, value));
    }
    Ok(out)
}

/// The first member name (without `.npy`) that the central directory at `start` lists twice,
/// walking its file headers until one does not start with the header signature.
fn duplicate_name<R: Read + Seek>(reader: &mut R, start: u64) -> Option<String> {
    use std::io::SeekFrom;
    reader.seek(SeekFrom::Start(start)).ok()?;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..(1usize << 20) {
        let mut fixed = [0u8; 46];
        reader.read_exact(&mut fixed).ok()?;
        if fixed[..4] != *b"PK\x01\x02" {
            return None;
        }
        let le = |i: usize| u16::from_le_bytes([fixed[i], fixed[i + 1]]) as usize;
        let (name_len, extra_len, comment_len) = (le(28), le(30), le(32));
        let mut name = vec![0u8; name_len];
        reader.read_exact(&mut name).ok()?;
        reader
            .seek(SeekFrom::Current((extra_len + comment_len) as i64))
            .ok()?;
        let name = String::from_utf8_lossy(&name).into_owned();
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        if !seen.insert(key.clone()) {
            return Some(key);
        }
    }
    None
}

/// The element types we read, by npy descriptor: (descriptor, bytes per element).
fn itemsize(descr: &str) -> Option<usize> {
    match descr {
        "<f8" | ">f8" | "<i8" | ">i8" => Some(8),
        "<f4" | ">f4" => Some(4),
        "|u1" | "u1" | "<u1" | ">u1" => Some(1),
        _ => None,
    }
}

/// Parses one npy array from its bytes (format versions 1.0, 2.0 and 3.0).
fn parse_npy(bytes: &[u8]) -> Result<Member, String> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < 8 || &bytes[..6] != MAGIC {
        return Err("not an npy array (its first bytes are not the \\x93NUMPY magic)".into());
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (len_bytes, start) = match major {
        1 => (2, 10),
        2 | 3 => (4, 12),
        _ => {
            return Err(format!(
                "npy format version {major}.{minor} is not one of 1.0, 2.0, 3.0 (corrupt header?)"
            ))
        }
    };
    if bytes.len() < start {
        return Err(format!(
            "the npy header is cut off: {} bytes, the header length alone needs {start}",
            bytes.len()
        ));
    }
    let header_len = bytes[8..8 + len_bytes]
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | b as usize);
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            format!(
                "the npy header claims {header_len} bytes, more than the {} the member holds \
                 (truncated or corrupt)",
                bytes.len() - start
            )
        })?;
    let text = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| "the npy header is not text (corrupt header)".to_string())?;
    let header = parse_header(text).map_err(|why| format!("npy header {text:?}: {why}"))?;
    let size = itemsize(&header.descr).ok_or_else(|| {
        format!(
            "dtype '{}' is not supported (want f64 '<f8', f32 '<f4' or i64 '<i8')",
            header.descr
        )
    })?;
    let data = &bytes[end..];
    let need = header
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|n| n.checked_mul(size).map(|b| (n, b)));
    let (numel, need_bytes) = match need {
        Some(v) => v,
        None => {
            return Err(format!(
                "shape {:?} of '{}' overflows (corrupt header)",
                header.shape, header.descr
            ))
        }
    };
    if data.len() != need_bytes {
        return Err(format!(
            "shape {:?} of '{}' needs {need_bytes} data bytes, the member holds {} ({})",
            header.shape,
            header.descr,
            data.len(),
            if data.len() < need_bytes {
                "truncated"
            } else {
                "extra bytes after the data"
            }
        ));
    }
    let d = header.descr.as_str();
    if size == 1 {
        if header.shape.len() != 1 {
            return Err(format!(
                "a byte array must have one axis, this one has shape {:?}",
                header.shape
            ));
        }
        return Ok(Member::Bytes(data.to_vec()));
    }
    let big = d.starts_with('>');
    let values: Vec<f64> = data
        .chunks_exact(size)
        .map(|c| {
            let mut b8 = [0u8; 8];
            let mut b4 = [0u8; 4];
            match (&d[1..], big) {
                ("f8", false) => f64::from_le_bytes(fill(&mut b8, c)),
                ("f8", true) => f64::from_be_bytes(fill(&mut b8, c)),
                ("i8", false) => i64::from_le_bytes(fill(&mut b8, c)) as f64,
                ("i8", true) => i64::from_be_bytes(fill(&mut b8, c)) as f64,
                ("f4", false) => f32::from_le_bytes(fill(&mut b4, c)) as f64,
                _ => f32::from_be_bytes(fill(&mut b4, c)) as f64,
            }
        })
        .collect();
    debug_assert_eq!(values.len(), numel);
    let shape = IxDyn(&header.shape);
    let array = if header.fortran_order {
        ArrayD::from_shape_vec(shape.f(), values)
    } else {
        ArrayD::from_shape_vec(shape, values)
    }
    .map_err(|e| format!("shape {:?}: {e}", header.shape))?;
    Ok(Member::F64(array.as_standard_layout().into_owned()))
}

fn fill<const N: usize>(buf: &mut [u8; N], c: &[u8]) -> [u8; N] {
    buf.copy_from_slice(c);
    *buf
}

/// The fields of an npy header.
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses the npy header dict `{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }`
/// (any order of the three keys, each exactly once, no others; Python's string quotes,
/// booleans and a flat tuple of non-negative integers). Flat by construction: no recursion, so
/// no input can exhaust the stack.
fn parse_header(text: &str) -> Result<Header, String> {
    let b = text.as_bytes();
    let mut i = 0usize;
    let ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] as char).is_ascii_whitespace() {
            *i += 1;
        }
    };
    let expect = |i: &mut usize, c: u8| -> Result<(), String> {
        ws(i);
        if *i < b.len() && b[*i] == c {
            *i += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, *i))
        }
    };
    let string = |i: &mut usize| -> Result<String, String> {
        ws(i);
        let q = *b.get(*i).ok_or("expected a quoted string, found the end")?;
        if q != b'\'' && q != b'"' {
            return Err(format!("expected a quoted string at byte {}", *i));
        }
        let start = *i + 1;
        let len = b[start..]
            .iter()
            .position(|&c| c == q)
            .ok_or("a string is not closed")?;
        let s = &text[start..start + len];
        if s.contains('\\') {
            return Err("escapes in strings are not supported".into());
        }
        *i = start + len + 1;
        Ok(s.to_string())
    };
    expect(&mut i, b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        ws(&mut i);
        if b.get(i) == Some(&b'}') {
            i += 1;
            break;
        }
        let key = string(&mut i)?;
        expect(&mut i, b':')?;
        ws(&mut i);
        match key.as_str() {
            "descr" if descr.is_none() => descr = Some(string(&mut i)?),
            "fortran_order" if fortran.is_none() => {
                fortran = Some(if text[i..].starts_with("True") {
                    i += 4;
                    true
                } else if text[i..].starts_with("False") {
                    i += 5;
                    false
                } else {
                    return Err("'fortran_order' is not True or False".into());
                })
            }
            "shape" if shape.is_none() => {
                expect(&mut i, b'(')?;
                let mut dims = Vec::new();
                loop {
                    ws(&mut i);
                    if b.get(i) == Some(&b')') {
                        i += 1;
                        break;
                    }
                    let start = i;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    let dim: usize = text[start..i].parse().map_err(|_| {
                        format!(
                            "a dimension of 'shape' at byte {start} is not a non-negative integer"
                        )
                    })?;
                    dims.push(dim);
                    ws(&mut i);
                    match b.get(i) {
                        Some(b',') => i += 1,
                        Some(b')') => {}
                        _ => return Err(format!("expected ',' or ')' in 'shape' at byte {i}")),
                    }
                }
                shape = Some(dims);
            }
            "descr" | "fortran_order" | "shape" => return Err(format!("key '{key}' given twice")),
            other => return Err(format!("unknown key '{other}'")),
        }
        ws(&mut i);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => {}
            _ => return Err(format!("expected ',' or '}}' at byte {i}")),
        }
    }
    ws(&mut i);
    if i != b.len() {
        return Err(format!("text after the dict at byte {i}"));
    }
    Ok(Header {
        descr: descr.ok_or("no 'descr' key")?,
        fortran_order: fortran.ok_or("no 'fortran_order' key")?,
        shape: shape.ok_or("no 'shape' key")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, data: &[u8]) -> Vec<u8> {
        let mut h = header.to_string();
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend_from_slice(&(h.len() as u16).to_le_bytes());
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn headers_and_lengths() {
        let data: Vec<u8> = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let c = npy(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }",
            &data,
        );
        let Member::F64(a) = parse_npy(&c).unwrap() else {
            panic!()
        };
        assert_eq!(a.shape(), [2, 3]);
        assert_eq!(a[[1, 0]], 4.0);
        let f = npy(
            "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }",
            &data,
        );
        let Member::F64(a) = parse_npy(&f).unwrap() else {
            panic!()
        };
        assert_eq!(a[[1, 0]], 2.0);
        let e = parse_npy(&npy(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (4, 3), }",
            &data,
        ))
        .unwrap_err();
        assert!(
            e.contains("needs 96 data bytes, the member holds 48 (truncated)"),
            "{e}"
        );
        let e = parse_npy(&npy(
            "{'descr': '<i4', 'fortran_order': False, 'shape': (12,), }",
            &data,
        ))
        .unwrap_err();
        assert!(e.starts_with("dtype '<i4' is not supported"), "{e}");
        let e = parse_npy(&npy(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999, 99999999999, 99999999999), }",
            &data,
        ))
        .unwrap_err();
        assert!(e.contains("overflows"), "{e}");
        let e = parse_npy(&npy(
            "{'descr': '<f8', 'descr': '<f8', 'fortran_order': False, 'shape': (6,), }",
            &data,
        ))
        .unwrap_err();
        assert!(e.contains("key 'descr' given twice"), "{e}");
        let e = parse_npy(&data).unwrap_err();
        assert!(e.starts_with("not an npy array"), "{e}");
    }
}
