//! Which hub a client command talks to, as whom, on which port, trusting
//! which CA.
//!
//! - Credentials: `--login`, then `IOTHUB_CONNECTION_STRING` (clap merges
//!   the two), then the data dir's `policies.json` (`iothubowner`, host from
//!   `hub.json`'s first host name, else `localhost`).
//! - Ports and CA: flag, then environment (clap again), then `hub.json`
//!   when its host names include the connection string's `HostName`, then
//!   443/8883 and the system roots.
//!
//! The resolution steps are pure functions over what was read, so they are
//! tested without files or processes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use ferrohub_core::connection_string::ConnectionString;
use ferrohub_core::sas::SharedAccessPolicy;
use ferrohub_server::hubfile::HubInfo;
use ferrohub_service_client::{ClientOptions, ServiceClient};

use super::args::{Common, KeyType, OutputFormat};

/// The policy a data-dir credential uses.
pub(crate) const OWNER_POLICY: &str = "iothubowner";
/// File name of the hub's policies inside the data dir.
pub(crate) const POLICIES_FILE: &str = "policies.json";
/// Host name used when no `hub.json` says otherwise.
pub(crate) const DEFAULT_HOST: &str = "localhost";
/// Azure's HTTPS port.
pub(crate) const DEFAULT_HTTPS_PORT: u16 = 443;
/// Azure's MQTT-over-TLS port.
pub(crate) const DEFAULT_MQTT_PORT: u16 = 8883;

/// `${XDG_DATA_HOME:-$HOME/.local/share}/ferrohub`.
pub(crate) fn default_data_dir(xdg_data_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let base = match xdg_data_home.filter(|x| !x.is_empty()) {
        Some(xdg) => PathBuf::from(xdg),
        None => PathBuf::from(home.filter(|h| !h.is_empty())?).join(".local").join("share"),
    };
    Some(base.join("ferrohub"))
}

/// The data dir from `--data-dir`/`FERROHUB_DATA_DIR`, else the default.
pub(crate) fn data_dir(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    match flag {
        Some(dir) => Ok(dir.to_path_buf()),
        None => default_data_dir(std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME"))
            .context("no data dir: pass --data-dir or set FERROHUB_DATA_DIR (HOME is not set)"),
    }
}

/// Reads `DIR/policies.json`.
pub(crate) fn read_policies(dir: &Path) -> anyhow::Result<Vec<SharedAccessPolicy>> {
    let path = dir.join(POLICIES_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        anyhow!(
            "no credentials: pass --login <connection string>, set IOTHUB_CONNECTION_STRING, \
             or start `ferrohub serve --data-dir {}` first ({}: {e})",
            dir.display(),
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a valid policy list", path.display()))
}

/// Where the credentials came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CredentialSource {
    /// `--login` or `IOTHUB_CONNECTION_STRING`.
    Login,
    /// The data dir's `iothubowner` policy (both keys known).
    DataDir(SharedAccessPolicy),
}

/// The identity commands act as.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    /// A hub connection string.
    pub(crate) connection_string: ConnectionString,
    /// Where it came from.
    pub(crate) source: CredentialSource,
}

/// Step 1: credentials from the login string, else from the data dir.
pub(crate) fn resolve_credentials(
    login: Option<&str>,
    data_dir_policies: impl FnOnce() -> anyhow::Result<Vec<SharedAccessPolicy>>,
    hub: Option<&HubInfo>,
) -> anyhow::Result<Credentials> {
    if let Some(login) = login.filter(|l| !l.trim().is_empty()) {
        let cs: ConnectionString = login
            .parse()
            .map_err(|e| anyhow!("invalid --login/IOTHUB_CONNECTION_STRING connection string: {e}"))?;
        if cs.is_device() {
            bail!("--login/IOTHUB_CONNECTION_STRING must be a hub connection string (with SharedAccessKeyName), not a device's");
        }
        return Ok(Credentials { connection_string: cs, source: CredentialSource::Login });
    }
    let policies = data_dir_policies()?;
    let owner = policies
        .into_iter()
        .find(|p| p.key_name == OWNER_POLICY)
        .with_context(|| format!("{POLICIES_FILE} has no {OWNER_POLICY} policy"))?;
    let host = hub.and_then(|h| h.host_names.first()).map_or(DEFAULT_HOST, String::as_str);
    Ok(Credentials {
        connection_string: ConnectionString::for_policy(host, &owner.key_name, &owner.primary_key),
        source: CredentialSource::DataDir(owner),
    })
}

/// Flags (or their environment variables) for where the hub listens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EndpointFlags {
    /// `--https-port` / `FERROHUB_HTTPS_PORT`.
    pub(crate) https_port: Option<u16>,
    /// `--mqtt-port` / `FERROHUB_MQTT_PORT`.
    pub(crate) mqtt_port: Option<u16>,
    /// `--ca` / `FERROHUB_CA`.
    pub(crate) ca: Option<PathBuf>,
}

/// Where the hub listens and which extra CA to trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// HTTPS port of the service API.
    pub(crate) https_port: u16,
    /// MQTT port of the device endpoint.
    pub(crate) mqtt_port: u16,
    /// Extra CA file; `None` = system roots only.
    pub(crate) ca: Option<PathBuf>,
}

/// Whether `hub` describes the hub named `host`.
pub(crate) fn hub_serves(hub: &HubInfo, host: &str) -> bool {
    hub.host_names.iter().any(|h| h.eq_ignore_ascii_case(host))
}

/// Step 2: ports and CA from the flags, else the matching `hub.json`, else
/// Azure's defaults.
pub(crate) fn resolve_endpoint(
    host: &str,
    flags: EndpointFlags,
    hub: Option<&HubInfo>,
    data_dir: &Path,
) -> Endpoint {
    let hub = hub.filter(|h| hub_serves(h, host));
    Endpoint {
        https_port: flags.https_port.or(hub.map(|h| h.https_port)).unwrap_or(DEFAULT_HTTPS_PORT),
        mqtt_port: flags.mqtt_port.or(hub.map(|h| h.mqtt_port)).unwrap_or(DEFAULT_MQTT_PORT),
        ca: flags.ca.or_else(|| hub.map(|h| data_dir.join(&h.ca_file))),
    }
}

/// Everything a client command needs, resolved once.
#[derive(Debug)]
pub(crate) struct Context {
    /// The data dir consulted.
    pub(crate) data_dir: PathBuf,
    /// `hub.json`, if a hub is running from the data dir.
    pub(crate) hub: Option<HubInfo>,
    /// Who we are.
    pub(crate) credentials: Credentials,
    /// Where the hub is.
    pub(crate) endpoint: Endpoint,
    /// How to print results.
    pub(crate) output: OutputFormat,
}

impl Context {
    /// Resolves the shared flags.
    pub(crate) fn resolve(common: &Common) -> anyhow::Result<Self> {
        let data_dir = data_dir(common.data_dir.as_deref())?;
        let hub = HubInfo::read(&data_dir);
        let credentials =
            resolve_credentials(common.login.as_deref(), || read_policies(&data_dir), hub.as_ref())?;
        let flags = EndpointFlags {
            https_port: common.https_port,
            mqtt_port: common.mqtt_port,
            ca: common.ca.clone(),
        };
        let endpoint =
            resolve_endpoint(&credentials.connection_string.host_name, flags, hub.as_ref(), &data_dir);
        Ok(Self { data_dir, hub, credentials, endpoint, output: common.output })
    }

    /// The hub's host name (as in connection strings and token `sr`s).
    pub(crate) fn host(&self) -> &str {
        &self.credentials.connection_string.host_name
    }

    /// A service client for the resolved hub.
    pub(crate) fn client(&self) -> anyhow::Result<ServiceClient> {
        let options = ClientOptions {
            port: Some(self.endpoint.https_port),
            ca_file: self.endpoint.ca.clone(),
            timeout: None,
        };
        Ok(ServiceClient::new(&self.credentials.connection_string.to_string(), options)?)
    }

    /// The key of shared access policy `name`: from the credentials when
    /// they are that policy, else from the data dir's `policies.json` when
    /// the data dir belongs to this hub.
    pub(crate) fn policy_key(&self, name: &str, key_type: KeyType) -> anyhow::Result<String> {
        let pick = |p: &SharedAccessPolicy| match key_type {
            KeyType::Primary => p.primary_key.clone(),
            KeyType::Secondary => p.secondary_key.clone(),
        };
        if let CredentialSource::DataDir(policy) = &self.credentials.source {
            if policy.key_name == name {
                return Ok(pick(policy));
            }
        }
        let cs = &self.credentials.connection_string;
        if key_type == KeyType::Primary && cs.shared_access_key_name.as_deref() == Some(name) {
            if let Some(key) = &cs.shared_access_key {
                return Ok(key.clone());
            }
        }
        let local = matches!(self.credentials.source, CredentialSource::DataDir(_))
            || self.hub.as_ref().is_some_and(|h| hub_serves(h, self.host()));
        if !local {
            bail!(
                "the key of policy '{name}' is not known: pass --login with that policy's connection string"
            );
        }
        let policies = read_policies(&self.data_dir)?;
        policies.iter().find(|p| p.key_name == name).map(pick).with_context(|| {
            let known: Vec<&str> = policies.iter().map(|p| p.key_name.as_str()).collect();
            format!("no shared access policy named '{name}' (this hub has: {})", known.join(", "))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ferrohub_core::sas::Rights;

    const KEY_A: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    const KEY_B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA=";

    fn policies() -> anyhow::Result<Vec<SharedAccessPolicy>> {
        let mut keys = [KEY_A, KEY_B].into_iter().cycle();
        Ok(ferrohub_core::sas::builtin_policies(&mut || keys.next().unwrap_or_default().to_owned()))
    }

    fn hub(names: &[&str]) -> HubInfo {
        HubInfo {
            pid: 1,
            host_names: names.iter().map(|s| s.to_string()).collect(),
            https_port: 40443,
            mqtt_port: 48883,
            ca_file: PathBuf::from("ca.pem"),
        }
    }

    #[test]
    fn data_dir_defaults_follow_xdg() {
        let d = default_data_dir(Some("/x".into()), Some("/home/u".into())).unwrap();
        assert_eq!(d, PathBuf::from("/x/ferrohub"));
        let d = default_data_dir(Some("".into()), Some("/home/u".into())).unwrap();
        assert_eq!(d, PathBuf::from("/home/u/.local/share/ferrohub"));
        assert_eq!(default_data_dir(None, None), None);
    }

    #[test]
    fn login_wins_over_the_data_dir() {
        let login = format!("HostName=remote.example;SharedAccessKeyName=service;SharedAccessKey={KEY_B}");
        let creds = resolve_credentials(
            Some(&login),
            || panic!("the data dir must not be read when a login is given"),
            None,
        )
        .unwrap();
        assert_eq!(creds.source, CredentialSource::Login);
        assert_eq!(creds.connection_string.host_name, "remote.example");
        assert_eq!(creds.connection_string.shared_access_key_name.as_deref(), Some("service"));
    }

    #[test]
    fn device_strings_are_refused_as_login() {
        let login = format!("HostName=h;DeviceId=d;SharedAccessKey={KEY_A}");
        let err = resolve_credentials(Some(&login), policies, None).unwrap_err();
        assert!(err.to_string().contains("hub connection string"), "{err}");
    }

    #[test]
    fn data_dir_credentials_use_iothubowner_and_hub_json_host() {
        let creds = resolve_credentials(None, policies, Some(&hub(&["myhub.local", "localhost"]))).unwrap();
        assert_eq!(creds.connection_string.host_name, "myhub.local");
        assert_eq!(creds.connection_string.shared_access_key_name.as_deref(), Some("iothubowner"));
        assert!(matches!(creds.source, CredentialSource::DataDir(p) if p.rights == Rights::ALL));
        let creds = resolve_credentials(None, policies, None).unwrap();
        assert_eq!(creds.connection_string.host_name, "localhost");
    }

    #[test]
    fn missing_policies_explain_how_to_log_in() {
        let dir = Path::new("/nonexistent/ferrohub-test");
        let err = resolve_credentials(None, || read_policies(dir), None).unwrap_err();
        assert!(err.to_string().contains("--login"), "{err}");
    }

    #[test]
    fn flags_win_then_matching_hub_json_then_defaults() {
        let dir = Path::new("/data");
        let h = hub(&["LocalHost"]);
        let from_hub = resolve_endpoint("localhost", EndpointFlags::default(), Some(&h), dir);
        assert_eq!(
            from_hub,
            Endpoint { https_port: 40443, mqtt_port: 48883, ca: Some(PathBuf::from("/data/ca.pem")) }
        );
        let flags =
            EndpointFlags { https_port: Some(1), mqtt_port: None, ca: Some(PathBuf::from("/my/ca.pem")) };
        let mixed = resolve_endpoint("localhost", flags, Some(&h), dir);
        assert_eq!(
            mixed,
            Endpoint { https_port: 1, mqtt_port: 48883, ca: Some(PathBuf::from("/my/ca.pem")) }
        );
        let other_host = resolve_endpoint("elsewhere.example", EndpointFlags::default(), Some(&h), dir);
        assert_eq!(other_host, Endpoint { https_port: 443, mqtt_port: 8883, ca: None });
    }
}
