//! Bodies the hub publishes on `$iothub` topics.

use serde::Serialize;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody<'a> {
    error_code: u32,
    message: &'a str,
    tracking_id: &'a str,
    timestamp_utc: &'a str,
}

/// The body of a failed twin response:
/// `{"errorCode":400004,"message":"...","trackingId":"...","timestampUtc":"..."}`.
///
/// Send it with the status in the topic ([`twin_response`](crate::twin_response)):
/// the Node SDK fails a request only when the body has `errorCode` (it ignores
/// the status), Python and .NET only on a status ≥ 300.
pub fn error_body(code_numeric: u32, message: &str, tracking_id: &str, timestamp: &str) -> Vec<u8> {
    let body = ErrorBody { error_code: code_numeric, message, tracking_id, timestamp_utc: timestamp };
    // Serializing a struct of strings and a number into a Vec cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn error_body_shape() {
        let body = error_body(400004, "bad \"json\"", "t-1", "2024-01-01T00:00:00.0000000Z");
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"errorCode":400004,"message":"bad \"json\"","trackingId":"t-1","timestampUtc":"2024-01-01T00:00:00.0000000Z"}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v.get("errorCode").is_some());
    }
}
