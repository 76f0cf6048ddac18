//! Binding the listeners: loopback by default, port 0 for a free port, and
//! the unprivileged fallback from 443 to 8443.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};

use anyhow::{bail, Context};

/// Default HTTPS port: the only one the Node service SDK dials.
pub const DEFAULT_HTTPS_PORT: u16 = 443;
/// Where HTTPS goes when 443 needs a privilege we lack.
pub const FALLBACK_HTTPS_PORT: u16 = 8443;
/// Default MQTT port: the only one the Python device SDK dials.
pub const DEFAULT_MQTT_PORT: u16 = 8883;

/// Listeners of one port on every address.
pub struct Bound {
    /// The port actually bound (resolved when 0 was asked).
    pub port: u16,
    /// One listener per address, non-blocking.
    pub listeners: Vec<TcpListener>,
}

/// The addresses to listen on: `--bind`s, else IPv4 and IPv6 loopback.
pub fn addresses(bind: &[IpAddr]) -> (Vec<IpAddr>, bool) {
    if bind.is_empty() {
        (vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)], true)
    } else {
        (bind.to_vec(), false)
    }
}

/// Binds `port` on each address. With port 0 the first bind picks a free port
/// and the others use the same one. On the default addresses a missing IPv6
/// stack is tolerated (the IPv6 loopback is skipped).
pub fn bind_all(addrs: &[IpAddr], port: u16, defaults: bool) -> std::io::Result<Bound> {
    let mut listeners = Vec::new();
    let mut port = port;
    for addr in addrs {
        match TcpListener::bind(SocketAddr::new(*addr, port)) {
            Ok(l) => {
                l.set_nonblocking(true)?;
                port = l.local_addr()?.port();
                listeners.push(l);
            }
            Err(e) if defaults && addr.is_ipv6() && e.kind() == ErrorKind::AddrNotAvailable => {
                tracing::warn!("IPv6 loopback is not available; listening on IPv4 only");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Bound { port, listeners })
}

/// Binds the HTTPS port. When it was not given and 443 is refused for lack
/// of privilege, falls back to 8443 with a one-line warning.
pub fn bind_https(addrs: &[IpAddr], requested: Option<u16>, defaults: bool) -> anyhow::Result<Bound> {
    match requested {
        Some(p) => {
            bind_all(addrs, p, defaults).with_context(|| format!("cannot listen for HTTPS on port {p}"))
        }
        None => match bind_all(addrs, DEFAULT_HTTPS_PORT, defaults) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                let exe = std::env::current_exe()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "ferrohub".into());
                eprintln!(
                    "warning: no privilege to bind port {DEFAULT_HTTPS_PORT}, serving HTTPS on {FALLBACK_HTTPS_PORT}; the Node service SDK (azure-iothub) and WebSocket device clients only dial {DEFAULT_HTTPS_PORT} - run as root or `setcap cap_net_bind_service=+ep {exe}`"
                );
                bind_all(addrs, FALLBACK_HTTPS_PORT, defaults)
                    .with_context(|| format!("cannot listen for HTTPS on port {FALLBACK_HTTPS_PORT} either"))
            }
            Err(e) => Err(e).with_context(|| format!("cannot listen for HTTPS on port {DEFAULT_HTTPS_PORT}")),
        },
    }
}

/// Binds the MQTT port (default 8883).
pub fn bind_mqtt(addrs: &[IpAddr], requested: Option<u16>, defaults: bool) -> anyhow::Result<Bound> {
    let port = requested.unwrap_or(DEFAULT_MQTT_PORT);
    let bound =
        bind_all(addrs, port, defaults).with_context(|| format!("cannot listen for MQTT on port {port}"))?;
    if bound.listeners.is_empty() {
        bail!("no address to listen on");
    }
    Ok(bound)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn port_zero_takes_one_free_port_for_every_address() {
        let (addrs, defaults) = addresses(&[]);
        let b = bind_all(&addrs, 0, defaults).unwrap();
        assert_ne!(b.port, 0);
        for l in &b.listeners {
            assert_eq!(l.local_addr().unwrap().port(), b.port);
        }
    }

    #[test]
    fn an_explicit_port_in_use_is_an_error() {
        let (addrs, defaults) = addresses(&[]);
        let taken = bind_all(&addrs, 0, defaults).unwrap();
        assert!(bind_https(&addrs, Some(taken.port), defaults).is_err());
    }
}
