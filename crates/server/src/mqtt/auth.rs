//! Who is connecting: the CONNECT packet's credentials checked against the
//! registry — a SAS token (device key or a DeviceConnect policy), or for
//! `selfSigned` devices the TLS client certificate's thumbprint.

use ferrohub_core::identity::{AuthenticationType, DeviceStatus};
use ferrohub_core::ErrorCode;
use ferrohub_mqtt::v4::{Connect, ConnectReturnCode};
use sha1::Digest as _;

use crate::hub::Hub;

/// An accepted CONNECT.
pub(crate) struct Authenticated {
    /// The device.
    pub(crate) device_id: String,
    /// When the token expires (Unix seconds); none for certificates.
    pub(crate) expires: Option<i64>,
}

/// Hex thumbprints (SHA-1 and SHA-256) of a DER certificate, upper case.
pub(crate) fn thumbprints(der: &[u8]) -> [String; 2] {
    [hex::encode_upper(sha1::Sha1::digest(der)), hex::encode_upper(sha2::Sha256::digest(der))]
}

const REFUSED: ConnectReturnCode = ConnectReturnCode::NotAuthorized;

/// Checks a CONNECT. Every refusal is CONNACK 0x05, as IoT Hub answers; the
/// reason is logged, not sent.
pub(crate) async fn authenticate(
    state: &Hub,
    connect: &Connect,
    client_cert: Option<&[u8]>,
) -> Result<Authenticated, ConnectReturnCode> {
    let refuse = |why: &str| {
        tracing::info!(client_id = %connect.client_id, why, "CONNECT refused");
        REFUSED
    };
    let login = connect.login.as_ref().ok_or_else(|| refuse("no username"))?;
    let username =
        ferrohub_mqtt::username::parse_username(&login.username).map_err(|_| refuse("bad username"))?;
    let device_id = connect.client_id.as_str();
    if username.device_id != device_id {
        return Err(refuse("the username names another device than the client id"));
    }
    let device = match state.registry.get_device(device_id).await {
        Ok(d) => d,
        Err(e) if e.code == ErrorCode::DeviceNotFound => return Err(refuse("unknown device")),
        Err(e) => {
            tracing::error!(%e, "hub failure during CONNECT");
            return Err(ConnectReturnCode::ServiceUnavailable);
        }
    };
    if device.status == DeviceStatus::Disabled {
        return Err(refuse("device disabled"));
    }
    let auth = &device.authentication;
    if !login.password.is_empty() {
        let expiry = state.auth.authorize_device(&login.password, &device).map_err(|e| refuse(&e.message))?;
        return Ok(Authenticated { device_id: device_id.to_owned(), expires: Some(expiry) });
    }
    match (auth.kind, client_cert) {
        (AuthenticationType::SelfSigned, Some(der)) => {
            let presented = thumbprints(der);
            let registered =
                [&auth.x509_thumbprint.primary_thumbprint, &auth.x509_thumbprint.secondary_thumbprint];
            let ok =
                registered.into_iter().flatten().any(|r| presented.iter().any(|p| p.eq_ignore_ascii_case(r)));
            if ok {
                Ok(Authenticated { device_id: device_id.to_owned(), expires: None })
            } else {
                Err(refuse("client certificate thumbprint does not match"))
            }
        }
        _ => Err(refuse("no password and no matching client certificate")),
    }
}
