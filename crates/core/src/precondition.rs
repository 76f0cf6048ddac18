//! `If-Match` preconditions, as every transport hands them to the hub.
//!
//! The REST API reads them from the `If-Match` header; internal writers
//! (rollouts, bulk, configuration passes) state them directly. The rule is
//! the same everywhere, so it lives here rather than in a transport.

use crate::{HubError, HubResult};

/// An `If-Match` precondition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// No header: for `PUT /devices/{id}` this means "create".
    Absent,
    /// `*`: whatever the current etag is.
    Any,
    /// A specific etag (quotes stripped).
    Etag(String),
}

impl IfMatch {
    /// 412 PreconditionFailed unless the precondition admits `current`.
    pub fn check(&self, current: &str) -> HubResult<()> {
        match self {
            Self::Etag(e) if e != current => Err(HubError::precondition_failed()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_a_different_etag_fails() {
        assert!(IfMatch::Absent.check("a").is_ok());
        assert!(IfMatch::Any.check("a").is_ok());
        assert!(IfMatch::Etag("a".into()).check("a").is_ok());
        let e = IfMatch::Etag("b".into()).check("a").unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::PreconditionFailed);
    }
}
