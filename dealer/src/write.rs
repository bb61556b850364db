//! Writing a dealt cluster to a directory, so that an interrupted run never looks valid.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use fides_types::NodeIndex;

use crate::rsa_key::ROOT_CERTIFICATE_FILE_NAME;
use crate::{Cluster, DealerError};

/// Name of the public cluster file.
pub const CLUSTER_FILE_NAME: &str = "cluster.toml";

/// Mode of replica files: they hold secrets.
const REPLICA_FILE_MODE: u32 = 0o600;
/// Mode of the cluster file: public.
const CLUSTER_FILE_MODE: u32 = 0o644;
/// Mode of an output directory the dealer creates.
const DIR_MODE: u32 = 0o700;

/// Name of replica `index`'s private file: `replica-<index>.toml`.
pub fn replica_file_name(index: NodeIndex) -> String {
    format!("replica-{}.toml", index.0)
}

/// The index in a replica file name, if `name` is one.
pub(crate) fn replica_file_index(name: &str) -> Option<Option<u32>> {
    let middle = name.strip_prefix("replica-")?.strip_suffix(".toml")?;
    Some(middle.parse().ok().filter(|_| middle.bytes().all(|b| b.is_ascii_digit())))
}

/// Whether `name` is a temporary file of an interrupted write.
pub(crate) fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Write `cluster` to `dir`: `replica-<i>.toml` for each replica (mode 0600, created with that
/// mode), then `ca-root.pem` if the cluster has a root certificate (mode 0644), then
/// `cluster.toml`. Returns the paths written, the cluster file last.
///
/// `dir` is created (mode 0700) if missing. If it has anything in it, this refuses unless `force`;
/// with `force` it first removes the cluster file, the replica files and leftover temporary files
/// of an earlier run, and leaves any other file alone. Each file is written to a temporary file
/// in `dir`, synced and renamed into place; the cluster file comes last, so an interrupted run
/// leaves no `cluster.toml` and `verify` fails on it.
pub fn write(dir: &Path, cluster: &Cluster, force: bool) -> Result<Vec<PathBuf>, DealerError> {
    prepare_dir(dir, force)?;
    let mut written = Vec::with_capacity(cluster.replicas().len() + 1);
    for replica in cluster.replicas() {
        let path = dir.join(replica_file_name(replica.index()));
        write_atomically(dir, &path, &replica.to_toml(), REPLICA_FILE_MODE)?;
        written.push(path);
    }
    if let Some(pem) = cluster.root_certificate() {
        let path = dir.join(ROOT_CERTIFICATE_FILE_NAME);
        write_atomically(dir, &path, pem, CLUSTER_FILE_MODE)?;
        written.push(path);
    }
    sync_dir(dir)?;
    let path = dir.join(CLUSTER_FILE_NAME);
    write_atomically(dir, &path, &cluster.public().to_toml(), CLUSTER_FILE_MODE)?;
    sync_dir(dir)?;
    written.push(path);
    Ok(written)
}

/// Whether [`write()`] can write to `dir` (missing, empty, or `force`), checked without changing
/// anything: so that a slow deal is not refused only at the end.
pub fn check_writable(dir: &Path, force: bool) -> Result<(), DealerError> {
    match fs::metadata(dir) {
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
        Err(error) => Err(DealerError::io(dir, error)),
        Ok(metadata) if !metadata.is_dir() => {
            Err(DealerError::io(dir, std::io::Error::other("exists and is not a directory")))
        }
        Ok(_) if !force && !entry_names(dir)?.is_empty() => Err(DealerError::DirNotEmpty { path: dir.into() }),
        Ok(_) => Ok(()),
    }
}

fn prepare_dir(dir: &Path, force: bool) -> Result<(), DealerError> {
    match fs::metadata(dir) {
        Err(error) if error.kind() == ErrorKind::NotFound => {
            return DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(|error| DealerError::io(dir, error));
        }
        Err(error) => return Err(DealerError::io(dir, error)),
        Ok(metadata) if !metadata.is_dir() => {
            return Err(DealerError::io(dir, std::io::Error::other("exists and is not a directory")));
        }
        Ok(_) => {}
    }
    let names = entry_names(dir)?;
    if names.is_empty() {
        return Ok(());
    }
    if !force {
        return Err(DealerError::DirNotEmpty { path: dir.into() });
    }
    // The cluster file goes first: from here on the directory does not look like a cluster.
    remove_if_present(&dir.join(CLUSTER_FILE_NAME))?;
    remove_if_present(&dir.join(ROOT_CERTIFICATE_FILE_NAME))?;
    for name in names {
        if replica_file_index(&name).is_some() || is_temporary(&name) {
            remove_if_present(&dir.join(name))?;
        }
    }
    sync_dir(dir)
}

/// Names of the entries of `dir` that are valid UTF-8 (others are never ours).
pub(crate) fn entry_names(dir: &Path) -> Result<Vec<String>, DealerError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|error| DealerError::io(dir, error))? {
        let entry = entry.map_err(|error| DealerError::io(dir, error))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

fn remove_if_present(path: &Path) -> Result<(), DealerError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != ErrorKind::NotFound => Err(DealerError::io(path, error)),
        _ => Ok(()),
    }
}

fn write_atomically(dir: &Path, path: &Path, text: &str, mode: u32) -> Result<(), DealerError> {
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = dir.join(format!(".{name}.tmp"));
    remove_if_present(&temporary)?;
    let result = write_new(&temporary, text, mode)
        .and_then(|()| fs::rename(&temporary, path).map_err(|error| DealerError::io(path, error)));
    if result.is_err() {
        // Best effort: the error being reported matters more than a leftover temporary file.
        let _ = fs::remove_file(&temporary);
    }
    result
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), DealerError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|error| DealerError::io(path, error))?;
    file.write_all(text.as_bytes()).map_err(|error| DealerError::io(path, error))?;
    file.sync_all().map_err(|error| DealerError::io(path, error))
}

fn sync_dir(dir: &Path) -> Result<(), DealerError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|error| DealerError::io(dir, error))
}
