//! TLS client configuration: the system's roots plus an optional extra CA
//! file, and an optional client certificate for X.509 devices.

use std::path::Path;
use std::sync::Arc;

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
            let chain = ferrohub_trust::read_certs(cert_path, "certificate").map_err(Error::Config)?;
            let key = ferrohub_trust::read_key(key_path).map_err(Error::Config)?;
            Some((chain, key, cert_path, key_path))
        }
        None => None,
    };
    let roots = ferrohub_trust::roots(extra_ca).map_err(Error::Config)?;
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
