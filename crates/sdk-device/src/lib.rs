//! A Rust device SDK for IoT Hub's MQTT protocol: it connects a device to
//! ferrohub or to Azure IoT Hub with a device connection string, reads and
//! patches its twin, sends telemetry, answers direct methods, and receives
//! cloud-to-device messages and desired-property updates.
//!
//! - MQTT 3.1.1 over TLS (port 8883) or over secure WebSockets
//!   (`wss://host:443/$iothub/websocket`), built on `rumqttc` and rustls.
//! - SAS authentication with a fresh token per connection, renewed before
//!   it expires by reconnecting (as the Node SDK does), or X.509 with a
//!   client certificate (`x509=true` connection strings).
//! - Reconnects on any connection loss with exponential backoff and jitter
//!   ([`Backoff`]), subscribes again, and resends unfinished operations.
//! - Desired-property updates never repeat a version and never go
//!   backwards, across reconnects ([`DesiredTracker`]).
//! - One tokio task per client, no threads: many clients fit in one
//!   process.
//!
//! TLS trusts the system's roots (which honour `SSL_CERT_FILE`) plus, when
//! given, an extra CA file such as ferrohub's `DIR/ca.pem`.
//!
//! ```no_run
//! use ferrohub_device_client::{DeviceClient, DeviceOptions, Message};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), ferrohub_device_client::Error> {
//! let client = DeviceClient::connect(
//!     "HostName=localhost;DeviceId=thermostat-1;SharedAccessKey=<base64 key>",
//!     DeviceOptions { mqtt_port: Some(8883), ca_file: Some("ca.pem".into()), ..Default::default() },
//! )
//! .await?;
//!
//! let twin = client.get_twin().await?;
//! println!("desired: {}", twin.desired);
//! let version = client.update_reported(&json!({"firmware": "1.2.0"})).await?;
//! println!("reported properties now at version {version}");
//!
//! client.send_telemetry(Message::new(r#"{"temperature":21.5}"#).json().with_property("alert", "no")).await?;
//!
//! let mut methods = client.method_requests().expect("taken once");
//! tokio::spawn(async move {
//!     while let Some(call) = methods.recv().await {
//!         let answer = json!({"echo": call.payload});
//!         let _ = call.respond(200, answer).await;
//!     }
//! });
//!
//! let mut desired = client.desired_updates().expect("taken once");
//! tokio::spawn(async move {
//!     while let Some(update) = desired.recv().await {
//!         println!("desired v{} (full: {}): {}", update.version, update.full, update.body);
//!     }
//! });
//!
//! let mut c2d = client.c2d_messages().expect("taken once");
//! while let Some(msg) = c2d.recv().await {
//!     println!("cloud-to-device: {} {:?}", msg.body_text(), msg.properties);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A runnable version is `examples/device.rs`
//! (`cargo run -p ferrohub-device-client --example device -- --help`);
//! `examples/many_devices.rs` connects many devices from one process and
//! prints the memory each connection costs.

mod backoff;
mod client;
mod desired;
mod driver;
mod error;
mod message;
mod options;
mod tls;

pub use backoff::Backoff;
pub use client::{
    C2dMessages, ConnectionStatus, DesiredUpdates, DeviceClient, MethodRequest, MethodRequests, Twin,
};
pub use desired::{DesiredTracker, DesiredUpdate};
pub use error::Error;
pub use message::{C2dMessage, Message, MAX_MESSAGE_SIZE};
pub use options::{DeviceOptions, Transport};
pub use tls::tls_config;

/// The rustls version whose `ClientConfig` [`DeviceOptions::tls_config`]
/// takes.
pub use rustls;

/// The `api-version` sent in the MQTT username.
pub const API_VERSION: &str = driver::API_VERSION;

/// The `DeviceClientType` sent in the MQTT username
/// (`ferrohub-device-client/<version>`).
pub const USER_AGENT: &str = driver::USER_AGENT;

/// Result of every client call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
