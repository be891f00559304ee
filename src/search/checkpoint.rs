//! Search checkpoints: one npz file holding every tensor (weights, BN buffers, alphas, SGD
//! momentum buffers, Adam moments) plus a JSON record of everything else (configuration,
//! epoch and step, RNG and sampler state, optimiser counters), written atomically (temporary
//! file, fsync, rename) so an interrupted write never replaces the last good checkpoint.

use crate::darts::npz::{read_members, Member};
use crate::darts::params::StateError;
use ndarray::{Array1, ArrayD};
use ndarray_npy::NpzWriter;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

/// Key under which the JSON record is stored (as UTF-8 bytes).
pub const META_KEY: &str = "meta.json";

/// Write `arrays` and the JSON `meta` to `path` with [`crate::io::write_atomically`]
/// (temporary file, fsync, rename; a device or FIFO in place).
pub fn write(
    path: &Path,
    arrays: &BTreeMap<String, ArrayD<f64>>,
    meta: &serde_json::Value,
) -> Result<(), StateError> {
    let bytes = Array1::from(serde_json::to_vec(meta).map_err(|e| StateError::File {
        file: path.display().to_string(),
        reason: format!("{META_KEY}: {e}"),
    })?);
    crate::io::write_atomically(path, |sink| {
        let mut w = NpzWriter::new(sink);
        for (k, a) in arrays {
            w.add_array(k.as_str(), a)
                .map_err(|e| format!("{k}: {e}"))?;
        }
        w.add_array(META_KEY, &bytes)
            .map_err(|e| format!("{META_KEY}: {e}"))?;
        w.finish().map_err(|e| e.to_string())?;
        Ok(())
    })
    .map_err(StateError::from)
}

/// Read a checkpoint written by [`write`].
pub fn read(path: &Path) -> Result<(BTreeMap<String, ArrayD<f64>>, serde_json::Value), StateError> {
    let file = path.display().to_string();
    let f = File::open(path).map_err(|e| StateError::File {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    read_from(std::io::BufReader::new(f), &file)
}

/// [`read`] of a checkpoint already open (`file` names it in errors): every member an array
/// (f64, f32 or i64), plus the [`META_KEY`] record, a JSON object.
pub fn read_from<R: std::io::Read + std::io::Seek>(
    reader: R,
    file: &str,
) -> Result<(BTreeMap<String, ArrayD<f64>>, serde_json::Value), StateError> {
    let mut arrays = BTreeMap::new();
    let mut meta = None;
    for (key, member) in read_members(reader, file)? {
        let read_err = |reason: String| StateError::Read {
            file: file.to_string(),
            key: key.clone(),
            reason,
        };
        match member {
            Member::Bytes(bytes) if key == META_KEY => {
                let value: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| read_err(format!("not JSON: {e}")))?;
                if !value.is_object() {
                    return Err(read_err("is not a JSON object".into()));
                }
                meta = Some(value);
            }
            Member::Bytes(_) => {
                return Err(read_err(
                    "dtype '|u1' (bytes) is not supported here (want f64 '<f8', f32 '<f4' or \
                     i64 '<i8')"
                        .into(),
                ))
            }
            Member::F64(_) if key == META_KEY => {
                return Err(read_err(
                    "must be bytes (dtype '|u1'), holds numbers".into(),
                ))
            }
            Member::F64(a) => {
                arrays.insert(key, a);
            }
        }
    }
    let meta = meta.ok_or_else(|| StateError::File {
        file: file.to_string(),
        reason: format!("not a search checkpoint: no '{META_KEY}' record"),
    })?;
    Ok((arrays, meta))
}
