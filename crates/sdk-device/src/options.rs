//! Connection options beyond what the connection string says.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::Backoff;

/// How the client reaches the hub's MQTT endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// MQTT over TLS on [`DeviceOptions::mqtt_port`] (default 8883).
    #[default]
    Tcp,
    /// MQTT over secure WebSockets:
    /// `wss://{host}:{https_port}/$iothub/websocket`, subprotocol `mqtt`.
    WebSocket {
        /// The HTTPS port; `None` = 443.
        https_port: Option<u16>,
    },
}

/// Where and how to connect, and how the client behaves over time.
/// `DeviceOptions::default()` matches the Azure SDKs' defaults.
#[derive(Clone)]
pub struct DeviceOptions {
    /// The MQTT/TLS port for [`Transport::Tcp`]; `None` = 8883.
    pub mqtt_port: Option<u16>,
    /// Extra CA certificate(s) in PEM to trust besides the system roots
    /// (ferrohub's `DIR/ca.pem`). Ignored when `tls_config` is set.
    pub ca_file: Option<PathBuf>,
    /// TCP or WebSocket.
    pub transport: Transport,
    /// Client certificate chain (PEM) for `x509=true` connection strings.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
    /// A ready TLS configuration to use instead of building one from
    /// `ca_file`, `client_cert` and `client_key` (see
    /// [`tls_config`](crate::tls_config)); share one among many clients.
    pub tls_config: Option<Arc<rustls::ClientConfig>>,
    /// Lifetime of each SAS token the client signs (default 3600 s).
    pub token_ttl: Duration,
    /// How long before a token expires the client renews it, by
    /// disconnecting and reconnecting with a fresh token, as the Node SDK
    /// does (default 900 s). Connection strings holding a ready-made
    /// `SharedAccessSignature` cannot be renewed.
    pub renew_before: Duration,
    /// MQTT keep-alive (default 60 s, as the Python SDK; at least 1 s).
    pub keep_alive: Duration,
    /// How long one connection attempt (TCP, TLS, WebSocket, CONNACK) may
    /// take (default 30 s).
    pub attempt_timeout: Duration,
    /// How long [`DeviceClient::connect`](crate::DeviceClient::connect)
    /// retries transient failures (refused TCP connections, timeouts,
    /// CONNACK 3) before giving up (default 60 s). Refusals for bad
    /// credentials and TLS failures are returned at once.
    pub connect_timeout: Duration,
    /// How long an operation (twin GET, reported patch, telemetry) may wait,
    /// including for a reconnect, before it fails with
    /// [`Error::Timeout`](crate::Error::Timeout) (default 60 s).
    pub operation_timeout: Duration,
    /// Delays between reconnect attempts.
    pub backoff: Backoff,
    /// Subscribe to direct methods (default `true`).
    pub receive_methods: bool,
    /// Subscribe to cloud-to-device messages (default `true`).
    pub receive_c2d: bool,
    /// Subscribe to desired-property updates and GET the twin after each
    /// connect to keep them continuous (default `true`).
    pub receive_desired: bool,
    /// IoT Plug and Play model id (`dtmi:...`), sent in the MQTT username.
    pub model_id: Option<String>,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            mqtt_port: None,
            ca_file: None,
            transport: Transport::Tcp,
            client_cert: None,
            client_key: None,
            tls_config: None,
            token_ttl: Duration::from_secs(3600),
            renew_before: Duration::from_secs(900),
            keep_alive: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(60),
            operation_timeout: Duration::from_secs(60),
            backoff: Backoff::default(),
            receive_methods: true,
            receive_c2d: true,
            receive_desired: true,
            model_id: None,
        }
    }
}

impl fmt::Debug for DeviceOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceOptions")
            .field("mqtt_port", &self.mqtt_port)
            .field("ca_file", &self.ca_file)
            .field("transport", &self.transport)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("tls_config", &self.tls_config.as_ref().map(|_| "<custom>"))
            .field("token_ttl", &self.token_ttl)
            .field("renew_before", &self.renew_before)
            .field("keep_alive", &self.keep_alive)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("backoff", &self.backoff)
            .field("receive_methods", &self.receive_methods)
            .field("receive_c2d", &self.receive_c2d)
            .field("receive_desired", &self.receive_desired)
            .field("model_id", &self.model_id)
            .finish()
    }
}
