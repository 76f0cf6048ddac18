//! `ferrohub device-identity ...`.

use anyhow::{bail, Context as _};
use base64::Engine as _;
use ferrohub_core::connection_string::ConnectionString;
use ferrohub_service_client::{
    Authentication, AuthenticationType, Capabilities, Device, DeviceStatus, NewDevice, SymmetricKey,
    X509Thumbprint,
};
use rand::RngCore as _;
use serde_json::json;

use super::args::{
    AuthArgs, AuthMethod, DeviceConnectionStringArgs, DeviceConnectionStringCommand, DeviceCreateArgs,
    DeviceIdentityCommand, KeyType, RenewKeyArgs, RenewKeyType, StatusArg,
};
use super::context::Context;
use super::generic_update::{apply_set, parse_set};
use super::Outcome;

/// Runs one `device-identity` subcommand.
pub(crate) async fn run(command: DeviceIdentityCommand) -> anyhow::Result<Outcome> {
    match command {
        DeviceIdentityCommand::Create(args) => create(args).await,
        DeviceIdentityCommand::Show(args) => {
            let ctx = Context::resolve(&args.common)?;
            let device = ctx.client()?.get_device(&args.device_id).await?;
            Outcome::value(&ctx, &device)
        }
        DeviceIdentityCommand::List(args) => {
            let ctx = Context::resolve(&args.common)?;
            let top = match args.top {
                None | Some(-1) => None,
                Some(n) if n > 0 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
                Some(n) => bail!("--top must be a positive number or -1, got {n}"),
            };
            let devices = ctx.client()?.list_devices(top).await?;
            Outcome::value(&ctx, &devices)
        }
        DeviceIdentityCommand::Update(args) => {
            let ctx = Context::resolve(&args.common)?;
            let client = ctx.client()?;
            let current = client.get_device(&args.device_id).await?;
            let mut doc = serde_json::to_value(&current)?;
            for expr in &args.set {
                apply_set(&mut doc, &parse_set(expr)?)?;
            }
            let mut device: Device =
                serde_json::from_value(doc).context("the --set values do not fit a device")?;
            if let Some(status) = args.status {
                device.status = status_of(status);
            }
            if let Some(reason) = args.status_reason {
                device.status_reason = Some(reason);
            }
            if let Some(edge) = args.edge_enabled {
                device.capabilities.iot_edge = edge;
            }
            if let Some(auth) = authentication_update(&args.auth, &device.authentication)? {
                device.authentication = auth;
            }
            let etag = args.etag.as_deref().unwrap_or("*");
            let updated = client.update_device(&device, etag).await?;
            Outcome::value(&ctx, &updated)
        }
        DeviceIdentityCommand::Delete(args) => {
            let ctx = Context::resolve(&args.common)?;
            ctx.client()?.delete_device(&args.device_id, args.etag.as_deref().unwrap_or("*")).await?;
            Ok(Outcome::Nothing)
        }
        DeviceIdentityCommand::ConnectionString(DeviceConnectionStringCommand::Show(args))
        | DeviceIdentityCommand::ShowConnectionString(args) => connection_string(args).await,
        DeviceIdentityCommand::RenewKey(args) => renew_key(args).await,
    }
}

fn status_of(status: StatusArg) -> DeviceStatus {
    match status {
        StatusArg::Enabled => DeviceStatus::Enabled,
        StatusArg::Disabled => DeviceStatus::Disabled,
    }
}

async fn create(args: DeviceCreateArgs) -> anyhow::Result<Outcome> {
    let ctx = Context::resolve(&args.common)?;
    let device = NewDevice {
        device_id: args.device_id,
        status: args.status.map(status_of),
        status_reason: args.status_reason,
        authentication: Some(authentication_for_create(&args.auth)?),
        capabilities: args.edge_enabled.map(|iot_edge| Capabilities { iot_edge }),
    };
    let created = ctx.client()?.create_device(&device).await?;
    Outcome::value(&ctx, &created)
}

/// The `authentication` block of a new device from az's flags.
pub(crate) fn authentication_for_create(auth: &AuthArgs) -> anyhow::Result<Authentication> {
    let method = auth.auth_method.unwrap_or(if auth.primary_thumbprint.is_some() {
        AuthMethod::X509Thumbprint
    } else {
        AuthMethod::SharedPrivateKey
    });
    build_authentication(method, auth)
}

/// The new `authentication` block for an update, or `None` when no
/// credential flag was given.
fn authentication_update(
    auth: &AuthArgs,
    current: &Authentication,
) -> anyhow::Result<Option<Authentication>> {
    let any = auth.auth_method.is_some()
        || auth.primary_key.is_some()
        || auth.secondary_key.is_some()
        || auth.primary_thumbprint.is_some()
        || auth.secondary_thumbprint.is_some();
    if !any {
        return Ok(None);
    }
    let method = auth.auth_method.unwrap_or(match current.kind {
        AuthenticationType::SelfSigned => AuthMethod::X509Thumbprint,
        AuthenticationType::CertificateAuthority => AuthMethod::X509Ca,
        AuthenticationType::Sas | AuthenticationType::None => AuthMethod::SharedPrivateKey,
    });
    let mut merged = AuthArgs {
        auth_method: Some(method),
        primary_key: auth.primary_key.clone(),
        secondary_key: auth.secondary_key.clone(),
        primary_thumbprint: auth.primary_thumbprint.clone(),
        secondary_thumbprint: auth.secondary_thumbprint.clone(),
    };
    // Keep what the flags do not replace (empty keys are kept by the hub too).
    if method == AuthMethod::X509Thumbprint && current.kind == AuthenticationType::SelfSigned {
        merged.primary_thumbprint =
            merged.primary_thumbprint.or_else(|| current.x509_thumbprint.primary_thumbprint.clone());
        merged.secondary_thumbprint =
            merged.secondary_thumbprint.or_else(|| current.x509_thumbprint.secondary_thumbprint.clone());
    }
    build_authentication(method, &merged).map(Some)
}

fn build_authentication(method: AuthMethod, auth: &AuthArgs) -> anyhow::Result<Authentication> {
    let keys_given = auth.primary_key.is_some() || auth.secondary_key.is_some();
    let thumbs_given = auth.primary_thumbprint.is_some() || auth.secondary_thumbprint.is_some();
    match method {
        AuthMethod::SharedPrivateKey => {
            if thumbs_given {
                bail!("thumbprints need --auth-method x509_thumbprint");
            }
            Ok(Authentication {
                kind: AuthenticationType::Sas,
                symmetric_key: SymmetricKey {
                    primary_key: auth.primary_key.clone().unwrap_or_default(),
                    secondary_key: auth.secondary_key.clone().unwrap_or_default(),
                },
                x509_thumbprint: X509Thumbprint::default(),
            })
        }
        AuthMethod::X509Thumbprint => {
            if keys_given {
                bail!("keys need --auth-method shared_private_key");
            }
            if auth.primary_thumbprint.is_none() {
                bail!("--auth-method x509_thumbprint needs --primary-thumbprint (--ptp)");
            }
            Ok(Authentication {
                kind: AuthenticationType::SelfSigned,
                symmetric_key: SymmetricKey::default(),
                x509_thumbprint: X509Thumbprint {
                    primary_thumbprint: auth.primary_thumbprint.clone(),
                    secondary_thumbprint: auth.secondary_thumbprint.clone(),
                },
            })
        }
        AuthMethod::X509Ca => {
            if keys_given || thumbs_given {
                bail!("--auth-method x509_ca takes neither keys nor thumbprints");
            }
            Ok(Authentication {
                kind: AuthenticationType::CertificateAuthority,
                symmetric_key: SymmetricKey::default(),
                x509_thumbprint: X509Thumbprint::default(),
            })
        }
    }
}

/// A device's connection string as az prints it.
pub(crate) fn device_connection_string(
    host: &str,
    device: &Device,
    key_type: KeyType,
) -> anyhow::Result<String> {
    match device.authentication.kind {
        AuthenticationType::Sas => {
            let keys = &device.authentication.symmetric_key;
            let key = match key_type {
                KeyType::Primary => &keys.primary_key,
                KeyType::Secondary => &keys.secondary_key,
            };
            Ok(ConnectionString::for_device(host, &device.device_id, key).to_string())
        }
        AuthenticationType::SelfSigned | AuthenticationType::CertificateAuthority => Ok(ConnectionString {
            host_name: host.to_owned(),
            device_id: Some(device.device_id.clone()),
            x509: true,
            ..ConnectionString::default()
        }
        .to_string()),
        AuthenticationType::None => bail!("device '{}' has no credentials of its own", device.device_id),
    }
}

async fn connection_string(args: DeviceConnectionStringArgs) -> anyhow::Result<Outcome> {
    let ctx = Context::resolve(&args.common)?;
    let device = ctx.client()?.get_device(&args.device_id).await?;
    let cs = device_connection_string(ctx.host(), &device, args.key_type)?;
    Outcome::value(&ctx, &json!({ "connectionString": cs }))
}

/// A new random symmetric key: 32 bytes, base64 (what Azure issues).
pub(crate) fn new_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The device with its keys renewed as asked.
pub(crate) fn renewed(
    mut device: Device,
    key_type: RenewKeyType,
    new_key: impl FnOnce() -> String,
) -> anyhow::Result<Device> {
    if device.authentication.kind != AuthenticationType::Sas {
        bail!("device '{}' does not use symmetric keys (authentication type must be sas)", device.device_id);
    }
    let keys = &mut device.authentication.symmetric_key;
    match key_type {
        RenewKeyType::Primary => keys.primary_key = new_key(),
        RenewKeyType::Secondary => keys.secondary_key = new_key(),
        RenewKeyType::Swap => std::mem::swap(&mut keys.primary_key, &mut keys.secondary_key),
    }
    Ok(device)
}

async fn renew_key(args: RenewKeyArgs) -> anyhow::Result<Outcome> {
    let ctx = Context::resolve(&args.common)?;
    let client = ctx.client()?;
    let current = client.get_device(&args.device_id).await?;
    let etag = current.etag.clone();
    let device = renewed(current, args.key_type, new_key)?;
    // The etag guards against a concurrent change between our read and write.
    let updated = client.update_device(&device, &etag).await?;
    Outcome::value(&ctx, &updated)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn device(kind: AuthenticationType) -> Device {
        serde_json::from_value(json!({
            "deviceId": "d1", "generationId": "g", "etag": "e", "connectionState": "Disconnected",
            "status": "enabled", "statusReason": null,
            "connectionStateUpdatedTime": "0001-01-01T00:00:00Z", "statusUpdatedTime": "0001-01-01T00:00:00Z",
            "lastActivityTime": "0001-01-01T00:00:00Z", "cloudToDeviceMessageCount": 0,
            "authentication": {"type": kind, "symmetricKey": {"primaryKey": "P", "secondaryKey": "S"},
                               "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null}},
            "capabilities": {"iotEdge": false}
        }))
        .unwrap()
    }

    #[test]
    fn new_keys_are_32_random_bytes() {
        let (a, b) = (new_key(), new_key());
        assert_ne!(a, b);
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(&a).unwrap().len(), 32);
    }

    #[test]
    fn renew_replaces_one_key_or_swaps() {
        let d = renewed(device(AuthenticationType::Sas), RenewKeyType::Primary, || "N".into()).unwrap();
        assert_eq!(
            (
                d.authentication.symmetric_key.primary_key.as_str(),
                d.authentication.symmetric_key.secondary_key.as_str()
            ),
            ("N", "S")
        );
        let d = renewed(device(AuthenticationType::Sas), RenewKeyType::Secondary, || "N".into()).unwrap();
        assert_eq!(d.authentication.symmetric_key.secondary_key, "N");
        let d = renewed(device(AuthenticationType::Sas), RenewKeyType::Swap, || unreachable!()).unwrap();
        assert_eq!(d.authentication.symmetric_key.primary_key, "S");
        assert!(renewed(device(AuthenticationType::SelfSigned), RenewKeyType::Swap, String::new).is_err());
    }

    #[test]
    fn connection_strings_pick_the_key_or_say_x509() {
        let d = device(AuthenticationType::Sas);
        assert_eq!(
            device_connection_string("h", &d, KeyType::Primary).unwrap(),
            "HostName=h;DeviceId=d1;SharedAccessKey=P"
        );
        assert_eq!(
            device_connection_string("h", &d, KeyType::Secondary).unwrap(),
            "HostName=h;DeviceId=d1;SharedAccessKey=S"
        );
        let d = device(AuthenticationType::SelfSigned);
        assert_eq!(
            device_connection_string("h", &d, KeyType::Primary).unwrap(),
            "HostName=h;DeviceId=d1;x509=true"
        );
    }

    #[test]
    fn create_flags_become_an_authentication_block() {
        let auth = authentication_for_create(&AuthArgs::default()).unwrap();
        assert_eq!(auth.kind, AuthenticationType::Sas);
        assert_eq!(auth.symmetric_key.primary_key, "");
        let thumbs = AuthArgs { primary_thumbprint: Some("AB".into()), ..Default::default() };
        assert_eq!(authentication_for_create(&thumbs).unwrap().kind, AuthenticationType::SelfSigned);
        let bad = AuthArgs { auth_method: Some(AuthMethod::X509Thumbprint), ..Default::default() };
        assert!(authentication_for_create(&bad).is_err());
        let mixed = AuthArgs {
            primary_key: Some("k".into()),
            primary_thumbprint: Some("t".into()),
            ..Default::default()
        };
        assert!(authentication_for_create(&mixed).is_err());
    }

    #[test]
    fn update_keeps_unreplaced_thumbprints() {
        let mut current = device(AuthenticationType::SelfSigned).authentication;
        current.x509_thumbprint.primary_thumbprint = Some("P1".into());
        current.x509_thumbprint.secondary_thumbprint = Some("S1".into());
        let flags = AuthArgs { secondary_thumbprint: Some("S2".into()), ..Default::default() };
        let auth = authentication_update(&flags, &current).unwrap().unwrap();
        assert_eq!(auth.x509_thumbprint.primary_thumbprint.as_deref(), Some("P1"));
        assert_eq!(auth.x509_thumbprint.secondary_thumbprint.as_deref(), Some("S2"));
        assert!(authentication_update(&AuthArgs::default(), &current).unwrap().is_none());
    }
}
