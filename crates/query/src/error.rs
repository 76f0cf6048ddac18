//! The one error type of the crate.

/// A query that cannot be parsed or run.
///
/// `position` is a byte offset into the query text (0-based; the text's
/// length when the problem is the end of input; 0 for the few errors not
/// tied to one place: an expression too deep, an unsupported collection).
/// `message` is complete and names the position itself, e.g. `Syntax error
/// at position 27: expected an expression after 'WHERE', found end of
/// input`, so it can be passed to a client unchanged (the hub answers it
/// with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    /// Byte offset of the offending token in the query text.
    pub position: usize,
    /// The whole message, position included.
    pub message: String,
}

impl QueryError {
    /// A syntax error: `Syntax error at position {position}: {detail}`.
    pub(crate) fn syntax(position: usize, detail: impl std::fmt::Display) -> Self {
        Self { position, message: format!("Syntax error at position {position}: {detail}") }
    }

    /// A well-formed query that breaks a rule of the language (unknown
    /// function, wrong arity, aggregate in WHERE, ...):
    /// `Error at position {position}: {detail}`.
    pub(crate) fn semantic(position: usize, detail: impl std::fmt::Display) -> Self {
        Self { position, message: format!("Error at position {position}: {detail}") }
    }

    /// A valid query that ferrohub cannot run (e.g. `FROM devices.jobs`):
    /// `Not supported: {detail}`, position 0.
    pub(crate) fn unsupported(detail: impl std::fmt::Display) -> Self {
        Self { position: 0, message: format!("Not supported: {detail}") }
    }
}
