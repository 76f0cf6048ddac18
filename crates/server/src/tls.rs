//! TLS material: a hub CA and a server certificate made on first start, or an
//! operator's own certificate.
//!
//! The CA key stays in the data dir so that the server certificate can be
//! reissued from the same CA when the set of host names changes: clients that
//! already trust `ca.pem` keep working.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::fsutil::{write_private, write_public};

/// Files the hub keeps in its data dir.
pub const CA_FILE: &str = "ca.pem";
pub(crate) const CA_KEY_FILE: &str = "ca-key.pem";
/// The system roots plus the hub's CA (Python's requests wants one bundle).
pub const CA_BUNDLE_FILE: &str = "ca-bundle.pem";
const SERVER_CERT_FILE: &str = "server.pem";
pub(crate) const SERVER_KEY_FILE: &str = "server-key.pem";
const SERVER_NAMES_FILE: &str = "server-names.json";

/// The certificate and key the listeners serve.
pub struct ServerIdentity {
    /// Leaf first, then the CA.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
    /// Path of the CA certificate clients should trust.
    pub ca_file: PathBuf,
}

/// Names every generated server certificate carries besides `--hostname`s.
fn default_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
}

/// Loads or creates the CA and server certificate in `dir` for `host_names`,
/// and (re)writes the CA bundle.
pub fn generated(dir: &Path, host_names: &[String]) -> anyhow::Result<ServerIdentity> {
    let (ca_cert_pem, ca_key) = load_or_create_ca(dir)?;
    let mut names = default_names();
    for n in host_names {
        if !names.iter().any(|m| m.eq_ignore_ascii_case(n)) {
            names.push(n.to_ascii_lowercase());
        }
    }
    let names_path = dir.join(SERVER_NAMES_FILE);
    let current: Option<Vec<String>> =
        std::fs::read(&names_path).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let have_files = dir.join(SERVER_CERT_FILE).exists() && dir.join(SERVER_KEY_FILE).exists();
    if !have_files || current.as_ref() != Some(&names) {
        issue_server_cert(dir, &ca_key, &names)?;
        write_public(&names_path, &serde_json::to_vec(&names)?)?;
        tracing::info!(?names, "issued server certificate");
    }
    write_bundle(dir, &ca_cert_pem)?;
    let mut chain = read_certs(&dir.join(SERVER_CERT_FILE))?;
    chain.extend(read_certs(&dir.join(CA_FILE))?);
    let key = read_key(&dir.join(SERVER_KEY_FILE))?;
    Ok(ServerIdentity { chain, key, ca_file: dir.join(CA_FILE) })
}

/// The operator's certificate chain and key. `ca.pem` is then whatever the
/// operator's chain ends with, so `ferrohub env` still points clients at a CA.
pub fn operator(dir: &Path, cert: &Path, key: &Path) -> anyhow::Result<ServerIdentity> {
    let chain = read_certs(cert)?;
    let key = read_key(key)?;
    let last = chain.last().context("the --tls-cert file holds no certificate")?;
    let pem = pem_encode("CERTIFICATE", last.as_ref());
    write_public(&dir.join(CA_FILE), pem.as_bytes())?;
    write_bundle(dir, &pem)?;
    Ok(ServerIdentity { chain, key, ca_file: dir.join(CA_FILE) })
}

/// A rustls server config: TLS 1.2 and 1.3, and (for MQTT) a verifier that
/// asks for client certificates.
pub fn server_config(
    identity: &ServerIdentity,
    alpn: &[&[u8]],
    client_certs: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_certs {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .context("the server certificate and key do not match")?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn load_or_create_ca(dir: &Path) -> anyhow::Result<(String, KeyPair)> {
    let cert_path = dir.join(CA_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    if cert_path.exists() && key_path.exists() {
        let cert = std::fs::read_to_string(&cert_path)?;
        let key = KeyPair::from_pem(&std::fs::read_to_string(&key_path)?).context("reading the CA key")?;
        return Ok((cert, key));
    }
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    write_public(&cert_path, cert.pem().as_bytes())?;
    tracing::info!(path = %cert_path.display(), "created hub CA");
    Ok((cert.pem(), key))
}

/// The CA's fixed parameters. Signing needs only the issuer's name and key,
/// so rebuilding these with the stored key yields the same issuer as
/// `ca.pem` without parsing it.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "ferrohub local CA");
    dn.push(DnType::OrganizationName, "ferrohub");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    params
}

fn issue_server_cert(dir: &Path, ca_key: &KeyPair, names: &[String]) -> anyhow::Result<()> {
    let ca = ca_params().self_signed(ca_key)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.iter().find(|n| n.parse::<std::net::IpAddr>().is_err()).cloned().unwrap_or_default(),
    );
    params.distinguished_name = dn;
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
        })
        .collect::<anyhow::Result<_>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    // Under 825 days would be needed for browsers; device SDKs do not check.
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, ca_key)?;
    write_private(&dir.join(SERVER_KEY_FILE), key.serialize_pem().as_bytes())?;
    write_public(&dir.join(SERVER_CERT_FILE), cert.pem().as_bytes())?;
    Ok(())
}

fn write_bundle(dir: &Path, ca_pem: &str) -> anyhow::Result<()> {
    let mut bundle = String::new();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        bundle.push_str(&pem_encode("CERTIFICATE", cert.as_ref()));
    }
    bundle.push_str(ca_pem);
    write_public(&dir.join(CA_BUNDLE_FILE), bundle.as_bytes())?;
    Ok(())
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut data.as_slice()).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    rustls_pemfile::private_key(&mut data.as_slice())?
        .with_context(|| format!("{} holds no private key", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reissues_server_cert_from_the_same_ca_when_names_change() {
        let dir = tempfile::tempdir().unwrap();
        let a = generated(dir.path(), &[]).unwrap();
        let ca_before = std::fs::read(dir.path().join(CA_FILE)).unwrap();
        let again = generated(dir.path(), &[]).unwrap();
        assert_eq!(a.chain[0], again.chain[0], "same names: same certificate");
        let b = generated(dir.path(), &["hub.example".into()]).unwrap();
        assert_ne!(a.chain[0], b.chain[0], "new name: new certificate");
        assert_eq!(ca_before, std::fs::read(dir.path().join(CA_FILE)).unwrap(), "same CA");
        let bundle = std::fs::read_to_string(dir.path().join(CA_BUNDLE_FILE)).unwrap();
        assert!(bundle.ends_with(&String::from_utf8(ca_before).unwrap()));
        assert!(server_config(&b, &[], None).is_ok());
    }
}
