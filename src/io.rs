//! Writing output files: one atomic writer for every file the crate produces (state npz,
//! gradients npz, checkpoints), and an up-front check of an output path.
//!
//! [`write_atomically`] decides by what the path is now:
//! * nothing, or a regular file (through symbolic links): the content goes to a temporary file
//!   in the same directory, which is fsynced and renamed over the path, so an interrupted
//!   write never leaves a truncated file under the final name; the temporary file is removed on
//!   every error path;
//! * a character device or a FIFO (`/dev/null`, `/dev/stdout`, a named pipe): written in place,
//!   never replaced (renaming a file over `/dev/null` would destroy it for everyone); the
//!   content is produced in memory first, since a pipe cannot seek;
//! * a directory, a socket, a block device or a dangling symbolic link: refused.

use std::fs::{File, OpenOptions};
use std::io::{Cursor, Seek, Write};
use std::path::{Path, PathBuf};

/// An output file could not be written: the path, the command-line flag it came from (when
/// known), and what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {reason}", flag.as_ref().map(|f| format!("{f} ")).unwrap_or_default(), path.display())]
pub struct OutputError {
    pub flag: Option<String>,
    pub path: PathBuf,
    pub reason: String,
}

impl OutputError {
    fn new(path: &Path, reason: impl Into<String>) -> Self {
        OutputError {
            flag: None,
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// A sink the content is written to: the temporary file, or a buffer for a device.
pub trait WriteSeek: Write + Seek {}
impl<W: Write + Seek> WriteSeek for W {}

/// What an output path is now.
enum Target {
    /// Nothing there: a new regular file at this path.
    New(PathBuf),
    /// A regular file (the path, or a symbolic link's resolved target): replaced atomically.
    Regular(PathBuf),
    /// A character device or a FIFO: written in place.
    Device,
}

fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "a regular file"
    }
}

fn target(path: &Path) -> Result<Target, OutputError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return match std::fs::symlink_metadata(path) {
                Ok(_) => Err(OutputError::new(
                    path,
                    "is a symbolic link to nothing (a dangling link); remove it or give \
                     another path",
                )),
                Err(_) => Ok(Target::New(path.to_path_buf())),
            };
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(OutputError::new(
                path,
                format!(
                    "its directory {} is not a directory (or a folder on the way is not)",
                    parent_dir(path).display()
                ),
            ))
        }
        Err(e) => return Err(OutputError::new(path, e.to_string())),
    };
    let t = meta.file_type();
    if t.is_file() {
        let is_link = std::fs::symlink_metadata(path)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        if is_link {
            let resolved = std::fs::canonicalize(path)
                .map_err(|e| OutputError::new(path, format!("resolving the link: {e}")))?;
            return Ok(Target::Regular(resolved));
        }
        return Ok(Target::Regular(path.to_path_buf()));
    }
    if t.is_char_device() || t.is_fifo() {
        return Ok(Target::Device);
    }
    Err(OutputError::new(
        path,
        format!(
            "is {}, not a regular file, character device or FIFO; give a file path",
            kind_of(&meta)
        ),
    ))
}

/// The directory a new file at `path` goes in ("." for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Removes the temporary file when dropped, unless it was renamed into place.
struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Creates a new temporary file next to `final_path` (a name no other file has).
fn create_temp(final_path: &Path) -> std::io::Result<(File, TempGuard)> {
    let dir = parent_dir(final_path);
    let stem = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let pid = std::process::id();
    let mut attempt = 0u32;
    loop {
        let tmp = dir.join(format!(".{stem}.{pid}.{attempt}.tmp"));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => {
                return Ok((
                    f,
                    TempGuard {
                        path: tmp,
                        armed: true,
                    },
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 1000 => {
                attempt += 1
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes a file at `path` with `content`, which writes the whole file to the sink it is
/// given and returns its own errors in words (they are reported after the path). See the
/// module documentation for what happens to each kind of path. Errors name the path once.
pub fn write_atomically<F>(path: &Path, content: F) -> Result<(), OutputError>
where
    F: FnOnce(&mut dyn WriteSeek) -> Result<(), String>,
{
    match target(path)? {
        Target::Device => {
            let mut buf = Cursor::new(Vec::new());
            content(&mut buf).map_err(|e| OutputError::new(path, e))?;
            let mut f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| OutputError::new(path, format!("opening for writing: {e}")))?;
            f.write_all(buf.get_ref())
                .and_then(|_| f.flush())
                .map_err(|e| OutputError::new(path, format!("writing: {e}")))
        }
        Target::New(final_path) | Target::Regular(final_path) => {
            let (mut f, mut guard) = create_temp(&final_path).map_err(|e| {
                OutputError::new(
                    path,
                    format!(
                        "cannot create a temporary file in {}: {e}",
                        parent_dir(&final_path).display()
                    ),
                )
            })?;
            content(&mut f).map_err(|e| OutputError::new(path, e))?;
            f.flush()
                .and_then(|_| f.sync_all())
                .map_err(|e| OutputError::new(path, format!("writing: {e}")))?;
            drop(f);
            std::fs::rename(&guard.path, &final_path).map_err(|e| {
                OutputError::new(
                    path,
                    format!("renaming {} into place: {e}", guard.path.display()),
                )
            })?;
            guard.armed = false;
            // Make the rename durable too (best effort: not every file system syncs
            // directories).
            if let Ok(d) = File::open(parent_dir(&final_path)) {
                let _ = d.sync_all();
            }
            Ok(())
        }
    }
}

/// Checks, before any work, that [`write_atomically`] can write `path`, given on the command
/// line as `flag` (e.g. `--out`): a character device or FIFO is accepted as it is; otherwise
/// the path must not be a directory or another non-regular file, and its directory must exist,
/// be a directory, and be writable (tested by creating and removing a file there, which also
/// catches read-only mounts). Errors name the flag and the path.
pub fn check_output_path(path: &Path, flag: &str) -> Result<(), OutputError> {
    let with_flag = |mut e: OutputError| {
        e.flag = Some(flag.to_string());
        e.path = path.to_path_buf();
        e
    };
    let final_path = match target(path).map_err(with_flag)? {
        Target::Device => return Ok(()),
        Target::New(p) | Target::Regular(p) => p,
    };
    let dir = parent_dir(&final_path);
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(m) => {
            return Err(with_flag(OutputError::new(
                path,
                format!("its directory {} is {}", dir.display(), kind_of(&m)),
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(with_flag(OutputError::new(
                path,
                format!("its directory {} does not exist", dir.display()),
            )))
        }
        Err(e) => {
            return Err(with_flag(OutputError::new(
                path,
                format!("its directory {}: {e}", dir.display()),
            )))
        }
    }
    let (f, guard) = create_temp(&final_path).map_err(|e| {
        with_flag(OutputError::new(
            path,
            format!(
                "cannot create a file in its directory {}: {e}",
                dir.display()
            ),
        ))
    })?;
    drop(f);
    drop(guard);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("darts-io-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn bytes(b: &'static [u8]) -> impl FnOnce(&mut dyn WriteSeek) -> Result<(), String> {
        move |w| w.write_all(b).map_err(|e| e.to_string())
    }

    fn is_root() -> bool {
        // The effective uid from /proc, without libc: root ignores directory permissions.
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
            })
            .unwrap_or(false)
    }

    #[test]
    fn new_and_existing_regular_files_are_replaced_whole() {
        let d = dir("regular");
        let p = d.join("out.npz");
        write_atomically(&p, bytes(b"first")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        write_atomically(&p, bytes(b"second, longer")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second, longer");
        assert_eq!(entries(&d), ["out.npz"]);
    }

    #[test]
    fn a_failing_writer_leaves_the_old_file_and_no_temporary() {
        let d = dir("failing");
        let p = d.join("out.npz");
        write_atomically(&p, bytes(b"good")).unwrap();
        let e = write_atomically(&p, |w| {
            w.write_all(b"partial").map_err(|e| e.to_string())?;
            Err("array 'sd/x': shape mismatch".into())
        })
        .unwrap_err();
        let msg = e.to_string();
        assert_eq!(
            msg,
            format!("{}: array 'sd/x': shape mismatch", p.display())
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"good");
        assert_eq!(entries(&d), ["out.npz"]);
    }

    #[test]
    fn a_symlink_to_a_regular_file_replaces_the_target_and_keeps_the_link() {
        let d = dir("symlink");
        let real = d.join("real.npz");
        std::fs::write(&real, b"old").unwrap();
        let link = d.join("link.npz");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomically(&link, bytes(b"new")).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        let dangling = d.join("dangling.npz");
        std::os::unix::fs::symlink(d.join("nothing"), &dangling).unwrap();
        let e = write_atomically(&dangling, bytes(b"x")).unwrap_err();
        assert!(e.to_string().contains("dangling"), "{e}");
    }

    #[test]
    fn dev_null_is_written_in_place_and_survives() {
        use std::os::unix::fs::FileTypeExt;
        write_atomically(Path::new("/dev/null"), bytes(b"discarded")).unwrap();
        let m = std::fs::metadata("/dev/null").unwrap();
        assert!(m.file_type().is_char_device(), "/dev/null was replaced");
        check_output_path(Path::new("/dev/null"), "--out").unwrap();
    }

    #[test]
    fn dev_full_reports_no_space_with_the_path() {
        if !Path::new("/dev/full").exists() {
            println!("SKIP dev_full_reports_no_space_with_the_path: no /dev/full");
            return;
        }
        let e = write_atomically(Path::new("/dev/full"), bytes(b"x"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/dev/full: writing: "), "{e}");
        assert!(e.contains("No space left on device"), "{e}");
    }

    #[test]
    fn a_fifo_is_written_in_place() {
        use std::os::unix::fs::FileTypeExt;
        let d = dir("fifo");
        let p = d.join("pipe");
        let made = std::process::Command::new("mkfifo").arg(&p).status();
        if !made.is_ok_and(|s| s.success()) {
            println!("SKIP a_fifo_is_written_in_place: mkfifo failed");
            return;
        }
        let reader = {
            let p = p.clone();
            std::thread::spawn(move || std::fs::read(p).unwrap())
        };
        write_atomically(&p, bytes(b"through the pipe")).unwrap();
        assert_eq!(reader.join().unwrap(), b"through the pipe");
        assert!(std::fs::metadata(&p).unwrap().file_type().is_fifo());
        assert_eq!(entries(&d), ["pipe"]);
        check_output_path(&p, "--out").unwrap();
    }

    #[test]
    fn a_directory_is_refused() {
        let d = dir("directory");
        let e = write_atomically(&d, bytes(b"x")).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: is a directory, not a regular file, character device or FIFO; give a file \
                 path",
                d.display()
            )
        );
        let e = check_output_path(&d, "--out").unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("--out {}: is a directory", d.display())),
            "{e}"
        );
        assert!(entries(&d).is_empty());
    }

    #[test]
    fn check_output_path_cases() {
        let d = dir("check");
        check_output_path(&d.join("new.npz"), "--out").unwrap();
        assert!(entries(&d).is_empty(), "the probe file was left behind");
        std::fs::write(d.join("old.npz"), b"x").unwrap();
        check_output_path(&d.join("old.npz"), "--out").unwrap();
        let e = check_output_path(&d.join("missing/new.npz"), "--out")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "--out {}: its directory {} does not exist",
                d.join("missing/new.npz").display(),
                d.join("missing").display()
            )
        );
        let e = check_output_path(&d.join("old.npz/new.npz"), "--state-out")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--state-out "), "{e}");
        assert!(e.contains("old.npz is not a directory"), "{e}");
    }

    /// Root ignores directory permissions, so this case runs only for other users (it prints a
    /// `SKIP` line as root).
    #[test]
    fn a_read_only_directory_is_reported_before_any_work() {
        use std::os::unix::fs::PermissionsExt;
        if is_root() {
            println!(
                "SKIP a_read_only_directory_is_reported_before_any_work: running as root, \
                 which may write to a read-only directory"
            );
            return;
        }
        let d = dir("readonly");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o555)).unwrap();
        let p = d.join("out.npz");
        let e = check_output_path(&p, "--out").unwrap_err().to_string();
        let w = write_atomically(&p, bytes(b"x")).unwrap_err().to_string();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(e.contains("cannot create a file in its directory"), "{e}");
        assert!(w.contains("cannot create a temporary file"), "{w}");
        assert!(entries(&d).is_empty());
    }
}
