//! TLS client configuration: the system's roots plus an optional extra CA
//! file, and an optional client certificate for X.509 devices.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::Error;

/// A rustls client configuration (ring provider, TLS 1.2 and 1.3) trusting
/// the system's roots and, when given, every certificate in the PEM file
/// `extra_ca` (ferrohub's `DIR/ca.pem`). With `client_cert` (certificate
/// chain PEM, private key PEM) the client presents that certificate, as
/// `x509=true` devices do.
///
/// Building one reads the system store, so programs running many clients
/// build it once and pass it in
/// [`DeviceOptions::tls_config`](crate::DeviceOptions::tls_config).
///
/// The native store honours `SSL_CERT_FILE`/`SSL_CERT_DIR`, so a shell set
/// up with `ferrohub env` trusts the hub even without `extra_ca`.
pub fn tls_config(
    extra_ca: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let client_auth = match client_cert {
        Some((cert_path, key_path)) => {
            Some((read_pem_certs(cert_path, "certificate")?, read_pem_key(key_path)?, cert_path, key_path))
        }
        None => None,
    };
    let mut roots = RootCertStore::empty();
    // Unreadable or unparsable system certificates are skipped rather than
    // fatal: one odd file in /etc/ssl must not make the hub unreachable.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        for cert in read_pem_certs(path, "CA")? {
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
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots);
    let config = match client_auth {
        None => builder.with_no_client_auth(),
        Some((chain, key, cert_path, key_path)) => {
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                Error::Config(format!(
                    "client certificate {} and key {} do not work together: {e}",
                    cert_path.display(),
                    key_path.display()
                ))
            })?
        }
    };
    Ok(Arc::new(config))
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Config(format!("cannot read {what} file {}: {e}", path.display())))
}

fn read_pem_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = read_file(path, what)?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("{what} file {} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!("{what} file {} holds no certificate", path.display())));
    }
    Ok(certs)
}

fn read_pem_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let bytes = read_file(path, "key")?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .map_err(|e| Error::Config(format!("key file {} is not valid PEM: {e}", path.display())))?
        .ok_or_else(|| Error::Config(format!("key file {} holds no private key", path.display())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ferrohub-device-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn missing_and_empty_files_are_config_errors() {
        let dir = temp_dir("files");
        let missing = dir.join("missing.pem");
        let err = |r: Result<Arc<rustls::ClientConfig>, Error>| match r {
            Err(Error::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        };
        assert!(err(tls_config(Some(&missing), None)).contains("cannot read CA file"));
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(err(tls_config(Some(&empty), None)).contains("no certificate"));
        assert!(err(tls_config(None, Some((&empty, &empty)))).contains("no certificate"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
