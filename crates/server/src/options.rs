//! What `ferrohub serve` is told on its command line.

use std::net::IpAddr;
use std::path::PathBuf;

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
    pub config_eval_interval: Option<std::time::Duration>,
    /// The firmware image store's size limits, quota, concurrent uploads
    /// and free-space reserve.
    pub firmware_limits: crate::hub::firmware::FirmwareLimits,
    /// IoT Hub's operation throttles (a tier's, with overrides); the
    /// default is none.
    pub quotas: ferrohub_core::throttle::Quotas,
}
