//! The service client's TLS configuration over the shared trust roots
//! (`ferrohub-trust`).

use std::path::Path;
use std::sync::Arc;

use crate::Error;

/// A rustls client configuration trusting the system roots and, when given,
/// every certificate in the PEM file `extra_ca`.
///
/// The native store honours `SSL_CERT_FILE`/`SSL_CERT_DIR`, so a shell set up
/// with `ferrohub env` trusts the hub even without `extra_ca`.
pub(crate) fn client_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, Error> {
    let roots = ferrohub_trust::roots(extra_ca).map_err(Error::Config)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
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
