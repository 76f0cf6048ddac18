//! `ferrohub invoke-device-method`: az's `az iot hub invoke-device-method`.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::Value;

use super::args::Common;
use super::context::Context;
use super::Outcome;

/// az's default method timeout in seconds.
pub(crate) const DEFAULT_METHOD_TIMEOUT: u64 = 30;

#[derive(Debug, Args)]
pub(crate) struct InvokeMethodArgs {
    /// The device id.
    #[arg(long, short = 'd', value_name = "ID")]
    pub(crate) device_id: String,
    /// The method to invoke.
    #[arg(long, visible_alias = "mn", value_name = "NAME")]
    pub(crate) method_name: String,
    /// The method's payload: inline JSON or a file holding JSON.
    #[arg(long, visible_alias = "mp", default_value = "{}", value_name = "JSON|FILE")]
    pub(crate) method_payload: String,
    /// Seconds to wait for the device to connect and for its answer (each).
    #[arg(long, visible_alias = "to", default_value_t = DEFAULT_METHOD_TIMEOUT, value_name = "SECONDS")]
    pub(crate) timeout: u64,
    /// Seconds to wait for the device to connect [default: --timeout].
    #[arg(long, visible_alias = "mct", value_name = "SECONDS")]
    pub(crate) method_connect_timeout: Option<u64>,
    /// Seconds to wait for the device's answer [default: --timeout].
    #[arg(long, visible_alias = "mrt", value_name = "SECONDS")]
    pub(crate) method_response_timeout: Option<u64>,
    #[command(flatten)]
    pub(crate) common: Common,
}

/// The payload as az reads it: JSON text, else the JSON in the file so named.
pub(crate) fn parse_payload(text: &str) -> anyhow::Result<Value> {
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        return Ok(value);
    }
    let path = Path::new(text);
    if path.is_file() {
        let content =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        return serde_json::from_str(&content)
            .with_context(|| format!("--method-payload file {} is not valid JSON", path.display()));
    }
    bail!("--method-payload is neither valid JSON nor a file holding JSON: {text}")
}

/// Runs `invoke-device-method` and returns az's `{"payload":..,"status":..}`.
pub(crate) async fn run(args: InvokeMethodArgs) -> anyhow::Result<Outcome> {
    let payload = parse_payload(&args.method_payload)?;
    let ctx = Context::resolve(&args.common)?;
    let response = Duration::from_secs(args.method_response_timeout.unwrap_or(args.timeout));
    let connect = Duration::from_secs(args.method_connect_timeout.unwrap_or(args.timeout));
    let result =
        ctx.client()?.invoke_method(&args.device_id, &args.method_name, &payload, response, connect).await?;
    Outcome::value(&ctx, &result)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_are_json_text_or_a_json_file() {
        assert_eq!(parse_payload("{}").unwrap(), json!({}));
        assert_eq!(parse_payload(r#"{"a":[1,2]}"#).unwrap(), json!({"a":[1,2]}));
        assert_eq!(parse_payload("\"text\"").unwrap(), json!("text"));
        assert_eq!(parse_payload("null").unwrap(), Value::Null);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.json");
        std::fs::write(&file, r#"{"from":"file"}"#).unwrap();
        assert_eq!(parse_payload(file.to_str().unwrap()).unwrap(), json!({"from":"file"}));
        let err = parse_payload("not json").unwrap_err();
        assert!(err.to_string().contains("neither valid JSON"), "{err}");
    }
}
