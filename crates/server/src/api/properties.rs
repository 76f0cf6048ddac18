//! The one mapping from HTTP-style property names (`iothub-messageid`,
//! `iothub-app-*`, ...) to a message's system and application properties:
//! a device's telemetry (a single message's headers and each entry of a
//! batch, whose keys keep the same `iothub-app-` prefix) and the service's
//! cloud-to-device send.

use ferrohub_core::{HubError, HubResult};
use ferrohub_mqtt::bag::MessageProperties;

pub(crate) use ferrohub_mqtt::batch::{message_properties, APP_PREFIX, BATCH_CONTENT_TYPE};

/// The properties of a single message, from its request headers. A header
/// whose value is not text is refused (400) rather than dropped.
pub(crate) fn from_headers(headers: &axum::http::HeaderMap) -> HubResult<MessageProperties> {
    let mut pairs = Vec::new();
    for (name, value) in headers {
        let n = name.as_str();
        if is_property(n) {
            let v =
                value.to_str().map_err(|_| HubError::invalid(format!("The {n} header is not valid text")))?;
            pairs.push((n, v));
        }
    }
    Ok(message_properties(pairs))
}

fn is_property(lower: &str) -> bool {
    lower.starts_with("iothub-") || lower == "dt-subject"
}

/// Parses a batch (`ferrohub_mqtt::batch::parse_batch`); a bad one is 400
/// IotHubFormatError.
pub(crate) fn parse_batch(body: &[u8]) -> HubResult<Vec<(MessageProperties, Vec<u8>)>> {
    ferrohub_mqtt::batch::parse_batch(body).map_err(|e| HubError::format(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bad_batches_are_format_errors() {
        for bad in [&b"{}"[..], b"[{\"body\":\"!!\"}]", b"not json"] {
            let e = parse_batch(bad).unwrap_err();
            assert_eq!(
                e.code,
                ferrohub_core::ErrorCode::IotHubFormatError,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
