//! Small file helpers: secrets are written 0600, atomically.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Files in the data dir that hold secrets: device and policy keys (the
/// database, the policies), the TLS and firmware signing keys.
pub(crate) const SECRET_FILES: [&str; 5] = [
    crate::DB_FILE,
    crate::policies::POLICIES_FILE,
    crate::tls::CA_KEY_FILE,
    crate::tls::SERVER_KEY_FILE,
    crate::hub::firmware::SIGNING_KEY_FILE,
];

/// Refuses to serve from a data dir that other users can open, or with a
/// secret file they can read: device and policy keys would leak to anyone
/// on the machine. The hub creates both owner-only; this catches a
/// directory an operator made (`mkdir` gives 0755) or a copied file.
pub(crate) fn check_private(dir: &Path) -> anyhow::Result<()> {
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "the data dir {} is open to other users (mode {mode:04o}); it holds device and policy keys: run `chmod 700 {}`",
            dir.display(),
            dir.display()
        );
    }
    for name in SECRET_FILES {
        let path = dir.join(name);
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "{} is open to other users (mode {mode:04o}); it holds secrets: run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
    Ok(())
}

fn write_mode(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename itself is durable only once the directory is synced.
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

/// Writes a secret: mode 0600, replaced atomically.
pub(crate) fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_mode(path, data, 0o600)
}

/// Writes a public file: mode 0644, replaced atomically.
pub(crate) fn write_public(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_mode(path, data, 0o644)
}

/// Creates the data dir with mode 0700. An existing directory is left as
/// the operator made it.
pub(crate) fn create_private_dir(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// Creates an empty owner-only file if none exists.
pub(crate) fn touch_private(path: &Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn an_open_data_dir_or_secret_file_is_refused_with_the_fix() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        create_private_dir(&dir).unwrap();
        write_private(&dir.join("policies.json"), b"[]").unwrap();
        write_public(&dir.join("ca.pem"), b"public").unwrap();
        check_private(&dir).unwrap();

        chmod(&dir, 0o755);
        let e = check_private(&dir).unwrap_err().to_string();
        assert!(e.contains("mode 0755") && e.contains("chmod 700"), "{e}");

        chmod(&dir, 0o700);
        chmod(&dir.join("policies.json"), 0o644);
        let e = check_private(&dir).unwrap_err().to_string();
        assert!(e.contains("policies.json") && e.contains("chmod 600"), "{e}");
    }
}
