//! `DIR/policies.json`: the hub's shared access policies, created with
//! random keys on the first start and kept 0600.

use std::path::Path;

use anyhow::Context;
use ferrohub_core::sas::{builtin_policies, validate_policies, SharedAccessPolicy};

use crate::fsutil::write_private;
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
