//! The service's side of cloud-to-device delivery: purging a device's
//! queue and reading the feedback the senders' `iothub-ack` asked for.

use reqwest::header::{ACCEPT, ETAG};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

pub use ferrohub_core::c2d::{FeedbackRecord, FeedbackStatus};

use crate::{abbreviate, encode, Error, Result, ServiceClient};

/// What [`ServiceClient::purge_c2d`] removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PurgeResult {
    /// How many queued messages went.
    pub total_messages_purged: u64,
    /// The device whose queue it was.
    pub device_id: String,
}

/// Feedback records locked to this reader until
/// [`ServiceClient::complete_feedback`] or
/// [`ServiceClient::abandon_feedback`] (or a minute passes).
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackBatch {
    /// Settles the batch.
    pub lock_token: String,
    /// The records, oldest first.
    pub records: Vec<FeedbackRecord>,
}

const FEEDBACK_PATH: &str = "/messages/serviceBound/feedback";

impl ServiceClient {
    /// Removes every message queued for a device
    /// (`DELETE /devices/{id}/commands`). Errors: 404 `DeviceNotFound`.
    pub async fn purge_c2d(&self, device_id: &str) -> Result<PurgeResult> {
        let path = format!("/devices/{}/commands", encode(device_id));
        let request = self
            .request(Method::DELETE, &path, &[])?
            .timeout(self.timeout)
            .header(ACCEPT, "application/json");
        let (status, code, text) = self.finish(&path, request).await?;
        if !status.is_success() {
            return Err(Error::from_response_parts(status.as_u16(), code.as_deref(), &text));
        }
        serde_json::from_str(&text)
            .map_err(|e| Error::Decode(format!("purge result: {e} in {}", abbreviate(&text))))
    }

    /// Locks and returns the oldest feedback records, or `None` when there
    /// are none (`GET /messages/serviceBound/feedback`).
    pub async fn receive_feedback(&self) -> Result<Option<FeedbackBatch>> {
        let request = self.request(Method::GET, FEEDBACK_PATH, &[])?.timeout(self.timeout);
        let url = self.url(FEEDBACK_PATH);
        let response =
            request.send().await.map_err(|source| Error::Transport { url: url.clone(), source })?;
        let status = response.status();
        let code = crate::error_code_header(&response);
        let etag = response.headers().get(ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let text = response.text().await.map_err(|source| Error::Transport { url, source })?;
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(Error::from_response_parts(status.as_u16(), code.as_deref(), &text));
        }
        let lock_token = etag
            .as_deref()
            .map(unquote)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Decode("a feedback batch without an ETag lock token".into()))?;
        let records = serde_json::from_str(&text)
            .map_err(|e| Error::Decode(format!("feedback records: {e} in {}", abbreviate(&text))))?;
        Ok(Some(FeedbackBatch { lock_token: lock_token.to_owned(), records }))
    }

    /// Deletes a received batch. Errors: 412 `DeviceMessageLockLost` when
    /// the lock token no longer holds it.
    pub async fn complete_feedback(&self, lock_token: &str) -> Result<()> {
        self.settle_feedback(Method::DELETE, &format!("{FEEDBACK_PATH}/{}", encode(lock_token))).await
    }

    /// Puts a received batch back for the next receive. Errors: as
    /// [`ServiceClient::complete_feedback`].
    pub async fn abandon_feedback(&self, lock_token: &str) -> Result<()> {
        self.settle_feedback(Method::POST, &format!("{FEEDBACK_PATH}/{}/abandon", encode(lock_token))).await
    }

    async fn settle_feedback(&self, method: Method, path: &str) -> Result<()> {
        let request = self.request(method, path, &[])?.timeout(self.timeout);
        let (status, code, text) = self.finish(path, request).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(Error::from_response_parts(status.as_u16(), code.as_deref(), &text))
        }
    }
}

/// An `ETag` value without its surrounding quotes (IoT Hub quotes lock
/// tokens; an unquoted one is taken as it is).
fn unquote(etag: &str) -> &str {
    etag.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_tokens_lose_their_quotes_only() {
        assert_eq!(unquote("\"abc\""), "abc");
        assert_eq!(unquote("abc"), "abc");
        assert_eq!(unquote("\"abc"), "\"abc");
    }
}
