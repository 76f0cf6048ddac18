//! What `ferrohub serve` is told on its command line.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Options of a hub process. Built by the CLI from flags and environment.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Where the store, keys and certificates live (created 0700).
    pub data_dir: PathBuf,
    /// Extra host names for the server certificate and SAS `sr` checks; the
    /// first is the one printed in connection strings (else `localhost`).
    pub host_names: Vec<String>,
    /// HTTPS port; `None` = 443, falling back to 8443 without privilege.
    pub https_port: Option<u16>,
    /// MQTT port; `None` = 8883.
    pub mqtt_port: Option<u16>,
    /// Addresses to listen on; empty = loopback (127.0.0.1 and ::1).
    pub bind: Vec<IpAddr>,
    /// Operator-supplied server certificate chain (PEM) instead of the
    /// generated one; requires `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Period of the configuration engine's full pass; `None` = 5 minutes.
    pub config_eval_interval: Option<Duration>,
    /// The firmware image store's size limits, quota, concurrent uploads
    /// and free-space reserve.
    pub firmware_limits: crate::hub::firmware::FirmwareLimits,
    /// IoT Hub's operation throttles (a tier's, with overrides); the
    /// default is none.
    pub quotas: ferrohub_core::throttle::Quotas,
    /// IoT Hub's daily message quota (a tier's, or set alone); the default
    /// is none.
    pub daily_quota: Option<ferrohub_core::daily_quota::DailyQuota>,
    /// Timeouts and connection caps of both ports.
    pub limits: ConnectionOptions,
}

/// Default TLS handshake timeout: what axum-server's acceptor and the MQTT
/// port always used.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default header timeout: the MQTT port's pre-CONNECT deadline.
pub const DEFAULT_HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default body stall timeout: generous for a device on a poor link, short
/// enough that stalled uploads do not pile up.
pub const DEFAULT_HTTP_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default keep-alive idle timeout: clients that pool connections (the Node
/// SDK) reuse them for minutes; Azure's front end keeps idle ones for about
/// four.
pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default cap on the request line plus headers: the size most servers
/// allow; SAS tokens and IoT Hub's headers take well under 2 KiB.
pub const DEFAULT_HTTP_MAX_HEADER_BYTES: usize = 16 * 1024;
/// The smallest header cap accepted: SDK requests with a SAS token take a
/// few KiB at most.
pub const MIN_HTTP_MAX_HEADER_BYTES: usize = 8192;

/// Timeouts, connection caps and the header limit; `None` = the default
/// (the caps' defaults come from the open-files limit, see
/// `conn_limits::FdBudget`).
#[derive(Debug, Clone, Default)]
pub struct ConnectionOptions {
    /// TLS handshake on either port; `None` = 10 s.
    pub tls_handshake_timeout: Option<Duration>,
    /// HTTPS: a new connection's first request headers, and any request's
    /// headers from their first byte; `None` = 10 s.
    pub http_header_timeout: Option<Duration>,
    /// HTTPS: a request body with no byte arriving, or a response the
    /// client takes no byte of; `None` = 30 s.
    pub http_body_timeout: Option<Duration>,
    /// HTTPS: a keep-alive connection between requests; `None` = 120 s.
    pub http_idle_timeout: Option<Duration>,
    /// HTTPS: request line plus headers, in bytes (at least 8192); `None` =
    /// 16 KiB.
    pub http_max_header_bytes: Option<usize>,
    /// Open connections on the HTTPS port.
    pub max_https_connections: Option<usize>,
    /// Open connections on the MQTT port.
    pub max_mqtt_connections: Option<usize>,
    /// Open HTTPS connections from one peer address.
    pub max_connections_per_peer: Option<usize>,
}
