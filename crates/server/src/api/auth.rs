//! Who may call a route, decided before anything else of the request is
//! looked at.
//!
//! Handlers get the hub only through one of the extractors here, and each
//! takes it as its first argument: axum runs `FromRequestParts` extractors
//! in argument order and the one body extractor last, so a request without
//! a valid token, or without the route's permission, is answered before its
//! path parameters are decoded, its query is parsed or a byte of its body is
//! read. The permission a route needs is part of its handler's type
//! (`Service<RegistryWrite>`), so it cannot be forgotten or checked twice.
//!
//! Once the caller is known, the same extractors refuse what IoT Hub refuses
//! for every route: a malformed percent escape in any path segment (400
//! ArgumentInvalid) and, on IoT Hub's own routes, a missing or unknown
//! `api-version` (400 InvalidProtocolVersion).

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use ferrohub_core::sas::Permission;
use ferrohub_core::{ErrorCode, HubError};

use super::error::ApiError;
use super::State;

/// The permissions a route accepts: any one of them, or with `ALL` every
/// one of them.
pub(crate) trait Needs {
    const ANY_OF: &'static [Permission];
    const ALL: bool = false;
}

macro_rules! needs {
    ($($(#[$doc:meta])* $name:ident => [$($p:ident),+];)+) => {$(
        $(#[$doc])*
        pub(crate) enum $name {}
        impl Needs for $name {
            const ANY_OF: &'static [Permission] = &[$(Permission::$p),+];
        }
    )+};
}

needs! {
    /// Registry reads: device identities, device statistics.
    RegistryRead => [RegistryRead];
    /// Registry writes: create, update, delete, bulk.
    RegistryWrite => [RegistryWrite];
    /// Twins, methods, C2D, configurations, queries' twin side, ferrohub's
    /// firmware and telemetry routes.
    ServiceConnect => [ServiceConnect];
    /// Queries and service statistics take either (docs/decisions.md).
    ServiceOrRegistryRead => [ServiceConnect, RegistryRead];
}

/// Every permission (a policy like `iothubowner`): ferrohub's policy routes,
/// whose answers carry keys that grant whatever their policy grants.
pub(crate) enum Owner {}
impl Needs for Owner {
    const ANY_OF: &'static [Permission] = &Permission::ALL;
    const ALL: bool = true;
}

/// An IoT Hub service route: a policy token holding one of `P`'s
/// permissions whose `sr` covers the request's resource, a well-formed
/// path, and an `api-version` IoT Hub has served. Holds the hub.
pub(crate) struct Service<P> {
    pub hub: State,
    needs: PhantomData<fn() -> P>,
}

/// A ferrohub route that IoT Hub does not have (firmware, rollouts,
/// `/events`, watch streams): the same token and path checks, but no
/// `api-version`, which is IoT Hub's versioning of its own surface.
pub(crate) struct Own<P> {
    pub hub: State,
    needs: PhantomData<fn() -> P>,
}

impl<P: Needs> FromRequestParts<State> for Service<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &State) -> Result<Self, Self::Rejection> {
        authorize_service::<P>(parts, state)?;
        check_api_version(parts.uri.query())?;
        Ok(Self { hub: state.clone(), needs: PhantomData })
    }
}

impl<P: Needs> FromRequestParts<State> for Own<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &State) -> Result<Self, Self::Rejection> {
        authorize_service::<P>(parts, state)?;
        Ok(Self { hub: state.clone(), needs: PhantomData })
    }
}

/// A device HTTPS route (`/devices/{id}/messages/…`): a token acting for the
/// device in the path — its own key, or a policy with DeviceConnect — then
/// the path and `api-version` checks. Holds the hub and the device id.
pub(crate) struct DeviceCall {
    pub hub: State,
    pub device_id: String,
}

impl FromRequestParts<State> for DeviceCall {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &State) -> Result<Self, Self::Rejection> {
        let token = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        let path = RequestPath::of(parts.uri.path());
        // Every device route is `/devices/{id}/…`. A malformed id is
        // authenticated as written (it names no device a token can act
        // for, unless one was created under that literal name before such
        // ids were refused) and refused below once the caller is known.
        let id = match &path {
            RequestPath::Decoded(segments) => segments.get(1).cloned(),
            RequestPath::Malformed(raw) => raw.split('/').filter(|s| !s.is_empty()).nth(1).map(str::to_owned),
        }
        .unwrap_or_default();
        state.authenticate_device(token, Some(&id)).await?;
        path.decoded()?;
        check_api_version(parts.uri.query())?;
        // Every authenticated device call is activity, as an MQTT packet is.
        state.activity.seen(&id);
        Ok(Self { hub: state.clone(), device_id: id })
    }
}

pub(super) fn authorize_service<P: Needs>(parts: &Parts, hub: &State) -> Result<(), ApiError> {
    let header = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let path = RequestPath::of(parts.uri.path());
    let resources = path.resources();
    let resources: Vec<&str> = resources.iter().map(String::as_str).collect();
    if P::ALL {
        for p in P::ANY_OF {
            hub.auth.authorize_service(header, std::slice::from_ref(p), &resources)?;
        }
    } else {
        hub.auth.authorize_service(header, P::ANY_OF, &resources)?;
    }
    path.decoded()?;
    Ok(())
}

/// A request path split into percent-decoded segments, or kept raw when a
/// segment cannot be decoded.
#[derive(Debug, PartialEq, Eq)]
enum RequestPath {
    Decoded(Vec<String>),
    Malformed(String),
}

impl RequestPath {
    fn of(raw: &str) -> Self {
        let segments: Option<Vec<String>> =
            raw.split('/').filter(|s| !s.is_empty()).map(decode_segment).collect();
        match segments {
            Some(s) => Self::Decoded(s),
            None => Self::Malformed(raw.to_owned()),
        }
    }

    /// The resource paths a token's `sr` may cover to reach this request:
    /// the path itself, and for `/twins/{id}/…` also the device it belongs
    /// to (`/devices/{id}`), so a token scoped to a device reaches its twin
    /// and its methods. A malformed path is matched as written: only a
    /// hub-wide token covers it, and it is refused after authentication.
    fn resources(&self) -> Vec<String> {
        match self {
            Self::Malformed(raw) => vec![raw.clone()],
            Self::Decoded(segments) => {
                let mut out = vec![segments.iter().flat_map(|s| ["/", s.as_str()]).collect::<String>()];
                if let [first, id, ..] = segments.as_slice() {
                    if first == "twins" {
                        out.push(format!("/devices/{id}"));
                    }
                }
                out
            }
        }
    }

    fn decoded(&self) -> Result<&[String], ApiError> {
        match self {
            Self::Decoded(s) => Ok(s),
            Self::Malformed(raw) => Err(ApiError(HubError::invalid(format!(
                "The path {raw} has a malformed percent escape, an escaped '/' or bytes that are not UTF-8"
            )))),
        }
    }
}

/// Decodes one segment strictly: every `%` must start two hex digits, the
/// result must be UTF-8, and it must not contain `/` (no IoT Hub id may,
/// and a scope check by segments must see the segments the router saw).
fn decode_segment(s: &str) -> Option<String> {
    let bytes = ferrohub_core::escape::percent_decode_strict(s)?;
    String::from_utf8(bytes).ok().filter(|s| !s.contains('/'))
}

/// The `api-version`s ferrohub answers on IoT Hub's routes: IoT Hub's
/// generally available data-plane versions, plus the preview the older
/// device SDKs send. Which one a client names changes nothing in ferrohub's
/// answers (it serves today's shapes to all of them); an unlisted one is
/// refused as IoT Hub refuses it, so a typo is not silently served.
pub(crate) const API_VERSIONS: &[&str] = &[
    "2016-02-03",
    "2016-11-14",
    "2017-06-30",
    "2017-11-08-preview",
    "2018-01-22",
    "2018-04-01",
    "2018-06-30",
    "2019-03-30",
    "2019-10-01",
    "2020-03-13",
    "2020-09-30",
    "2021-04-12",
];

/// IoT Hub's answer to a missing or unknown `api-version`: 400 with
/// `ErrorCode:InvalidProtocolVersion;BadRequest`, word for word.
fn check_api_version(query: Option<&str>) -> Result<(), ApiError> {
    let mut versions = query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .filter(|(k, _)| k.eq_ignore_ascii_case("api-version"))
        .map(|(_, v)| v)
        .peekable();
    let known = versions.peek().is_some() && versions.all(|v| API_VERSIONS.contains(&v));
    if known {
        Ok(())
    } else {
        Err(ApiError(HubError::new(ErrorCode::InvalidProtocolVersion, "BadRequest")))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn segments_decode_strictly() {
        assert_eq!(decode_segment("a%20b").as_deref(), Some("a b"));
        assert_eq!(decode_segment("a%25ZZ").as_deref(), Some("a%ZZ"));
        assert_eq!(decode_segment("caf%C3%A9").as_deref(), Some("café"));
        for bad in ["a%ZZ", "a%", "a%2", "%+1", "a%2Fb", "a%2fb", "%ff"] {
            assert_eq!(decode_segment(bad), None, "{bad}");
        }
    }

    #[test]
    fn twins_are_also_their_device() {
        let p = RequestPath::of("/twins/d%201/methods");
        assert_eq!(p.resources(), ["/twins/d 1/methods", "/devices/d 1"]);
        assert_eq!(RequestPath::of("/devices/d1/").resources(), ["/devices/d1"]);
        assert_eq!(RequestPath::of("/devices").resources(), ["/devices"]);
        let bad = RequestPath::of("/devices/a%ZZ");
        assert_eq!(bad.resources(), ["/devices/a%ZZ"]);
        assert_eq!(bad.decoded().unwrap_err().0.code, ErrorCode::ArgumentInvalid);
    }

    #[test]
    fn api_version_must_be_present_and_known() {
        for ok in ["api-version=2021-04-12", "top=1&api-version=2020-09-30", "API-VERSION=2019-10-01&reject"]
        {
            assert!(check_api_version(Some(ok)).is_ok(), "{ok}");
        }
        for bad in [
            None,
            Some(""),
            Some("top=1"),
            Some("api-version"),
            Some("api-version="),
            Some("api-version=1"),
            Some("api-version=2099-01-01"),
            Some("api-version=2021-04-12&api-version=nope"),
        ] {
            let e = check_api_version(bad).unwrap_err().0;
            assert_eq!(
                (e.code, e.message.as_str()),
                (ErrorCode::InvalidProtocolVersion, "BadRequest"),
                "{bad:?}"
            );
        }
    }
}
