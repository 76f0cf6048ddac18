//! The TLS trust every ferrohub client shares (the service client, the
//! device client and what is built on them): the system's roots plus,
//! when given, the hub's CA file (`DIR/ca.pem`), and the PEM readers for
//! certificates and keys. One home, so the rules and their error texts
//! are the same for every client.
//!
//! The native store honours `SSL_CERT_FILE`/`SSL_CERT_DIR`, so a shell set
//! up with `ferrohub env` trusts the hub even without an extra CA file.

use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// The trust roots: the system's and every certificate of `extra_ca`.
/// Unreadable or unparsable system certificates are skipped rather than
/// fatal — one odd file in /etc/ssl must not make the hub unreachable —
/// but an extra CA file that cannot be used is an error, and so is an
/// empty result.
pub fn roots(extra_ca: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = extra_ca {
        for cert in read_certs(path, "CA")? {
            roots.add(cert).map_err(|e| format!("CA file {}: unusable certificate: {e}", path.display()))?;
        }
    }
    if roots.is_empty() {
        return Err("no trusted CA certificates: the system store is empty and no CA file was given".into());
    }
    Ok(roots)
}

/// The certificates of a PEM file; `what` names the file in errors ("CA",
/// "certificate").
pub fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_file(path, what)?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} file {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} file {} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read_file(path, "key")?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .map_err(|e| format!("key file {} is not valid PEM: {e}", path.display()))?
        .ok_or_else(|| format!("key file {} holds no private key", path.display()))
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn unusable_files_are_errors_that_name_them() {
        let dir = std::env::temp_dir().join(format!("ferrohub-trust-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        assert!(roots(Some(&missing)).unwrap_err().contains("cannot read CA file"));
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        assert!(roots(Some(&junk)).unwrap_err().contains("holds no certificate"));
        assert!(read_key(&junk).unwrap_err().contains("holds no private key"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
