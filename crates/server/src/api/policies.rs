//! The hub's shared access policies (ferrohub's routes; Azure manages them
//! on its management plane, which ferrohub does not have):
//! `GET /ferrohub/policies` lists them as `az iot hub policy list` shows
//! them, `POST /ferrohub/policies/{name}/renewKey?renewKey=primary|secondary|swap`
//! renews a key as `az iot hub policy renew-key` does.
//!
//! Both answer with keys, and a policy's keys grant whatever it grants, so
//! both need a token of a policy holding every permission (`iothubowner`):
//! anything less could read or mint a key with more rights than its own.

use std::collections::HashMap;

use axum::extract::{Path, Query, State as AxState};
use axum::http::HeaderMap;
use axum::response::Response;
use ferrohub_core::sas::Permission;
use ferrohub_core::{ErrorCode, HubError};

use super::error::{ApiError, ApiResult};
use super::{authorize, json, State};
use crate::policies::RenewKey;

/// Every permission, each checked, with one message for a policy that
/// lacks any.
fn authorize_owner(state: &State, headers: &HeaderMap) -> ApiResult<()> {
    for p in Permission::ALL {
        match authorize(state, headers, &[p]) {
            Err(ApiError(e)) if e.code == ErrorCode::IotHubUnauthorized => {
                return Err(HubError::new(
                    ErrorCode::IotHubUnauthorized,
                    "Shared access policies are managed with a policy that has every permission \
                     (like iothubowner)",
                )
                .into())
            }
            other => other?,
        }
    }
    Ok(())
}

pub(super) async fn list(AxState(state): AxState<State>, headers: HeaderMap) -> ApiResult<Response> {
    authorize_owner(&state, &headers)?;
    json(state.auth.policies().as_ref())
}

pub(super) async fn renew_key(
    AxState(state): AxState<State>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    authorize_owner(&state, &headers)?;
    let which: RenewKey = query
        .get("renewKey")
        .ok_or_else(|| {
            HubError::new(ErrorCode::ArgumentNull, "The query needs renewKey=primary|secondary|swap")
        })?
        .parse()?;
    json(&state.policy_file.renew_key(&state.auth, &name, which)?)
}
