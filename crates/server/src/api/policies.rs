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

use axum::extract::{Path, Query};
use axum::response::Response;
use ferrohub_core::{ErrorCode, HubError};

use super::auth::{Own, Owner};
use super::error::ApiResult;
use super::json;
use crate::policies::RenewKey;

pub(super) async fn list(Own { hub: state, .. }: Own<Owner>) -> ApiResult<Response> {
    json(state.auth.policies().as_ref())
}

pub(super) async fn renew_key(
    Own { hub: state, .. }: Own<Owner>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let which: RenewKey = query
        .get("renewKey")
        .ok_or_else(|| {
            HubError::new(ErrorCode::ArgumentNull, "The query needs renewKey=primary|secondary|swap")
        })?
        .parse()?;
    json(&state.policy_file.renew_key(&state.auth, &name, which)?)
}
