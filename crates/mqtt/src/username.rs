//! The CONNECT username: `{host}/{deviceId}/?api-version=..&DeviceClientType=..&model-id=..`.
//!
//! Parsing is lenient, as IoT Hub is: everything after `{host}/{deviceId}/`
//! is a query string; values are percent-decoded (`+` stays `+`); unknown
//! keys are ignored; `api-version` is not required; the legacy form without
//! `?` (`{host}/{deviceId}/api-version=...`, older C SDK) and a bare
//! `{host}/{deviceId}` are accepted. The module form
//! `{host}/{deviceId}/{moduleId}/?...` is recognised and refused
//! ([`UsernameError::Module`]) until module identities exist.
//!
//! The device id is returned raw, as the SDKs write it (Node, Python, C and
//! .NET all put the id in unencoded); `/` cannot occur in an IoT Hub id, so
//! splitting on it is unambiguous even for ids holding `?`, `=` or `%`.

use std::borrow::Cow;

use crate::pct::decode_lossy;

/// A parsed CONNECT username. Borrows from the username string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username<'a> {
    /// Host name the device believes it talks to (the connection string's
    /// `HostName`, not a `GatewayHostName`).
    pub host: &'a str,
    /// Device id, raw (compare it with the CONNECT client id and the identity).
    pub device_id: &'a str,
    /// `api-version`, if present.
    pub api_version: Option<Cow<'a, str>>,
    /// `DeviceClientType`: the SDK's user agent, decoded.
    pub client_type: Option<Cow<'a, str>>,
    /// `model-id`: the IoT Plug and Play model DTMI, surfaced as the twin's `modelId`.
    pub model_id: Option<Cow<'a, str>>,
}

/// Why a username was refused (answer CONNACK 0x05 Not authorized).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    /// Not of the form `{host}/{deviceId}[/...]`.
    #[error("the username is not of the form {{host}}/{{deviceId}}/?api-version=...")]
    Malformed,
    /// A module identity's username (`{host}/{deviceId}/{moduleId}/?...`).
    #[error("module identities are not supported")]
    Module,
}

/// Parses a CONNECT username. See the [module docs](self) for the forms.
pub fn parse_username(username: &str) -> Result<Username<'_>, UsernameError> {
    let (host, rest) = username.split_once('/').ok_or(UsernameError::Malformed)?;
    let (device_id, rest) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() || device_id.is_empty() {
        return Err(UsernameError::Malformed);
    }

    let query = if let Some(query) = rest.strip_prefix('?') {
        query
    } else if let Some((first, after)) = rest.split_once('/') {
        // `{m}/`, `{m}/?...` or `{m}/api-version=...` is a module; otherwise
        // this is the legacy query, one of whose values held a raw '/'.
        let module = !first.is_empty()
            && !first.contains('&')
            && (after.is_empty() || after.starts_with('?') || after.starts_with("api-version="));
        if module {
            return Err(UsernameError::Module);
        }
        rest
    } else {
        rest
    };

    let mut parsed = Username { host, device_id, api_version: None, client_type: None, model_id: None };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match &*decode_lossy(key) {
            "api-version" => &mut parsed.api_version,
            "DeviceClientType" => &mut parsed.client_type,
            "model-id" => &mut parsed.model_id,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(decode_lossy(value));
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ok(s: &str) -> Username<'_> {
        parse_username(s).unwrap()
    }

    #[test]
    fn node_form() {
        let u = ok("hub.azure-devices.net/dev1/?api-version=2021-04-12&DeviceClientType=azure-iot-device%2F1.18.4%20(node%20v20.1.0%3B%20Linux%3B%20x64)");
        assert_eq!(u.host, "hub.azure-devices.net");
        assert_eq!(u.device_id, "dev1");
        assert_eq!(u.api_version.as_deref(), Some("2021-04-12"));
        assert_eq!(u.client_type.as_deref(), Some("azure-iot-device/1.18.4 (node v20.1.0; Linux; x64)"));
        assert_eq!(u.model_id, None);
    }

    #[test]
    fn node_with_model_id_before_client_type() {
        let u = ok(
            "h/d/?api-version=2021-04-12&model-id=dtmi%3Acom%3Aexample%3AThermostat%3B1&DeviceClientType=x",
        );
        assert_eq!(u.model_id.as_deref(), Some("dtmi:com:example:Thermostat;1"));
        assert_eq!(u.client_type.as_deref(), Some("x"));
    }

    #[test]
    fn dotnet_and_c_put_model_id_last() {
        let u = ok("h/d/?api-version=2020-09-30&DeviceClientType=c%2F1.0&model-id=dtmi:a:b;1");
        assert_eq!(u.model_id.as_deref(), Some("dtmi:a:b;1"));
        assert_eq!(u.api_version.as_deref(), Some("2020-09-30"));
    }

    #[test]
    fn python_form_with_product_info_appended() {
        let u = ok("h/d/?api-version=2019-10-01&DeviceClientType=py-azure-iot-device%2F2.14.0my%24product");
        assert_eq!(u.api_version.as_deref(), Some("2019-10-01"));
        assert_eq!(u.client_type.as_deref(), Some("py-azure-iot-device/2.14.0my$product"));
    }

    #[test]
    fn legacy_form_without_question_mark() {
        let u = ok("h/d/api-version=2016-11-14&DeviceClientType=iothubclient%2F1.1.0");
        assert_eq!(u.device_id, "d");
        assert_eq!(u.api_version.as_deref(), Some("2016-11-14"));
        assert_eq!(u.client_type.as_deref(), Some("iothubclient/1.1.0"));
        // A raw '/' inside a legacy value is not a module.
        let u = ok("h/d/api-version=2016-11-14&DeviceClientType=iothubclient/1.1.0");
        assert_eq!(u.client_type.as_deref(), Some("iothubclient/1.1.0"));
    }

    #[test]
    fn lenient_forms() {
        for s in ["h/d", "h/d/", "h/d/?", "h/d/?foo=bar&&baz"] {
            let u = ok(s);
            assert_eq!((u.host, u.device_id, u.api_version), ("h", "d", None), "{s}");
        }
        let u = ok("h/d/?DeviceClientType=a+b&api-version=x&api-version=y");
        assert_eq!(u.client_type.as_deref(), Some("a+b"), "plus is literal");
        assert_eq!(u.api_version.as_deref(), Some("x"), "first wins");
        assert_eq!(ok("h/d/?api-version").api_version.as_deref(), Some(""));
        assert_eq!(ok("h/d/?%61pi-version=v").api_version.as_deref(), Some("v"));
    }

    #[test]
    fn ids_with_special_characters_stay_raw() {
        for id in ["a$b", "it's", "(x)*", "a:b@c=d", "q?r", "p%20q", "-._!,"] {
            let s = format!("hub.example/{id}/?api-version=2021-04-12");
            let u = ok(&s);
            assert_eq!(u.device_id, id);
            assert_eq!(u.api_version.as_deref(), Some("2021-04-12"));
        }
    }

    #[test]
    fn modules_are_recognised() {
        for s in
            ["h/d/m/?api-version=2021-04-12&DeviceClientType=x", "h/d/m/", "h/d/m/api-version=2016-11-14"]
        {
            assert_eq!(parse_username(s), Err(UsernameError::Module), "{s}");
        }
    }

    #[test]
    fn malformed() {
        for s in ["", "h", "/d/?x", "h//?x", "//"] {
            assert_eq!(parse_username(s), Err(UsernameError::Malformed), "{s:?}");
        }
    }
}
