//! Search checkpoints: one npz file holding every tensor (weights, BN buffers, alphas, SGD
//! momentum buffers, Adam moments) plus a JSON record of everything else (configuration,
//! epoch and step, RNG and sampler state, optimiser counters), written atomically (temporary
//! file, fsync, rename) so an interrupted write never replaces the last good checkpoint.

use crate::darts::params::{read_npz, StateError};
use ndarray::{Array1, ArrayD};
use ndarray_npy::{NpzReader, NpzWriter};
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
    let err = |e: String| StateError::File {
        file: file.clone(),
        reason: e,
    };
    let f = File::open(path).map_err(|e| err(e.to_string()))?;
    let mut npz = NpzReader::new(f).map_err(|e| err(format!("not a checkpoint: {e}")))?;
    let bytes: Array1<u8> = npz
        .by_name(META_KEY)
        .map_err(|e| err(format!("no {META_KEY} record: {e}")))?;
    let meta = serde_json::from_slice(bytes.as_slice().unwrap_or(&[]))
        .map_err(|e| err(format!("{META_KEY}: {e}")))?;
    let mut arrays = read_npz(path)?;
    arrays.remove(META_KEY);
    Ok((arrays, meta))
}
