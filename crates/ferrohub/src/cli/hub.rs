//! Hub-level commands: `connection-string show`, `generate-sas-token`,
//! `env`, `healthcheck`.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use ferrohub_core::connection_string::ConnectionString;
use ferrohub_core::sas::generate_token;
use ferrohub_server::hubfile::HubInfo;
use ferrohub_service_client::{AuthenticationType, ClientOptions, ServiceClient};
use serde_json::json;

use super::args::{Common, GenerateSasTokenArgs, KeyType, PolicyConnectionStringArgs};
use super::context::{self, Context, OWNER_POLICY};
use super::Outcome;

/// File name of the CA bundle (system roots plus the hub's CA) in the data dir.
pub(crate) const CA_BUNDLE_FILE: &str = "ca-bundle.pem";

/// `connection-string show` / `show-connection-string`.
pub(crate) fn connection_string(args: PolicyConnectionStringArgs) -> anyhow::Result<Outcome> {
    let ctx = Context::resolve(&args.common)?;
    let key = ctx.policy_key(&args.policy_name, args.key_type)?;
    let cs = ConnectionString::for_policy(ctx.host(), &args.policy_name, &key);
    Outcome::value(&ctx, &json!({ "connectionString": cs.to_string() }))
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `generate-sas-token`.
pub(crate) async fn generate_sas_token(args: GenerateSasTokenArgs) -> anyhow::Result<Outcome> {
    let ctx = Context::resolve(&args.common)?;
    let expiry = now_unix().saturating_add(i64::from(args.duration));
    let token = match &args.device_id {
        Some(device_id) => {
            let device = ctx.client()?.get_device(device_id).await?;
            if device.authentication.kind != AuthenticationType::Sas {
                bail!("device '{device_id}' does not use symmetric keys, so it has no SAS tokens");
            }
            let keys = &device.authentication.symmetric_key;
            let key = match args.key_type {
                KeyType::Primary => &keys.primary_key,
                KeyType::Secondary => &keys.secondary_key,
            };
            generate_token(&format!("{}/devices/{device_id}", ctx.host()), key, None, expiry)?
        }
        None => {
            let name = args.policy_name.as_deref().unwrap_or(OWNER_POLICY);
            let key = ctx.policy_key(name, args.key_type)?;
            generate_token(ctx.host(), &key, Some(name), expiry)?
        }
    };
    Outcome::value(&ctx, &json!({ "sas": token }))
}

/// Quotes `value` for a POSIX shell when it needs quoting.
pub(crate) fn shell_quote(value: &str) -> String {
    let plain =
        !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || "_-./:@%+,".contains(c));
    if plain {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// The `export` lines of `ferrohub env` for a hub described by `hub`.
pub(crate) fn env_lines(dir: &Path, hub: &HubInfo, owner_key: &str) -> String {
    let ca: PathBuf = dir.join(&hub.ca_file);
    let bundle = dir.join(CA_BUNDLE_FILE);
    let host = hub.host_names.first().map_or(context::DEFAULT_HOST, String::as_str);
    let cs = ConnectionString::for_policy(host, OWNER_POLICY, owner_key).to_string();
    let vars = [
        ("NODE_EXTRA_CA_CERTS", ca.display().to_string()),
        ("FERROHUB_CA", ca.display().to_string()),
        ("REQUESTS_CA_BUNDLE", bundle.display().to_string()),
        ("SSL_CERT_FILE", bundle.display().to_string()),
        ("IOTHUB_CONNECTION_STRING", cs),
        ("FERROHUB_HTTPS_PORT", hub.https_port.to_string()),
        ("FERROHUB_MQTT_PORT", hub.mqtt_port.to_string()),
    ];
    vars.iter().map(|(name, value)| format!("export {name}={}\n", shell_quote(value))).collect()
}

/// `env`: reads the running hub's `hub.json` and `policies.json`.
pub(crate) fn env(common: &Common) -> anyhow::Result<Outcome> {
    let dir = context::data_dir(common.data_dir.as_deref())?;
    let dir = std::path::absolute(&dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
    let hub = HubInfo::read(&dir).with_context(|| {
        format!("no hub is running from {} (no hub.json); start one with `ferrohub serve`", dir.display())
    })?;
    let policies = context::read_policies(&dir)?;
    let owner = policies
        .iter()
        .find(|p| p.key_name == OWNER_POLICY)
        .with_context(|| format!("{} has no {OWNER_POLICY} policy", context::POLICIES_FILE))?;
    Ok(Outcome::Text(env_lines(&dir, &hub, &owner.primary_key)))
}

/// `healthcheck`: an authenticated `GET /statistics/service`.
pub(crate) async fn healthcheck(common: &Common) -> anyhow::Result<Outcome> {
    let ctx = Context::resolve(common)?;
    let options = ClientOptions {
        port: Some(ctx.endpoint.https_port),
        ca_file: ctx.endpoint.ca.clone(),
        timeout: Some(std::time::Duration::from_secs(10)),
    };
    let client = ServiceClient::new(&ctx.credentials.connection_string.to_string(), options)?;
    let stats = client.service_statistics().await?;
    Outcome::value(
        &ctx,
        &json!({
            "status": "healthy",
            "hostName": ctx.host(),
            "httpsPort": ctx.endpoint.https_port,
            "mqttPort": ctx.endpoint.mqtt_port,
            "connectedDeviceCount": stats.connected_device_count,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("8443"), "8443");
        assert_eq!(shell_quote("/data/ca.pem"), "/data/ca.pem");
        assert_eq!(shell_quote("HostName=h;K=v"), "'HostName=h;K=v'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
    }

    #[test]
    fn env_exports_every_variable_from_hub_json() {
        let hub = HubInfo {
            pid: 1,
            host_names: vec!["myhub.local".into()],
            https_port: 40443,
            mqtt_port: 48883,
            ca_file: PathBuf::from("ca.pem"),
        };
        let text = env_lines(Path::new("/d"), &hub, "KEY=");
        let expected = "\
export NODE_EXTRA_CA_CERTS=/d/ca.pem
export FERROHUB_CA=/d/ca.pem
export REQUESTS_CA_BUNDLE=/d/ca-bundle.pem
export SSL_CERT_FILE=/d/ca-bundle.pem
export IOTHUB_CONNECTION_STRING='HostName=myhub.local;SharedAccessKeyName=iothubowner;SharedAccessKey=KEY='
export FERROHUB_HTTPS_PORT=40443
export FERROHUB_MQTT_PORT=48883
";
        assert_eq!(text, expected);
    }
}
