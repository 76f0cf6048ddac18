//! Firmware images hosted by ferrohub (not an Azure IoT Hub API).

use std::path::Path;

use reqwest::Method;
use serde_json::Value;

use crate::{encode, Error, Result, ServiceClient};

impl ServiceClient {
    /// Uploads an image, streamed from disk (never read whole into memory).
    /// Returns the hub's signed record (`version`, `size`, `sha256`,
    /// `deviceType`, `created`, `fwManifest`, `fwSignature`).
    pub async fn upload_firmware(
        &self,
        file: &Path,
        version: &str,
        device_type: Option<&str>,
    ) -> Result<Value> {
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", file.display())))?;
        let len = f.metadata().await.map(|m| m.len()).ok();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f));
        let mut query = vec![("version", version)];
        if let Some(t) = device_type {
            query.push(("deviceType", t));
        }
        let mut request = self
            .request(Method::POST, "/firmware-images", &query)?
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        if let Some(len) = len {
            request = request.header(reqwest::header::CONTENT_LENGTH, len);
        }
        let (status, code, text) = self.finish("/firmware-images", request).await?;
        if !status.is_success() {
            return Err(Error::from_response_parts(status.as_u16(), code.as_deref(), &text));
        }
        serde_json::from_str(&text).map_err(|e| Error::Decode(e.to_string()))
    }

    /// Every hosted image, newest first.
    pub async fn list_firmware(&self) -> Result<Vec<Value>> {
        self.json(Method::GET, "/firmware-images", &[], None, None::<&()>).await
    }

    /// One image's record.
    pub async fn get_firmware(&self, sha256: &str) -> Result<Value> {
        self.json(Method::GET, &format!("/firmware-images/{}", encode(sha256)), &[], None, None::<&()>).await
    }

    /// Deletes an image (refused while a configuration names it).
    pub async fn delete_firmware(&self, sha256: &str) -> Result<()> {
        let path = format!("/firmware-images/{}", encode(sha256));
        let request = self.request(Method::DELETE, &path, &[])?;
        let (status, code, text) = self.finish(&path, request).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(Error::from_response_parts(status.as_u16(), code.as_deref(), &text))
        }
    }

    /// The public key (PEM) devices verify firmware manifests with.
    pub async fn firmware_public_key(&self) -> Result<String> {
        let request = self.request(Method::GET, "/firmware-key", &[])?;
        let (status, code, text) = self.finish("/firmware-key", request).await?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(Error::from_response_parts(status.as_u16(), code.as_deref(), &text))
        }
    }

    /// Creates a staged rollout (`POST /firmware-rollouts`); returns it.
    pub async fn create_rollout(&self, rollout: &Value) -> Result<Value> {
        self.json(Method::POST, "/firmware-rollouts", &[], None, Some(rollout)).await
    }

    /// One rollout with its progress per wave.
    pub async fn get_rollout(&self, id: &str) -> Result<Value> {
        self.json(Method::GET, &format!("/firmware-rollouts/{}", encode(id)), &[], None, None::<&()>).await
    }

    /// One rollout, with or without its per-device list.
    pub async fn get_rollout_with(&self, id: &str, members: bool) -> Result<Value> {
        let path = format!("/firmware-rollouts/{}", encode(id));
        let query: &[(&str, &str)] = if members { &[] } else { &[("members", "false")] };
        self.json(Method::GET, &path, query, None, None::<&()>).await
    }

    /// Deletes a finished, halted or cancelled rollout with its
    /// configurations (`DELETE /firmware-rollouts/{id}`).
    pub async fn delete_rollout(&self, id: &str) -> Result<()> {
        let path = format!("/firmware-rollouts/{}", encode(id));
        self.send(Method::DELETE, &path, &[], None, None::<&()>).await.map(drop)
    }

    /// Every rollout.
    pub async fn list_rollouts(&self) -> Result<Vec<Value>> {
        self.json(Method::GET, "/firmware-rollouts", &[], None, None::<&()>).await
    }

    /// `pause`, `resume`, `cancel` or `rollback` a rollout; returns it.
    pub async fn rollout_action(&self, id: &str, action: &str) -> Result<Value> {
        let path = format!("/firmware-rollouts/{}/{}", encode(id), encode(action));
        self.json(Method::POST, &path, &[], None, Some(&serde_json::json!({}))).await
    }

    /// Where devices download an image: `https://{host}[:{port}]/firmware/{sha256}`.
    pub fn firmware_uri(&self, sha256: &str) -> String {
        self.url(&format!("/firmware/{sha256}"))
    }
}
