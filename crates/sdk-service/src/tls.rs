//! Trust roots: the system's native roots plus an optional extra CA file.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::Error;

/// A rustls client configuration trusting the system roots and, when given,
/// every certificate in the PEM file `extra_ca`.
///
/// The native store honours `SSL_CERT_FILE`/`SSL_CERT_DIR`, so a shell set up
/// with `ferrohub env` trusts the hub even without `extra_ca`.
pub(crate) fn client_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, Error> {
    let mut roots = RootCertStore::empty();
    // Unreadable or unparsable system certificates are skipped rather than
    // fatal: one odd file in /etc/ssl must not make the hub unreachable.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        for cert in read_pem_certs(path)? {
            roots.add(cert).map_err(|e| {
                Error::Config(format!("CA file {}: unusable certificate: {e}", path.display()))
            })?;
        }
    }
    if roots.is_empty() {
        return Err(Error::Config(
            "no trusted CA certificates: the system store is empty and no CA file was given".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Config(format!("cannot read CA file {}: {e}", path.display())))?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("CA file {} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!("CA file {} holds no certificate", path.display())));
    }
    Ok(certs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_ca_files_are_config_errors() {
        let dir = std::env::temp_dir().join(format!("ferrohub-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        assert!(matches!(client_config(Some(&missing)), Err(Error::Config(m)) if m.contains("cannot read")));
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(matches!(client_config(Some(&empty)), Err(Error::Config(m)) if m.contains("no certificate")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
