//! `ferrohub monitor-events`: az's `az iot hub monitor-events`, reading the
//! hub's live telemetry stream (`GET /events`).
//!
//! Each event is printed as soon as it arrives, in az's shape:
//! `{"event":{"origin":<device id>,"payload":<JSON if the body parses as
//! JSON, else text>,"properties":{"system":{..},"application":{..}}}}`
//! (`properties` only with `--properties`). A line on stderr says when the
//! stream is open, so scripts can start sending after it. The command exits
//! 0 after `--timeout` seconds without an event (0 = never) or on Ctrl-C.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use clap::{Args, ValueEnum};
use ferrohub_service_client::Event;
use serde_json::{json, Map, Value};

use super::args::{Common, OutputFormat};
use super::context::Context;
use super::{output, Outcome};

/// az's default: five minutes without an event.
pub(crate) const DEFAULT_MONITOR_TIMEOUT: u64 = 300;

/// `--properties` values (az's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PropertyKind {
    /// System and application properties.
    All,
    /// System properties.
    Sys,
    /// Application properties.
    App,
    /// Annotations (the device id and enqueued time).
    Anno,
}

#[derive(Debug, Args)]
pub(crate) struct MonitorEventsArgs {
    /// Only events of this device [default: every device].
    #[arg(long, short = 'd', value_name = "ID")]
    pub(crate) device_id: Option<String>,
    /// Which message properties to show (repeatable, or several values).
    #[arg(long = "properties", visible_alias = "props", short = 'p', value_enum, num_args = 1..)]
    pub(crate) properties: Vec<PropertyKind>,
    /// Exit after this many seconds without an event; 0 waits forever.
    #[arg(long, visible_alias = "to", default_value_t = DEFAULT_MONITOR_TIMEOUT, value_name = "SECONDS")]
    pub(crate) timeout: u64,
    /// Replay up to N recent events before the live ones (ferrohub's own flag).
    #[arg(long, value_name = "N")]
    pub(crate) last: Option<u32>,
    /// Ignored (az's Event Hubs consumer group).
    #[arg(long, visible_alias = "cg", value_name = "GROUP")]
    pub(crate) consumer_group: Option<String>,
    /// Ignored (az decodes JSON bodies whatever the content type says; so does ferrohub).
    #[arg(long, visible_alias = "ct", value_name = "TYPE")]
    pub(crate) content_type: Option<String>,
    /// Ignored (az's prompt skipper).
    #[arg(long, short = 'y')]
    pub(crate) yes: bool,
    #[command(flatten)]
    pub(crate) common: Common,
}

/// Which property sections an event shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sections {
    pub(crate) system: bool,
    pub(crate) application: bool,
    pub(crate) annotations: bool,
}

impl Sections {
    pub(crate) fn from_kinds(kinds: &[PropertyKind]) -> Self {
        let mut s = Self::default();
        for kind in kinds {
            match kind {
                PropertyKind::All => {
                    s.system = true;
                    s.application = true;
                }
                PropertyKind::Sys => s.system = true,
                PropertyKind::App => s.application = true,
                PropertyKind::Anno => s.annotations = true,
            }
        }
        s
    }

    fn any(self) -> bool {
        self.system || self.application || self.annotations
    }
}

/// The body as az shows it: parsed JSON when it is JSON, else the text,
/// else (not UTF-8) the base64 the hub sent.
pub(crate) fn payload(event: &Event) -> Value {
    let Ok(bytes) = event.body_bytes() else {
        return Value::String(event.body.clone());
    };
    match String::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        Err(e) => Value::String(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())),
    }
}

/// One event in az's shape.
pub(crate) fn render_event(event: &Event, sections: Sections) -> Value {
    let mut inner = Map::new();
    inner.insert("origin".into(), Value::String(event.device_id.clone()));
    inner.insert("payload".into(), payload(event));
    if sections.any() {
        let annotations = json!({
            "iothub-connection-device-id": event.device_id,
            "iothub-enqueuedtime": event.enqueued_time_utc,
        });
        let mut props = Map::new();
        if sections.system {
            let mut system = event.system_properties.clone();
            if let Value::Object(extra) = &annotations {
                for (k, v) in extra {
                    system.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            props.insert("system".into(), Value::Object(system));
        }
        if sections.application {
            props.insert("application".into(), Value::Object(event.properties.clone()));
        }
        if sections.annotations {
            props.insert("annotations".into(), annotations);
        }
        inner.insert("properties".into(), Value::Object(props));
    }
    json!({ "event": inner })
}

/// Writes one rendered event and flushes; `false` when stdout is gone.
fn print(value: &Value, format: OutputFormat) -> bool {
    let text = match format {
        OutputFormat::Json | OutputFormat::Jsonc | OutputFormat::Table | OutputFormat::Tsv => {
            output::render(value, OutputFormat::Json)
        }
        OutputFormat::None => return true,
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).is_ok()
}

/// Runs `monitor-events` until the timeout passes without an event.
pub(crate) async fn run(args: MonitorEventsArgs) -> anyhow::Result<Outcome> {
    let sections = Sections::from_kinds(&args.properties);
    let ctx = Context::resolve(&args.common)?;
    let client = ctx.client()?;
    let mut stream = client.events(args.device_id.as_deref(), args.last).await?;
    match &args.device_id {
        Some(id) => eprintln!("Starting event monitor, filtering on device: {id}, use ctrl-c to stop..."),
        None => eprintln!("Starting event monitor, use ctrl-c to stop..."),
    }
    let idle = (args.timeout > 0).then(|| Duration::from_secs(args.timeout));
    loop {
        let next = async {
            match idle {
                Some(limit) => tokio::time::timeout(limit, stream.next()).await.ok(),
                None => Some(stream.next().await),
            }
        };
        let item = tokio::select! {
            item = next => item,
            _ = tokio::signal::ctrl_c() => return Ok(Outcome::Nothing),
        };
        match item {
            // No event within the timeout: done, as az.
            None => return Ok(Outcome::Nothing),
            Some(None) => bail!("the hub closed the event stream"),
            Some(Some(event)) => {
                let event = event.context("reading the event stream")?;
                if !print(&render_event(&event, sections), ctx.output) {
                    return Ok(Outcome::Nothing);
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn event(body: &str, encoding: &str) -> Event {
        serde_json::from_value(json!({
            "deviceId": "d1",
            "enqueuedTimeUtc": "2024-05-01T10:00:00.000Z",
            "systemProperties": {"message-id": "m1", "content-type": "application/json"},
            "properties": {"alert": "high"},
            "body": body,
            "bodyEncoding": encoding,
        }))
        .unwrap()
    }

    #[test]
    fn json_bodies_are_parsed_and_text_stays_text() {
        let e = render_event(&event(r#"{"temp":21.5}"#, "utf-8"), Sections::default());
        assert_eq!(e, json!({"event": {"origin": "d1", "payload": {"temp": 21.5}}}));
        let e = render_event(&event("hello", "utf-8"), Sections::default());
        assert_eq!(e["event"]["payload"], "hello");
        // base64 of "[1,2]" and of bytes that are not UTF-8.
        assert_eq!(
            render_event(&event("WzEsMl0=", "base64"), Sections::default())["event"]["payload"],
            json!([1, 2])
        );
        assert_eq!(render_event(&event("/w==", "base64"), Sections::default())["event"]["payload"], "/w==");
    }

    #[test]
    fn properties_appear_only_when_asked() {
        let all = render_event(&event("1", "utf-8"), Sections::from_kinds(&[PropertyKind::All]));
        let props = &all["event"]["properties"];
        assert_eq!(props["application"], json!({"alert": "high"}));
        assert_eq!(props["system"]["message-id"], "m1");
        assert_eq!(props["system"]["iothub-connection-device-id"], "d1");
        assert!(props.get("annotations").is_none());
        let app = render_event(&event("1", "utf-8"), Sections::from_kinds(&[PropertyKind::App]));
        assert_eq!(app["event"]["properties"], json!({"application": {"alert": "high"}}));
        let sys = render_event(
            &event("1", "utf-8"),
            Sections::from_kinds(&[PropertyKind::Sys, PropertyKind::Anno]),
        );
        assert!(sys["event"]["properties"].get("application").is_none());
        assert_eq!(
            sys["event"]["properties"]["annotations"]["iothub-enqueuedtime"],
            "2024-05-01T10:00:00.000Z"
        );
    }
}
