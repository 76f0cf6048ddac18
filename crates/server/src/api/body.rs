//! Request bodies: size-limited before they are read, then parsed as JSON,
//! with Azure's errors for each failure (never axum's plain-text rejections).

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_LENGTH;
use ferrohub_core::{ErrorCode, HubError};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest request body the service API reads. Bulk requests of 100 devices
/// and 32 KB twin sections fit well within it.
pub(crate) const MAX_BODY: usize = 256 * 1024;

/// A JSON body of type `T`.
pub(crate) struct JsonBody<T>(pub T);

/// Bodies declared larger than this are refused without reading a byte;
/// smaller oversized ones are read (and thrown away) to the end, so an
/// honest client slightly over a limit gets its 413 instead of a reset
/// connection.
const DRAIN_CAP: usize = 1024 * 1024;

/// Reads a body of at most `limit` bytes. Memory use is bounded by `limit`
/// whatever the client sends.
pub(crate) async fn read_limited(
    headers: &axum::http::HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, BodyError> {
    use http_body_util::BodyExt as _;
    let declared =
        headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_CAP as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = body;
    let mut kept = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::from_stream)?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > DRAIN_CAP {
                return Err(BodyError::TooLarge);
            }
            if seen <= limit {
                kept.extend_from_slice(&data);
            }
        }
    }
    if seen > limit {
        Err(BodyError::TooLarge)
    } else {
        Ok(kept.freeze())
    }
}

/// Why a body could not be taken.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Over its limit (declared, counted, or a length limit further down
    /// the stack): 413.
    TooLarge,
    /// The body stream broke: a malformed chunk-size line, a truncated
    /// chunk, a body shorter than its `Content-Length`. The request is
    /// malformed, not large: 400.
    Malformed(String),
}

impl BodyError {
    /// Classifies an error of the body stream: only a length limit is a
    /// size problem; anything else the HTTP layer reports is a request it
    /// could not parse.
    fn from_stream(e: axum::Error) -> Self {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(c) = cause {
            if c.is::<http_body_util::LengthLimitError>() {
                return Self::TooLarge;
            }
            cause = c.source();
        }
        Self::Malformed(e.to_string())
    }

    /// Azure's answer: 413 MessageTooLarge saying `too_large`, or 400
    /// ArgumentInvalid for a body that could not be read.
    pub(crate) fn into_api(self, too_large: impl Into<String>) -> ApiError {
        match self {
            Self::TooLarge => ApiError(HubError::new(ErrorCode::MessageTooLarge, too_large)),
            Self::Malformed(detail) => {
                ApiError(HubError::invalid(format!("The request body is malformed: {detail}")))
            }
        }
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, _state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let bytes = read_limited(&parts.headers, body, MAX_BODY)
            .await
            .map_err(|e| e.into_api(format!("The request body is larger than {MAX_BODY} bytes")))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError(HubError::new(ErrorCode::ArgumentNull, "The request body is empty")));
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| ApiError(HubError::format(format!("The request body is not valid: {e}"))))?;
        de.end()
            .map_err(|e| ApiError(HubError::format(format!("The request body is not valid JSON: {e}"))))?;
        Ok(Self(value))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderMap;

    fn stream_of(items: Vec<Result<&'static [u8], std::io::Error>>) -> Body {
        Body::from_stream(futures_util::stream::iter(
            items.into_iter().map(|r| r.map(bytes::Bytes::from_static)),
        ))
    }

    #[tokio::test]
    async fn a_broken_stream_is_malformed_and_an_overflow_too_large() {
        let broken = stream_of(vec![Ok(b"{\"a\":"), Err(std::io::Error::other("invalid chunk size line"))]);
        match read_limited(&HeaderMap::new(), broken, 100).await {
            Err(BodyError::Malformed(d)) => assert!(d.contains("invalid chunk size"), "{d}"),
            other => panic!("{other:?}"),
        }
        let big = stream_of(vec![Ok(&[b'x'; 64]), Ok(&[b'x'; 64])]);
        assert!(matches!(read_limited(&HeaderMap::new(), big, 100).await, Err(BodyError::TooLarge)));
        let limited = Body::new(http_body_util::Limited::new(Body::from(vec![b'x'; 64]), 10));
        assert!(matches!(read_limited(&HeaderMap::new(), limited, 100).await, Err(BodyError::TooLarge)));
        let fine = stream_of(vec![Ok(b"ab"), Ok(b"c")]);
        assert_eq!(&read_limited(&HeaderMap::new(), fine, 100).await.unwrap()[..], b"abc");
    }

    #[test]
    fn each_failure_gets_its_azure_error() {
        let e = BodyError::TooLarge.into_api("too big").0;
        assert_eq!((e.code, e.message.as_str()), (ErrorCode::MessageTooLarge, "too big"));
        let e = BodyError::Malformed("bad chunk".into()).into_api("too big").0;
        assert_eq!(e.code, ErrorCode::ArgumentInvalid);
        assert_eq!(e.code.http_status(), 400);
    }
}
