//! `DIR/policies.json`: the hub's shared access policies, created with
//! random keys on the first start and kept 0600, and the renewal of their
//! keys (`ferrohub policy renew-key`, shaped like
//! `az iot hub policy renew-key`).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use anyhow::Context;
use ferrohub_core::sas::{builtin_policies, validate_policies, SharedAccessPolicy};
use ferrohub_core::{ErrorCode, HubError, HubResult};

use crate::fsutil::write_private;
use crate::hub::auth::Authorizer;
use crate::hub::mint::new_key;

/// File name inside the data dir.
pub const POLICIES_FILE: &str = "policies.json";

/// Loads the policies, creating the built-in set when the file is absent.
pub fn load_or_create(dir: &Path) -> anyhow::Result<Vec<SharedAccessPolicy>> {
    let path = dir.join(POLICIES_FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let policies: Vec<SharedAccessPolicy> =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        validate_policies(&policies).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message))?;
        return Ok(policies);
    }
    let policies = builtin_policies(&mut new_key);
    write_private(&path, &serde_json::to_vec_pretty(&policies)?)?;
    tracing::info!(path = %path.display(), "created shared access policies");
    Ok(policies)
}

/// Which key a renewal replaces: az's `--renew-key` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewKey {
    /// A new random primary key.
    Primary,
    /// A new random secondary key.
    Secondary,
    /// The two keys trade places.
    Swap,
}

impl FromStr for RenewKey {
    type Err = HubError;

    /// az's names, ignoring ASCII case.
    fn from_str(s: &str) -> HubResult<Self> {
        match s.to_ascii_lowercase().as_str() {
            "primary" => Ok(Self::Primary),
            "secondary" => Ok(Self::Secondary),
            "swap" => Ok(Self::Swap),
            _ => Err(HubError::invalid(format!(
                "renewKey must be primary, secondary or swap, not '{}'",
                s.escape_default()
            ))),
        }
    }
}

/// `policies` with one key of policy `name` renewed as `which` says.
pub fn renewed(
    policies: &[SharedAccessPolicy],
    name: &str,
    which: RenewKey,
    new_key: &mut dyn FnMut() -> String,
) -> HubResult<Vec<SharedAccessPolicy>> {
    let mut policies = policies.to_vec();
    let policy = policies.iter_mut().find(|p| p.key_name == name).ok_or_else(|| {
        HubError::new(ErrorCode::IotHubNotFound, format!("Shared access policy '{name}' does not exist"))
    })?;
    match which {
        RenewKey::Primary => policy.primary_key = new_key(),
        RenewKey::Secondary => policy.secondary_key = new_key(),
        RenewKey::Swap => std::mem::swap(&mut policy.primary_key, &mut policy.secondary_key),
    }
    Ok(policies)
}

/// Where the policies are kept, and the one writer of that file.
pub struct PolicyFile {
    path: PathBuf,
    /// Renewals one at a time: each reads the set the last one left, and the
    /// file and the in-memory set change in the same order.
    write: Mutex<()>,
}

impl PolicyFile {
    /// The file in data dir `dir`.
    pub fn new(dir: &Path) -> Self {
        Self { path: dir.join(POLICIES_FILE), write: Mutex::new(()) }
    }

    /// Renews one key of policy `name` and returns the policy as it is now.
    /// The file is replaced first (atomically, and durably before the
    /// answer), then `auth`'s set: when the write fails nothing changed,
    /// and once the caller has the new key the old one is refused.
    pub fn renew_key(&self, auth: &Authorizer, name: &str, which: RenewKey) -> HubResult<SharedAccessPolicy> {
        // Each section writes a whole file then swaps a pointer; a panic
        // between the two leaves the file ahead, which the next start reads.
        let _one = crate::sync::consistent(self.write.lock(), "policies.json writer");
        let policies = renewed(&auth.policies(), name, which, &mut new_key)?;
        validate_policies(&policies)?;
        let json = serde_json::to_vec_pretty(&policies).map_err(|e| HubError::internal(e.to_string()))?;
        if let Err(e) = write_private(&self.path, &json) {
            tracing::error!(error = %e, path = %self.path.display(), "writing the policies failed");
            return Err(HubError::internal("The policies could not be saved; nothing was changed"));
        }
        let policy = policies.iter().find(|p| p.key_name == name).cloned();
        auth.replace_policies(policies);
        tracing::info!(policy = name, key = ?which, "renewed a shared access policy key");
        policy.ok_or_else(|| HubError::internal("the renewed policy vanished"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn counter() -> impl FnMut() -> String {
        let mut n = 0u8;
        move || {
            n += 1;
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode([n; 32])
        }
    }

    #[test]
    fn each_renewal_changes_one_policy_as_asked() {
        let before = builtin_policies(&mut counter());
        let mut keys = counter();
        for _ in 0..20 {
            keys(); // past the keys `before` holds
        }
        let service =
            |ps: &[SharedAccessPolicy]| ps.iter().find(|p| p.key_name == "service").cloned().unwrap();
        let old = service(&before);

        let after = renewed(&before, "service", RenewKey::Primary, &mut keys).unwrap();
        assert_ne!(service(&after).primary_key, old.primary_key);
        assert_eq!(service(&after).secondary_key, old.secondary_key);
        let after = renewed(&before, "service", RenewKey::Secondary, &mut keys).unwrap();
        assert_eq!(service(&after).primary_key, old.primary_key);
        assert_ne!(service(&after).secondary_key, old.secondary_key);
        let after = renewed(&before, "service", RenewKey::Swap, &mut keys).unwrap();
        assert_eq!(
            (service(&after).primary_key, service(&after).secondary_key),
            (old.secondary_key.clone(), old.primary_key.clone())
        );
        // The other policies are untouched.
        for (a, b) in before.iter().zip(&after) {
            if a.key_name != "service" {
                assert_eq!(a, b);
            }
        }
        let e = renewed(&before, "nobody", RenewKey::Swap, &mut keys).unwrap_err();
        assert_eq!(e.code, ErrorCode::IotHubNotFound);
    }

    #[test]
    fn renew_key_values_are_azs() {
        assert_eq!("Primary".parse::<RenewKey>().unwrap(), RenewKey::Primary);
        assert_eq!("secondary".parse::<RenewKey>().unwrap(), RenewKey::Secondary);
        assert_eq!("SWAP".parse::<RenewKey>().unwrap(), RenewKey::Swap);
        assert_eq!("both".parse::<RenewKey>().unwrap_err().code, ErrorCode::ArgumentInvalid);
    }

    #[test]
    fn a_renewal_is_written_before_it_takes_effect_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let policies = load_or_create(dir.path()).unwrap();
        let auth = Authorizer::new(policies.clone(), vec!["localhost".into()]);
        let file = PolicyFile::new(dir.path());
        let renewed = file.renew_key(&auth, "service", RenewKey::Primary).unwrap();
        let reloaded = load_or_create(dir.path()).unwrap();
        assert_eq!(reloaded.iter().find(|p| p.key_name == "service"), Some(&renewed));
        assert_eq!(auth.policies().as_ref(), &reloaded);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(POLICIES_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // A write that fails changes nothing, in memory either.
        let before = auth.policies();
        let gone = PolicyFile::new(&dir.path().join("no-such-dir"));
        assert_eq!(
            gone.renew_key(&auth, "service", RenewKey::Swap).unwrap_err().code,
            ErrorCode::ServerError
        );
        assert_eq!(auth.policies(), before);
    }
}
