//! Shared access signatures: the one credential check that the REST and MQTT
//! layers share.
//!
//! Keys are looked up through [`KeyLookup`] so this module stays free of IO:
//! the caller owns the registry and the policy list, and this module only
//! decides. Every failure is a 401 `IotHubUnauthorizedAccess` whose message
//! names the check that failed; nothing here panics on client input.
//!
//! Policies and rights live in `policy.rs`; token parsing, signing and scope
//! rules in `token.rs`; this file joins them into [`authorize`].

mod policy;
mod token;

pub use policy::{builtin_policies, validate_policies, Permission, Rights, SharedAccessPolicy, MAX_POLICIES};
pub use token::{generate_token, SasToken, TOKEN_PREFIX};

use crate::error::{HubError, HubResult};

/// Where [`authorize`] finds the keys a token may be signed with. Return
/// keys only for identities that may use them (e.g. `sas` devices); whether
/// a device is disabled is left to the caller.
pub trait KeyLookup {
    /// The policy named `name` (the token's `skn`).
    fn policy(&self, name: &str) -> Option<&SharedAccessPolicy>;

    /// A device's primary and secondary base64 keys.
    fn device_keys(&self, device_id: &str) -> Option<(String, String)>;

    /// A module's primary and secondary base64 keys. Defaults to none, for
    /// hubs without module identities.
    fn module_keys(&self, device_id: &str, module_id: &str) -> Option<(String, String)> {
        let _ = (device_id, module_id);
        None
    }
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Signed with a hub policy key; may do what `rights` allow within the
    /// token's scope.
    Policy {
        /// The policy name.
        name: String,
        /// The policy's permissions.
        rights: Rights,
    },
    /// Signed with a device's own key.
    Device {
        /// The device.
        device_id: String,
    },
    /// Signed with a module's own key.
    Module {
        /// The module's device.
        device_id: String,
        /// The module.
        module_id: String,
    },
}

impl Principal {
    /// Whether the principal holds `p`; identity keys hold only
    /// `DeviceConnect` (for themselves, which [`authorize`] already checked).
    pub fn has(&self, p: Permission) -> bool {
        match self {
            Self::Policy { rights, .. } => rights.contains(p),
            Self::Device { .. } | Self::Module { .. } => p == Permission::DeviceConnect,
        }
    }
}

/// Checks `token_text` (the `Authorization` header or MQTT password) for
/// access to `target_path` on a hub known as any of `host_names`.
///
/// `target_path` is the identity resource: `""` for service APIs,
/// `/devices/{d}` for a device, `/devices/{d}/modules/{m}` for a module.
/// Policy tokens may cover it with any whole-segment prefix; identity-key
/// tokens must name exactly that identity. The caller still checks the
/// principal's permissions with [`Principal::has`].
pub fn authorize<L: KeyLookup + ?Sized>(
    token_text: &str,
    now_unix: i64,
    host_names: &[String],
    target_path: &str,
    lookup: &L,
) -> HubResult<Principal> {
    authorize_any(token_text, now_unix, host_names, &[target_path], lookup)
}

/// [`authorize`] for a request that may be named by several resource paths
/// (a twin is reachable as `/twins/{d}` and belongs to `/devices/{d}`): the
/// token is verified once and passes when its `sr` covers any one of
/// `target_paths`. An identity-key token must name the first one exactly.
pub fn authorize_any<L: KeyLookup + ?Sized>(
    token_text: &str,
    now_unix: i64,
    host_names: &[String],
    target_paths: &[&str],
    lookup: &L,
) -> HubResult<Principal> {
    let token = SasToken::parse(token_text)?;
    let (principal, primary, secondary) = match token.skn() {
        Some(name) => {
            let policy =
                lookup.policy(name).ok_or_else(|| HubError::unauthorized("Unknown shared access policy"))?;
            let principal = Principal::Policy { name: policy.key_name.clone(), rights: policy.rights };
            (principal, policy.primary_key.clone(), policy.secondary_key.clone())
        }
        None => match token.device_identity() {
            Some((device_id, None)) => {
                let (p, s) =
                    lookup.device_keys(device_id).ok_or_else(|| HubError::unauthorized("Unknown device"))?;
                (Principal::Device { device_id: device_id.to_owned() }, p, s)
            }
            Some((device_id, Some(module_id))) => {
                let (p, s) = lookup
                    .module_keys(device_id, module_id)
                    .ok_or_else(|| HubError::unauthorized("Unknown module"))?;
                let principal =
                    Principal::Module { device_id: device_id.to_owned(), module_id: module_id.to_owned() };
                (principal, p, s)
            }
            None => {
                return Err(HubError::unauthorized(
                    "SAS token without skn must have sr {host}/devices/{id}[/modules/{id}]",
                ))
            }
        },
    };
    if !(token.verify(&primary) || token.verify(&secondary)) {
        return Err(HubError::unauthorized("SAS token signature does not match"));
    }
    if token.is_expired(now_unix) {
        return Err(HubError::unauthorized("SAS token has expired"));
    }
    if !token.matches_host(host_names) {
        return Err(HubError::unauthorized("SAS token sr names another hub"));
    }
    if !target_paths.iter().any(|t| token::path_covers(token.path(), t)) {
        return Err(HubError::unauthorized("SAS token sr does not cover this resource"));
    }
    let exact = target_paths.first().is_some_and(|t| token::same_path(token.path(), t));
    if !matches!(principal, Principal::Policy { .. }) && !exact {
        return Err(HubError::unauthorized("SAS token signed with an identity key is for another identity"));
    }
    Ok(principal)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ErrorCode;
    use base64::Engine as _;

    const HOST: &str = "myhub.azure-devices.net";
    const NOW: i64 = 1_700_000_000;

    fn key(n: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([n; 32])
    }

    struct Hub {
        policies: Vec<SharedAccessPolicy>,
    }

    impl KeyLookup for Hub {
        fn policy(&self, name: &str) -> Option<&SharedAccessPolicy> {
            self.policies.iter().find(|p| p.key_name == name)
        }
        fn device_keys(&self, device_id: &str) -> Option<(String, String)> {
            match device_id {
                "d1" => Some((key(1), key(2))),
                "x509dev" => Some((String::new(), String::new())),
                _ => None,
            }
        }
        fn module_keys(&self, device_id: &str, module_id: &str) -> Option<(String, String)> {
            (device_id == "d1" && module_id == "m1").then(|| (key(3), key(4)))
        }
    }

    fn hub() -> Hub {
        let mut n = 10;
        let mut new_key = || {
            n += 1;
            key(n)
        };
        Hub { policies: builtin_policies(&mut new_key) }
    }

    fn names() -> Vec<String> {
        vec![HOST.to_owned(), "localhost".to_owned()]
    }

    fn check(token: &str, target: &str) -> HubResult<Principal> {
        authorize(token, NOW, &names(), target, &hub())
    }

    fn fails_with(token: &str, target: &str, fragment: &str) {
        let err = check(token, target).unwrap_err();
        assert_eq!(err.code, ErrorCode::IotHubUnauthorizedAccess);
        assert!(err.message.contains(fragment), "{} does not mention {fragment}", err.message);
    }

    fn device_token(sr: &str, k: &str, se: i64) -> String {
        generate_token(sr, k, None, se).unwrap()
    }

    #[test]
    fn device_key_tokens_authorize_only_their_device() {
        let t = device_token(&format!("{HOST}/devices/d1"), &key(1), NOW + 60);
        assert_eq!(check(&t, "/devices/d1").unwrap(), Principal::Device { device_id: "d1".into() });
        let secondary = device_token(&format!("{HOST}/devices/d1"), &key(2), NOW + 60);
        assert!(check(&secondary, "/devices/d1").is_ok());
        fails_with(&t, "/devices/d2", "does not cover");
        fails_with(&t, "", "does not cover");
        fails_with(&t, "/devices/d1/modules/m1", "another identity");
        assert!(Principal::Device { device_id: "d1".into() }.has(Permission::DeviceConnect));
        assert!(!Principal::Device { device_id: "d1".into() }.has(Permission::ServiceConnect));
    }

    #[test]
    fn module_key_tokens_authorize_only_their_module() {
        let t = device_token(&format!("{HOST}/devices/d1/modules/m1"), &key(3), NOW + 60);
        assert_eq!(
            check(&t, "/devices/d1/modules/m1").unwrap(),
            Principal::Module { device_id: "d1".into(), module_id: "m1".into() }
        );
        fails_with(&t, "/devices/d1", "does not cover");
        let unknown = device_token(&format!("{HOST}/devices/d1/modules/m2"), &key(3), NOW + 60);
        fails_with(&unknown, "/devices/d1/modules/m2", "Unknown module");
    }

    #[test]
    fn policy_tokens_carry_the_policy_rights() {
        let h = hub();
        let owner = &h.policies[0];
        let t = generate_token(HOST, &owner.secondary_key, Some("iothubowner"), NOW + 60).unwrap();
        let p = check(&t, "").unwrap();
        assert_eq!(p, Principal::Policy { name: "iothubowner".into(), rights: Rights::ALL });
        assert!(check(&t, "/devices/d1").is_ok());

        let device = &h.policies[2];
        let gw = generate_token(&format!("{HOST}/devices"), &device.primary_key, Some("device"), NOW + 60)
            .unwrap();
        let p = check(&gw, "/devices/anyone").unwrap();
        assert!(p.has(Permission::DeviceConnect) && !p.has(Permission::ServiceConnect));
        fails_with(&gw, "", "does not cover");
    }

    #[test]
    fn each_failed_check_has_its_own_message() {
        let sr = format!("{HOST}/devices/d1");
        fails_with("Bearer abc", "/devices/d1", "Malformed");
        fails_with(&device_token(&sr, &key(9), NOW + 60), "/devices/d1", "signature");
        fails_with(&device_token(&sr, &key(1), NOW), "/devices/d1", "expired");
        fails_with(&device_token("otherhub/devices/d1", &key(1), NOW + 60), "/devices/d1", "another hub");
        fails_with(&device_token(&format!("{HOST}/devices/nobody"), &key(1), NOW + 60), "", "Unknown device");
        fails_with(&device_token(HOST, &key(1), NOW + 60), "", "without skn");
        let no_policy = generate_token(HOST, &key(1), Some("nope"), NOW + 60).unwrap();
        fails_with(&no_policy, "", "Unknown shared access policy");
        let wrong_key = generate_token(HOST, &key(1), Some("service"), NOW + 60).unwrap();
        fails_with(&wrong_key, "", "signature");
    }

    #[test]
    fn identities_without_keys_never_verify() {
        // An x509 device has empty symmetric keys; a token signed with an
        // empty HMAC key must not pass for it.
        use hmac::Mac as _;
        let sr = format!("{HOST}%2Fdevices%2Fx509dev");
        let se = NOW + 60;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&[]).unwrap();
        mac.update(format!("{sr}\n{se}").as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let text = format!("SharedAccessSignature sr={sr}&sig={}&se={se}", sig.replace('+', "%2B"));
        fails_with(&text, "/devices/x509dev", "signature");
    }

    #[test]
    fn a_scoped_policy_token_covers_any_of_the_named_resources() {
        let h = hub();
        let service = &h.policies[1];
        assert_eq!(service.key_name, "service");
        let t =
            generate_token(&format!("{HOST}/devices/d1"), &service.primary_key, Some("service"), NOW + 60)
                .unwrap();
        let twin = ["/twins/d1", "/devices/d1"];
        assert!(authorize_any(&t, NOW, &names(), &twin, &h).is_ok());
        assert!(authorize_any(&t, NOW, &names(), &["/devices/d1/messages/deviceBound"], &h).is_ok());
        let other = ["/twins/d2", "/devices/d2"];
        let e = authorize_any(&t, NOW, &names(), &other, &h).unwrap_err();
        assert!(e.message.contains("does not cover"), "{}", e.message);
        let e = authorize_any(&t, NOW, &names(), &["/devices"], &h).unwrap_err();
        assert!(e.message.contains("does not cover"), "{}", e.message);
        assert!(authorize_any(&t, NOW, &names(), &[], &h).is_err(), "no resource is covered by nothing");
        // An identity key must still name its own identity first.
        let own = device_token(&format!("{HOST}/devices/d1"), &key(1), NOW + 60);
        assert!(authorize_any(&own, NOW, &names(), &["/devices/d1", "/x"], &h).is_ok());
        let e =
            authorize_any(&own, NOW, &names(), &["/devices/d1/modules/m1", "/devices/d1"], &h).unwrap_err();
        assert!(e.message.contains("another identity"), "{}", e.message);
    }

    #[test]
    fn host_aliases_and_case_are_accepted() {
        let t = device_token("LOCALHOST/devices/d1", &key(1), NOW + 60);
        assert!(check(&t, "/devices/d1").is_ok());
    }
}
