//! The hub's shared access policies through ferrohub's own routes (Azure
//! manages them on its management plane instead). Both calls need a
//! policy with every permission, such as `iothubowner`.

use ferrohub_core::sas::SharedAccessPolicy;
use reqwest::Method;

use crate::{encode, Result, ServiceClient};

impl ServiceClient {
    /// Every shared access policy with its keys and rights
    /// (`az iot hub policy list`).
    pub async fn list_policies(&self) -> Result<Vec<SharedAccessPolicy>> {
        self.json(Method::GET, "/ferrohub/policies", &[], None, None::<&()>).await
    }

    /// Renews a key of policy `name` — `renew_key` is `primary`,
    /// `secondary` or `swap` — and returns the policy as it is now
    /// (`az iot hub policy renew-key`). Tokens signed with a replaced key
    /// are refused from then on, this client's own included when it signs
    /// with that policy.
    pub async fn renew_policy_key(&self, name: &str, renew_key: &str) -> Result<SharedAccessPolicy> {
        let path = format!("/ferrohub/policies/{}/renewKey", encode(name));
        self.json(Method::POST, &path, &[("renewKey", renew_key)], None, None::<&()>).await
    }
}
