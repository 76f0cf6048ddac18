//! Client certificates on both listeners: asked for, never required. On
//! the HTTPS listener `https_conn` records the certificate a client
//! presented (if any) as a request extension, so that MQTT over WebSockets
//! can authenticate `selfSigned` devices as the TCP endpoint does. Service
//! API clients present none and are unaffected.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The DER certificate the TLS client presented, if any.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerCertificate(pub(crate) Option<Arc<Vec<u8>>>);

/// Asks every TLS client for a certificate without checking its chain, so
/// that `selfSigned` devices can present theirs and a wrong one is refused
/// in MQTT (CONNACK 0x05), not by a TLS alert. The handshake signature is
/// still verified, so a client proves it holds the certificate's key.
#[derive(Debug)]
pub(crate) struct AnyClientCert {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl AnyClientCert {
    pub(crate) fn new() -> Self {
        Self { algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms }
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
