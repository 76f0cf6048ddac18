//! IoT Hub connection strings, the one credential format users copy between
//! the portal, the CLI and every SDK.
//!
//! Parsing follows the Node SDK (split on the first `=`, case-sensitive
//! keys, last duplicate wins, empty values ignored) so a string that works
//! there works here, but rejects the shapes Node would only fail on later
//! (no credential, two credentials). `Debug` hides the secrets; `Display` is
//! the full string, for printing on request.

use std::fmt;
use std::str::FromStr;

use crate::error::{HubError, HubResult};
use crate::sas::{generate_token, TOKEN_PREFIX};

/// A parsed, validated connection string: a hub/service string
/// (`SharedAccessKeyName` + `SharedAccessKey`) or a device/module string
/// (`DeviceId` plus exactly one of `SharedAccessKey`,
/// `SharedAccessSignature`, `x509=true`).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ConnectionString {
    /// `HostName`: the hub's name, used in `sr` and MQTT usernames.
    pub host_name: String,
    /// `DeviceId`.
    pub device_id: Option<String>,
    /// `ModuleId` (needs `DeviceId`).
    pub module_id: Option<String>,
    /// `SharedAccessKeyName`: the policy a key belongs to.
    pub shared_access_key_name: Option<String>,
    /// `SharedAccessKey`: base64 key of the device, module or policy.
    pub shared_access_key: Option<String>,
    /// `SharedAccessSignature`: a whole ready-made token.
    pub shared_access_signature: Option<String>,
    /// `x509=true`: the device authenticates with a client certificate.
    pub x509: bool,
    /// `GatewayHostName`: the host to dial instead of `HostName`.
    pub gateway_host_name: Option<String>,
}

impl ConnectionString {
    /// `HostName=…;DeviceId=…;SharedAccessKey=…`.
    pub fn for_device(host: &str, device_id: &str, key: &str) -> Self {
        Self {
            host_name: host.to_owned(),
            device_id: Some(device_id.to_owned()),
            shared_access_key: Some(key.to_owned()),
            ..Self::default()
        }
    }

    /// `HostName=…;DeviceId=…;ModuleId=…;SharedAccessKey=…`.
    pub fn for_module(host: &str, device_id: &str, module_id: &str, key: &str) -> Self {
        Self { module_id: Some(module_id.to_owned()), ..Self::for_device(host, device_id, key) }
    }

    /// `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`.
    pub fn for_policy(host: &str, key_name: &str, key: &str) -> Self {
        Self {
            host_name: host.to_owned(),
            shared_access_key_name: Some(key_name.to_owned()),
            shared_access_key: Some(key.to_owned()),
            ..Self::default()
        }
    }

    /// Whether this is a device (or module) string.
    pub fn is_device(&self) -> bool {
        self.device_id.is_some()
    }

    /// Whether this is a module string.
    pub fn is_module(&self) -> bool {
        self.device_id.is_some() && self.module_id.is_some()
    }

    /// The host to connect to: `GatewayHostName` if set, else `HostName`.
    pub fn dial_host(&self) -> &str {
        self.gateway_host_name.as_deref().unwrap_or(&self.host_name)
    }

    /// The unencoded resource a token for this string is scoped to:
    /// `{host}`, `{host}/devices/{d}` or `{host}/devices/{d}/modules/{m}`.
    pub fn resource_uri(&self) -> String {
        match (&self.device_id, &self.module_id) {
            (Some(d), Some(m)) => format!("{}/devices/{d}/modules/{m}", self.host_name),
            (Some(d), None) => format!("{}/devices/{d}", self.host_name),
            _ => self.host_name.clone(),
        }
    }

    /// A token for this identity: the fixed `SharedAccessSignature` if the
    /// string carries one, else one signed with `SharedAccessKey` (with
    /// `skn` when `SharedAccessKeyName` is set) expiring at `expiry_unix`.
    pub fn sas_token(&self, expiry_unix: i64) -> HubResult<String> {
        if let Some(token) = &self.shared_access_signature {
            return Ok(token.clone());
        }
        let key = self
            .shared_access_key
            .as_deref()
            .ok_or_else(|| HubError::invalid("The connection string has no SharedAccessKey to sign with"))?;
        generate_token(&self.resource_uri(), key, self.shared_access_key_name.as_deref(), expiry_unix)
    }

    /// Checks the combination of fields (see the type's docs).
    pub fn validate(&self) -> HubResult<()> {
        if self.host_name.is_empty() {
            return Err(HubError::invalid("The connection string is missing HostName"));
        }
        if self.module_id.is_some() && self.device_id.is_none() {
            return Err(HubError::invalid("The connection string has a ModuleId but no DeviceId"));
        }
        if let Some(token) = &self.shared_access_signature {
            if !token.starts_with(TOKEN_PREFIX) {
                return Err(HubError::invalid(
                    "The connection string's SharedAccessSignature must start with 'SharedAccessSignature '",
                ));
            }
        }
        if self.is_device() {
            let credentials =
                [self.shared_access_key.is_some(), self.shared_access_signature.is_some(), self.x509];
            return match credentials.iter().filter(|c| **c).count() {
                1 => Ok(()),
                0 => Err(HubError::invalid(
                    "A device connection string needs one of SharedAccessKey, SharedAccessSignature or x509=true",
                )),
                _ => Err(HubError::invalid(
                    "A device connection string must have only one of SharedAccessKey, SharedAccessSignature and x509=true",
                )),
            };
        }
        match (&self.shared_access_key_name, &self.shared_access_key) {
            (Some(_), Some(_)) => Ok(()),
            (None, _) => Err(HubError::invalid(
                "The connection string is missing DeviceId (device string) or SharedAccessKeyName (hub string)",
            )),
            (Some(_), None) => Err(HubError::invalid("The hub connection string is missing SharedAccessKey")),
        }
    }
}

impl FromStr for ConnectionString {
    type Err = HubError;

    fn from_str(s: &str) -> HubResult<Self> {
        let mut cs = ConnectionString::default();
        for element in s.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            // Elements are not echoed in errors: they may hold keys.
            let (key, value) = element
                .split_once('=')
                .ok_or_else(|| HubError::invalid("A connection string element has no '='"))?;
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            let slot = match key.trim() {
                "HostName" => {
                    cs.host_name = value.to_owned();
                    continue;
                }
                "x509" => {
                    cs.x509 = match value {
                        v if v.eq_ignore_ascii_case("true") => true,
                        v if v.eq_ignore_ascii_case("false") => false,
                        _ => {
                            return Err(HubError::invalid(
                                "The connection string's x509 must be true or false",
                            ))
                        }
                    };
                    continue;
                }
                "DeviceId" => &mut cs.device_id,
                "ModuleId" => &mut cs.module_id,
                "SharedAccessKeyName" => &mut cs.shared_access_key_name,
                "SharedAccessKey" => &mut cs.shared_access_key,
                "SharedAccessSignature" => &mut cs.shared_access_signature,
                "GatewayHostName" => &mut cs.gateway_host_name,
                // Unknown keys are ignored, as the SDKs do.
                _ => continue,
            };
            *slot = Some(value.to_owned());
        }
        cs.validate()?;
        Ok(cs)
    }
}

impl fmt::Display for ConnectionString {
    /// Fields in Azure's order: HostName, DeviceId, ModuleId,
    /// SharedAccessKeyName, SharedAccessKey, SharedAccessSignature, x509,
    /// GatewayHostName.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostName={}", self.host_name)?;
        let fields = [
            ("DeviceId", &self.device_id),
            ("ModuleId", &self.module_id),
            ("SharedAccessKeyName", &self.shared_access_key_name),
            ("SharedAccessKey", &self.shared_access_key),
            ("SharedAccessSignature", &self.shared_access_signature),
        ];
        for (name, value) in fields {
            if let Some(v) = value {
                write!(f, ";{name}={v}")?;
            }
        }
        if self.x509 {
            f.write_str(";x509=true")?;
        }
        if let Some(g) = &self.gateway_host_name {
            write!(f, ";GatewayHostName={g}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hide = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("ConnectionString")
            .field("host_name", &self.host_name)
            .field("device_id", &self.device_id)
            .field("module_id", &self.module_id)
            .field("shared_access_key_name", &self.shared_access_key_name)
            .field("shared_access_key", &hide(&self.shared_access_key))
            .field("shared_access_signature", &hide(&self.shared_access_signature))
            .field("x509", &self.x509)
            .field("gateway_host_name", &self.gateway_host_name)
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sas::SasToken;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    fn parse(s: &str) -> HubResult<ConnectionString> {
        s.parse()
    }

    fn err(s: &str) -> String {
        parse(s).unwrap_err().message
    }

    #[test]
    fn device_and_hub_strings_round_trip() {
        for text in [
            format!("HostName=h.azure-devices.net;DeviceId=d1;SharedAccessKey={KEY}"),
            format!("HostName=h;DeviceId=d1;ModuleId=m1;SharedAccessKey={KEY}"),
            format!("HostName=h;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"),
            format!(
                "HostName=h;DeviceId=d1;SharedAccessKeyName=device;SharedAccessKey={KEY};GatewayHostName=gw"
            ),
            "HostName=h;DeviceId=d1;x509=true".to_owned(),
            "HostName=h;DeviceId=d1;SharedAccessSignature=SharedAccessSignature sr=h&sig=a%3D&se=1"
                .to_owned(),
        ] {
            assert_eq!(parse(&text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn helpers_build_the_azure_forms() {
        let d = ConnectionString::for_device("h", "d1", KEY);
        assert_eq!(d.to_string(), format!("HostName=h;DeviceId=d1;SharedAccessKey={KEY}"));
        assert!(d.is_device() && !d.is_module());
        let m = ConnectionString::for_module("h", "d1", "m1", KEY);
        assert!(m.is_module());
        assert_eq!(m.resource_uri(), "h/devices/d1/modules/m1");
        let p = ConnectionString::for_policy("h", "service", KEY);
        assert_eq!(p.to_string(), format!("HostName=h;SharedAccessKeyName=service;SharedAccessKey={KEY}"));
        assert!(!p.is_device());
        for cs in [d, m, p] {
            cs.validate().unwrap();
        }
    }

    #[test]
    fn parsing_is_lenient_like_the_sdks() {
        let cs = parse(&format!(
            " HostName = old ; HostName=h;;DeviceId=d1;Unknown=x;GatewayHostName=;SharedAccessKey={KEY} ;"
        ))
        .unwrap();
        assert_eq!(cs.host_name, "h");
        assert_eq!(cs.device_id.as_deref(), Some("d1"));
        assert_eq!(cs.gateway_host_name, None);
        assert_eq!(cs.shared_access_key.as_deref(), Some(KEY));
        assert_eq!(cs.dial_host(), "h");
        assert!(parse("HostName=h;DeviceId=d1;x509=TRUE").unwrap().x509);
    }

    #[test]
    fn invalid_strings_name_what_is_wrong() {
        assert!(err("").contains("HostName"));
        assert!(err(&format!("DeviceId=d1;SharedAccessKey={KEY}")).contains("HostName"));
        assert!(err(&format!("hostname=h;DeviceId=d1;SharedAccessKey={KEY}")).contains("HostName"));
        assert!(err("HostName=h;DeviceId=d1").contains("needs one of"));
        assert!(err(&format!("HostName=h;DeviceId=d1;SharedAccessKey={KEY};x509=true")).contains("only one"));
        assert!(err(
            "HostName=h;DeviceId=d1;SharedAccessSignature=SharedAccessSignature sr=h&sig=a&se=1;x509=true"
        )
        .contains("only one"));
        assert!(err("HostName=h;DeviceId=d1;x509=yes").contains("x509"));
        assert!(err("HostName=h;DeviceId=d1;SharedAccessSignature=sr=h&sig=a&se=1")
            .contains("SharedAccessSignature"));
        assert!(err(&format!("HostName=h;SharedAccessKey={KEY}")).contains("SharedAccessKeyName"));
        assert!(err("HostName=h;SharedAccessKeyName=service").contains("SharedAccessKey"));
        assert!(err(&format!("HostName=h;ModuleId=m;SharedAccessKey={KEY}")).contains("DeviceId"));
        assert!(err("HostName=h;garbage").contains("'='"));
        assert!(!err(&format!("HostName=h;{KEY}")).contains(KEY));
    }

    #[test]
    fn tokens_follow_the_string_kind() {
        let d = ConnectionString::for_device("h", "d1", KEY);
        let t = SasToken::parse(&d.sas_token(100).unwrap()).unwrap();
        assert!(t.verify(KEY));
        assert_eq!(t.raw_resource(), "h%2Fdevices%2Fd1");
        assert_eq!(t.skn(), None);

        let p = ConnectionString::for_policy("h", "service", KEY);
        let t = SasToken::parse(&p.sas_token(100).unwrap()).unwrap();
        assert_eq!((t.raw_resource(), t.skn()), ("h", Some("service")));

        let fixed = "SharedAccessSignature sr=h&sig=a&se=1";
        let s = parse(&format!("HostName=h;DeviceId=d1;SharedAccessSignature={fixed}")).unwrap();
        assert_eq!(s.sas_token(100).unwrap(), fixed);
        assert!(parse("HostName=h;DeviceId=d1;x509=true").unwrap().sas_token(100).is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let d = ConnectionString::for_device("h", "d1", KEY);
        assert!(!format!("{d:?}").contains(KEY));
    }
}
