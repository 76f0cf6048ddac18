//! Shared access policies: the hub-level keys that services (and protocol
//! gateways) sign tokens with, and the permissions each one grants.
//!
//! Rights travel as Azure's text form (`"RegistryRead, ServiceConnect"`) so a
//! `policies.json` written by hand or copied from `az iot hub policy list`
//! reads the same way everywhere.

use std::fmt;
use std::ops::BitOr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{HubError, HubResult};
use crate::identity::validate_key;

/// Most shared access policies a hub may have.
pub const MAX_POLICIES: usize = 16;

/// One permission a shared access policy can grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Permission {
    /// Read device and module identities.
    RegistryRead,
    /// Create, update and delete identities; bulk import/export.
    RegistryWrite,
    /// Service-side operations: twins, queries, methods, jobs, C2D.
    ServiceConnect,
    /// Device-side endpoints, for any device (protocol-gateway pattern).
    DeviceConnect,
}

impl Permission {
    /// Every permission, in Azure's canonical order.
    pub const ALL: [Permission; 4] =
        [Self::RegistryRead, Self::RegistryWrite, Self::ServiceConnect, Self::DeviceConnect];

    /// Azure's name for the permission.
    pub fn name(self) -> &'static str {
        match self {
            Self::RegistryRead => "RegistryRead",
            Self::RegistryWrite => "RegistryWrite",
            Self::ServiceConnect => "ServiceConnect",
            Self::DeviceConnect => "DeviceConnect",
        }
    }

    const fn bit(self) -> u8 {
        match self {
            Self::RegistryRead => 1,
            Self::RegistryWrite => 2,
            Self::ServiceConnect => 4,
            Self::DeviceConnect => 8,
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Permission {
    type Err = HubError;

    /// Accepts Azure's names, ignoring ASCII case.
    fn from_str(s: &str) -> HubResult<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| HubError::invalid(format!("Unknown permission '{}'", s.escape_default())))
    }
}

/// A set of [`Permission`]s. Text and serde form: Azure's comma-separated
/// list, e.g. `"RegistryRead, RegistryWrite"`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rights(u8);

impl Rights {
    /// No permission.
    pub const NONE: Rights = Rights(0);
    /// All four permissions (what `iothubowner` has).
    pub const ALL: Rights = Rights::of(&Permission::ALL);

    /// The set holding exactly `perms`.
    pub const fn of(perms: &[Permission]) -> Rights {
        let mut bits = 0;
        let mut i = 0;
        while i < perms.len() {
            bits |= perms[i].bit();
            i += 1;
        }
        Rights(bits)
    }

    /// Whether `p` is in the set.
    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    /// The set plus `p`.
    #[must_use]
    pub fn with(self, p: Permission) -> Rights {
        Rights(self.0 | p.bit())
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The permissions in the set, in canonical order.
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL.into_iter().filter(move |p| self.contains(*p))
    }
}

impl From<Permission> for Rights {
    fn from(p: Permission) -> Self {
        Rights(p.bit())
    }
}

impl BitOr for Rights {
    type Output = Rights;

    fn bitor(self, rhs: Rights) -> Rights {
        Rights(self.0 | rhs.0)
    }
}

impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(p.name())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rights({self})")
    }
}

impl FromStr for Rights {
    type Err = HubError;

    /// Parses a comma-separated list; whitespace around names is ignored and
    /// an all-blank string is the empty set.
    fn from_str(s: &str) -> HubResult<Self> {
        if s.trim().is_empty() {
            return Ok(Rights::NONE);
        }
        s.split(',').try_fold(Rights::NONE, |acc, part| Ok(acc.with(part.trim().parse()?)))
    }
}

impl Serialize for Rights {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rights {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|e: HubError| serde::de::Error::custom(e.message))
    }
}

/// A hub-level shared access policy; `policies.json` holds an array of them.
/// `Debug` hides the keys.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedAccessPolicy {
    /// The policy name tokens carry as `skn`.
    pub key_name: String,
    /// Base64 primary key.
    pub primary_key: String,
    /// Base64 secondary key.
    pub secondary_key: String,
    /// What tokens signed with either key may do.
    pub rights: Rights,
}

impl SharedAccessPolicy {
    /// A policy with two fresh keys from `new_key`.
    pub fn new(key_name: &str, rights: Rights, new_key: &mut dyn FnMut() -> String) -> Self {
        let primary_key = new_key();
        let secondary_key = new_key();
        Self { key_name: key_name.to_owned(), primary_key, secondary_key, rights }
    }
}

impl fmt::Debug for SharedAccessPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedAccessPolicy")
            .field("key_name", &self.key_name)
            .field("primary_key", &"<redacted>")
            .field("secondary_key", &"<redacted>")
            .field("rights", &self.rights)
            .finish()
    }
}

/// The five policies a new Azure hub starts with, keyed by `new_key`
/// (called twice per policy, primary first).
pub fn builtin_policies(new_key: &mut dyn FnMut() -> String) -> Vec<SharedAccessPolicy> {
    use Permission::*;
    [
        ("iothubowner", Rights::ALL),
        ("service", Rights::of(&[ServiceConnect])),
        ("device", Rights::of(&[DeviceConnect])),
        ("registryRead", Rights::of(&[RegistryRead])),
        ("registryReadWrite", Rights::of(&[RegistryRead, RegistryWrite])),
    ]
    .into_iter()
    .map(|(name, rights)| SharedAccessPolicy::new(name, rights, new_key))
    .collect()
}

/// Checks a hub's policy list: at most [`MAX_POLICIES`], unique non-empty
/// names, valid keys, at least one right each.
pub fn validate_policies(policies: &[SharedAccessPolicy]) -> HubResult<()> {
    if policies.len() > MAX_POLICIES {
        return Err(HubError::invalid(format!(
            "A hub may have at most {MAX_POLICIES} shared access policies"
        )));
    }
    for (i, p) in policies.iter().enumerate() {
        let name = &p.key_name;
        if name.trim().is_empty() || name.contains(char::is_whitespace) {
            return Err(HubError::invalid("A shared access policy name must be non-empty without spaces"));
        }
        if policies[..i].iter().any(|q| q.key_name == *name) {
            return Err(HubError::invalid(format!("Shared access policy '{name}' is defined twice")));
        }
        validate_key(&format!("primary key of policy '{name}'"), &p.primary_key)?;
        validate_key(&format!("secondary key of policy '{name}'"), &p.secondary_key)?;
        if p.rights.is_empty() {
            return Err(HubError::invalid(format!("Shared access policy '{name}' grants no rights")));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn counter_keys() -> impl FnMut() -> String {
        let mut n = 0u8;
        move || {
            n += 1;
            base64::engine::general_purpose::STANDARD.encode([n; 32])
        }
    }

    #[test]
    fn rights_text_round_trips_in_canonical_order() {
        let r: Rights = "DeviceConnect,registryread ,  ServiceConnect".parse().unwrap();
        assert_eq!(r.to_string(), "RegistryRead, ServiceConnect, DeviceConnect");
        assert_eq!(Rights::ALL.to_string(), "RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect");
        assert_eq!(Rights::ALL.to_string().parse::<Rights>().unwrap(), Rights::ALL);
        assert_eq!("".parse::<Rights>().unwrap(), Rights::NONE);
        assert!("RegistryRead, Bogus".parse::<Rights>().is_err());
        assert!("RegistryRead,,".parse::<Rights>().is_err());
    }

    #[test]
    fn rights_contains_only_what_was_added() {
        let r = Rights::from(Permission::RegistryRead) | Rights::from(Permission::RegistryWrite);
        assert!(r.contains(Permission::RegistryRead) && r.contains(Permission::RegistryWrite));
        assert!(!r.contains(Permission::ServiceConnect) && !r.contains(Permission::DeviceConnect));
        assert!(Rights::NONE.is_empty());
    }

    #[test]
    fn policy_json_uses_azure_field_names() {
        let json = r#"[{"keyName":"service","primaryKey":"AQEBAQEBAQEBAQEBAQEBAQ==",
            "secondaryKey":"AgICAgICAgICAgICAgICAg==","rights":"ServiceConnect"}]"#;
        let list: Vec<SharedAccessPolicy> = serde_json::from_str(json).unwrap();
        assert_eq!(list[0].rights, Rights::from(Permission::ServiceConnect));
        let back = serde_json::to_value(&list[0]).unwrap();
        assert_eq!(back["keyName"], "service");
        assert_eq!(back["rights"], "ServiceConnect");
        assert!(
            serde_json::from_str::<Vec<SharedAccessPolicy>>(&json.replace("ServiceConnect", "X")).is_err()
        );
        assert!(!format!("{:?}", list[0]).contains("AQEB"));
    }

    #[test]
    fn builtin_policies_match_azure_defaults() {
        let mut keys = counter_keys();
        let list = builtin_policies(&mut keys);
        let names: Vec<_> = list.iter().map(|p| p.key_name.as_str()).collect();
        assert_eq!(names, ["iothubowner", "service", "device", "registryRead", "registryReadWrite"]);
        assert_eq!(list[0].rights, Rights::ALL);
        assert_eq!(list[4].rights.to_string(), "RegistryRead, RegistryWrite");
        assert_ne!(list[0].primary_key, list[0].secondary_key);
        validate_policies(&list).unwrap();
    }

    #[test]
    fn validation_rejects_bad_lists() {
        let mut keys = counter_keys();
        let mut list = builtin_policies(&mut keys);
        list.push(list[1].clone());
        assert!(validate_policies(&list).is_err());
        let mut list = builtin_policies(&mut keys);
        list[2].rights = Rights::NONE;
        assert!(validate_policies(&list).is_err());
        let mut list = builtin_policies(&mut keys);
        list[3].secondary_key = "not base64".into();
        assert!(validate_policies(&list).is_err());
        let too_many: Vec<_> =
            (0..17).map(|i| SharedAccessPolicy::new(&format!("p{i}"), Rights::ALL, &mut keys)).collect();
        assert!(validate_policies(&too_many).is_err());
    }
}
