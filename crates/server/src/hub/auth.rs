//! SAS authorization of service API requests.

use std::sync::{Arc, RwLock};

use ferrohub_core::identity::{AuthenticationType, Device, DeviceStatus};
use ferrohub_core::sas::{self, KeyLookup, Permission, SasToken, SharedAccessPolicy};
use ferrohub_core::{ErrorCode, HubError, HubResult};

use crate::clock;

/// Verifies tokens against the hub's policies and host names.
pub struct Authorizer {
    /// Swapped whole when a policy's keys are renewed, so a token signed
    /// with a replaced key fails from the next request on; each check works
    /// on the set it started with.
    policies: RwLock<Arc<Vec<SharedAccessPolicy>>>,
    host_names: Vec<String>,
}

/// Where `sas::authorize` finds keys: the hub's policies, plus the keys of
/// the one device a token names (none for the service API, which refuses
/// device tokens before any lookup).
struct Keys<'a> {
    policies: &'a [SharedAccessPolicy],
    device: Option<(String, String)>,
}

impl KeyLookup for Keys<'_> {
    fn policy(&self, name: &str) -> Option<&SharedAccessPolicy> {
        self.policies.iter().find(|p| p.key_name == name)
    }

    fn device_keys(&self, _device_id: &str) -> Option<(String, String)> {
        self.device.clone()
    }
}

impl Authorizer {
    /// An authorizer for a hub known by `host_names`.
    pub fn new(policies: Vec<SharedAccessPolicy>, host_names: Vec<String>) -> Self {
        Self { policies: RwLock::new(Arc::new(policies)), host_names }
    }

    /// The policies tokens are checked against now.
    pub fn policies(&self) -> Arc<Vec<SharedAccessPolicy>> {
        // Each section is one pointer read or write: nothing half-done.
        crate::sync::consistent(self.policies.read(), "policies").clone()
    }

    /// Replaces the policies for every check from now on.
    pub fn replace_policies(&self, policies: Vec<SharedAccessPolicy>) {
        *crate::sync::consistent(self.policies.write(), "policies") = Arc::new(policies);
    }

    /// Checks a token acting for `device` (the device's own key, or a policy
    /// with DeviceConnect covering it): the one rule MQTT CONNECT and
    /// firmware downloads share. Returns the token's expiry.
    pub(crate) fn authorize_device(&self, token: &str, device: &Device) -> HubResult<i64> {
        if device.status == DeviceStatus::Disabled {
            return Err(HubError::unauthorized("The device is disabled"));
        }
        let auth = &device.authentication;
        let policies = self.policies();
        let keys = Keys {
            policies: &policies,
            device: (auth.kind == AuthenticationType::Sas)
                .then(|| (auth.symmetric_key.primary_key.clone(), auth.symmetric_key.secondary_key.clone())),
        };
        let target = format!("/devices/{}", device.device_id);
        let principal = sas::authorize(token, clock::unix_seconds(), &self.host_names, &target, &keys)?;
        if !principal.has(Permission::DeviceConnect) {
            return Err(HubError::new(ErrorCode::IotHubUnauthorized, "The token lacks DeviceConnect"));
        }
        Ok(SasToken::parse(token)?.expiry())
    }

    /// Checks an `Authorization` header for a service API call needing any
    /// one of `needed` on the resource named by any of `resources` (decoded
    /// paths such as `/devices/d1`). A policy token scoped below the hub
    /// (`sr={host}/devices/d1`) passes only for resources its `sr` prefixes
    /// by whole segments, as IoT Hub scopes it. Bad or missing credentials,
    /// and a scope that does not cover the resource, are
    /// 401 IotHubUnauthorizedAccess; a valid policy without the permission is
    /// 401 IotHubUnauthorized, as Azure answers.
    pub fn authorize_service(
        &self,
        header: Option<&str>,
        needed: &[Permission],
        resources: &[&str],
    ) -> HubResult<()> {
        let header =
            header.ok_or_else(|| HubError::unauthorized("The request has no Authorization header"))?;
        if SasToken::parse(header)?.skn().is_none() {
            return Err(HubError::unauthorized("Device credentials cannot be used on the service API"));
        }
        let principal = sas::authorize_any(
            header,
            clock::unix_seconds(),
            &self.host_names,
            resources,
            &Keys { policies: &self.policies(), device: None },
        )?;
        if needed.iter().any(|p| principal.has(*p)) {
            Ok(())
        } else {
            let names: Vec<_> = needed.iter().map(|p| p.name()).collect();
            Err(HubError::new(
                ErrorCode::IotHubUnauthorized,
                format!(
                    "The shared access policy lacks the permission this operation needs ({})",
                    names.join(" or ")
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hub() -> Authorizer {
        let mut n = 0u8;
        let mut key = || {
            n += 1;
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode([n; 32])
        };
        Authorizer::new(sas::builtin_policies(&mut key), vec!["localhost".into(), "hub.example".into()])
    }

    fn token(a: &Authorizer, policy: &str, host: &str, expiry: i64) -> String {
        let p = a.policies().iter().find(|p| p.key_name == policy).unwrap().clone();
        sas::generate_token(host, &p.primary_key, Some(policy), expiry).unwrap()
    }

    #[test]
    fn permissions_follow_the_policy() {
        let a = hub();
        let later = clock::unix_seconds() + 3600;
        let read = token(&a, "registryRead", "localhost", later);
        assert!(a.authorize_service(Some(&read), &[Permission::RegistryRead], &["/devices"]).is_ok());
        let e = a.authorize_service(Some(&read), &[Permission::RegistryWrite], &["/devices"]).unwrap_err();
        assert_eq!(e.code, ErrorCode::IotHubUnauthorized);
        let owner = token(&a, "iothubowner", "HUB.example", later);
        assert!(a.authorize_service(Some(&owner), &[Permission::RegistryWrite], &["/devices/x"]).is_ok());
    }

    #[test]
    fn a_token_scoped_to_a_device_covers_only_that_device() {
        let a = hub();
        let later = clock::unix_seconds() + 3600;
        let policies = a.policies();
        let p = policies.iter().find(|p| p.key_name == "iothubowner").unwrap();
        let scoped =
            sas::generate_token("localhost/devices/d1", &p.primary_key, Some("iothubowner"), later).unwrap();
        let ok = |r: &[&str]| a.authorize_service(Some(&scoped), &[Permission::ServiceConnect], r);
        assert!(ok(&["/devices/d1"]).is_ok());
        assert!(ok(&["/twins/d1", "/devices/d1"]).is_ok());
        assert!(ok(&["/devices/d1/messages/deviceBound"]).is_ok());
        for refused in
            [&["/devices/d2"][..], &["/twins/d10", "/devices/d10"], &["/devices"], &["/configurations"]]
        {
            let e = ok(refused).unwrap_err();
            assert_eq!(e.code, ErrorCode::IotHubUnauthorizedAccess, "{refused:?}");
        }
    }

    #[test]
    fn bad_credentials_are_unauthorized_access() {
        let a = hub();
        let later = clock::unix_seconds() + 3600;
        let expired = token(&a, "iothubowner", "localhost", clock::unix_seconds() - 1);
        let other_hub = token(&a, "iothubowner", "other.example", later);
        let device_style =
            sas::generate_token("localhost/devices/d1", &a.policies()[0].primary_key, None, later).unwrap();
        let forged = token(&a, "iothubowner", "localhost", later).replace("se=", "se=1");
        for bad in [
            None,
            Some(""),
            Some("Bearer x"),
            Some(expired.as_str()),
            Some(other_hub.as_str()),
            Some(device_style.as_str()),
            Some(forged.as_str()),
        ] {
            let e = a.authorize_service(bad, &[Permission::RegistryRead], &["/devices"]).unwrap_err();
            assert_eq!(e.code, ErrorCode::IotHubUnauthorizedAccess, "{bad:?}");
        }
    }

    #[test]
    fn replaced_policies_refuse_tokens_of_the_old_keys_at_once() {
        let a = hub();
        let later = clock::unix_seconds() + 3600;
        let old = token(&a, "service", "localhost", later);
        assert!(a.authorize_service(Some(&old), &[Permission::ServiceConnect], &["/devices"]).is_ok());
        let mut renewed = a.policies().as_ref().clone();
        renewed[1].primary_key = renewed[1].secondary_key.clone();
        a.replace_policies(renewed);
        let e = a.authorize_service(Some(&old), &[Permission::ServiceConnect], &["/devices"]).unwrap_err();
        assert_eq!(e.code, ErrorCode::IotHubUnauthorizedAccess);
        let new = token(&a, "service", "localhost", later);
        assert!(a.authorize_service(Some(&new), &[Permission::ServiceConnect], &["/devices"]).is_ok());
    }
}
