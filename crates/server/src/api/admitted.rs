//! Throttles checked before a request's body is read.
//!
//! Registry operations, queries and configuration calls have one transport,
//! REST, so their throttle is checked at the route: an [`Admitted`]
//! argument placed after the caller's [`Service`](super::auth::Service)
//! extractor, so a throttled caller is answered 429 after authentication
//! and before a byte of its body is read or parsed. Classes other
//! transports share (twins, methods, C2D, telemetry) are checked in the
//! hub function every transport calls.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use ferrohub_core::throttle::Class;

use super::error::ApiError;
use super::State;

/// A throttle class metered at the route.
pub(crate) trait RouteClass {
    const CLASS: Class;
}

/// Identity registry operations.
pub(crate) enum RegistryOps {}
impl RouteClass for RegistryOps {
    const CLASS: Class = Class::Registry;
}

/// Query pages.
pub(crate) enum Queries {}
impl RouteClass for Queries {
    const CLASS: Class = Class::Query;
}

/// Configuration create, update, list and delete.
pub(crate) enum ConfigurationOps {}
impl RouteClass for ConfigurationOps {
    const CLASS: Class = Class::Configuration;
}

/// One operation of `C`, admitted by its throttle.
pub(crate) struct Admitted<C>(PhantomData<fn() -> C>);

impl<C: RouteClass> FromRequestParts<State> for Admitted<C> {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, state: &State) -> Result<Self, Self::Rejection> {
        state.throttles.check(C::CLASS, 1)?;
        Ok(Self(PhantomData))
    }
}
