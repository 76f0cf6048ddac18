//! Caps on open connections, so that file descriptors never run out.
//!
//! Every accepted socket takes a [`ConnPermit`] from its port's
//! [`ConnLimits`] before any TLS byte is read; a socket that gets none is
//! closed at once. The permit travels with the connection and gives its
//! place back when dropped, however the connection ends (a panic included).
//! Without caps, about a thousand stalled clients from one host exhausted a
//! 1,024 open-files limit and locked every device out of both ports.
//!
//! The default caps are derived from `RLIMIT_NOFILE` by [`FdBudget`].

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::consistent;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The port already holds its total.
    Total,
    /// This peer address already holds its share.
    Peer,
}

/// The open connections of one port, in total and per peer address.
#[derive(Debug)]
pub(crate) struct ConnLimits {
    /// The port, for the log.
    port: &'static str,
    total: usize,
    per_peer: Option<usize>,
    open: Mutex<Open>,
    refused: AtomicU64,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_peer: HashMap<IpAddr, usize>,
}

impl ConnLimits {
    /// At most `total` connections on `port`, and at most `per_peer` from
    /// one address (`None`: no per-address cap).
    pub(crate) fn new(port: &'static str, total: usize, per_peer: Option<usize>) -> Arc<Self> {
        Arc::new(Self {
            port,
            total,
            per_peer,
            open: Mutex::new(Open::default()),
            refused: AtomicU64::new(0),
        })
    }

    /// A place for a connection from `peer`, or why there is none.
    pub(crate) fn try_acquire(self: &Arc<Self>, peer: IpAddr) -> Result<ConnPermit, Refused> {
        // An IPv4 client reaching an IPv6 socket shows as ::ffff:a.b.c.d;
        // it is the same peer as a.b.c.d.
        let peer = peer.to_canonical();
        // Every critical section is a counter update that cannot be left
        // half-done, so a poisoned lock is still consistent.
        let mut open = consistent(self.open.lock(), "connection counts");
        if open.total >= self.total {
            return Err(Refused::Total);
        }
        let mine = open.by_peer.get(&peer).copied().unwrap_or(0);
        if self.per_peer.is_some_and(|cap| mine >= cap) {
            return Err(Refused::Peer);
        }
        open.total += 1;
        open.by_peer.insert(peer, mine + 1);
        Ok(ConnPermit { limits: self.clone(), peer })
    }

    /// A permit for `peer`, or the error that closes its connection,
    /// logged at the first refusal and every thousandth after (a flood must
    /// not flood the log too).
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> io::Result<ConnPermit> {
        self.try_acquire(peer).map_err(|why| {
            let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if n % 1000 == 1 {
                let cap = match why {
                    Refused::Total => "its connection cap",
                    Refused::Peer => "its per-peer connection cap",
                };
                tracing::warn!(port = self.port, %peer, refused = n, "connection refused: the port is at {cap}");
            }
            io::Error::other("connection cap reached")
        })
    }

    /// Connections open now.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        consistent(self.open.lock(), "connection counts").total
    }
}

/// One connection's place; released on drop.
#[derive(Debug)]
pub(crate) struct ConnPermit {
    limits: Arc<ConnLimits>,
    peer: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut open = consistent(self.limits.open.lock(), "connection counts");
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                // Forget the address, so the map holds only live peers.
                open.by_peer.remove(&self.peer);
            }
        }
    }
}

/// How the process's file descriptors are shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The open-files limit the budget was made from.
    pub nofile: u64,
    /// Connections on the HTTPS port (REST and MQTT over WebSockets).
    pub https: usize,
    /// Connections on the MQTT port.
    pub mqtt: usize,
}

/// The per-peer cap for an HTTPS port that takes `https` connections:
/// [`DEFAULT_PER_PEER`], never more than half of the port's, so one host
/// alone can never fill it.
pub fn default_per_peer(https: usize) -> usize {
    DEFAULT_PER_PEER.min(https / 2).max(1)
}

/// Per-peer cap on the HTTPS port when the budget allows it.
pub const DEFAULT_PER_PEER: usize = 256;
/// Descriptors kept out of the connection budget at the least.
const MIN_RESERVE: u64 = 64;

impl FdBudget {
    /// The budget for an open-files limit of `nofile`. A quarter (at least
    /// 64) is kept back for what is not a connection: the store's files,
    /// logs, listeners, the runtime, and files requests open (firmware
    /// images, uploads). The rest is split equally between the two ports,
    /// so that a flood on one never locks devices out of the other.
    pub fn for_limit(nofile: u64) -> Self {
        let reserve = (nofile / 4).max(MIN_RESERVE);
        let usable = nofile.saturating_sub(reserve);
        let per_port = usize::try_from(usable / 2).unwrap_or(usize::MAX).max(1);
        Self { nofile, https: per_port, mqtt: per_port }
    }

    /// The budget of this process, after [`raise_nofile_limit`].
    pub fn of_process() -> Self {
        Self::for_limit(raise_nofile_limit())
    }
}

/// Raises the soft open-files limit to the hard one and returns the soft
/// limit in effect. The soft default (1,024 under systemd) exists for
/// programs that use `select()`, which the hub does not; the hard limit is
/// what the operator allows. An unlimited limit counts as 2^20.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    const UNLIMITED_AS: u64 = 1 << 20;
    let lim = getrlimit(Resource::Nofile);
    let mut soft = lim.current;
    if lim.current.is_some() && lim.current != lim.maximum {
        // Raising to an unlimited hard limit can fail (Linux caps at
        // fs.nr_open); the soft limit then stays as it was.
        if setrlimit(Resource::Nofile, Rlimit { current: lim.maximum, maximum: lim.maximum }).is_ok() {
            soft = lim.maximum;
        }
    }
    soft.unwrap_or(UNLIMITED_AS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    #[test]
    fn the_total_cap_refuses_the_next_connection_until_one_is_dropped() {
        let limits = ConnLimits::new("test", 2, None);
        let a = limits.try_acquire(ip(1)).unwrap();
        let _b = limits.try_acquire(ip(2)).unwrap();
        assert_eq!(limits.try_acquire(ip(3)).unwrap_err(), Refused::Total);
        drop(a);
        assert_eq!(limits.open(), 1);
        limits.try_acquire(ip(3)).unwrap();
    }

    #[test]
    fn the_per_peer_cap_refuses_one_address_and_not_another() {
        let limits = ConnLimits::new("test", 10, Some(2));
        let first = limits.try_acquire(ip(2)).unwrap();
        let _second = limits.try_acquire(ip(2)).unwrap();
        assert_eq!(limits.try_acquire(ip(2)).unwrap_err(), Refused::Peer);
        let _other = limits.try_acquire(ip(1)).unwrap();
        drop(first);
        limits.try_acquire(ip(2)).unwrap();
    }

    #[test]
    fn an_ipv4_mapped_address_is_the_same_peer() {
        let limits = ConnLimits::new("test", 10, Some(1));
        let _v4 = limits.try_acquire(ip(1)).unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(limits.try_acquire(mapped).unwrap_err(), Refused::Peer);
    }

    #[test]
    fn admit_refuses_with_an_error_and_counts_refusals() {
        let limits = ConnLimits::new("test", 1, None);
        let _held = limits.admit(ip(1)).unwrap();
        for _ in 0..3 {
            assert!(limits.admit(ip(2)).is_err());
        }
        assert_eq!(limits.refused.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn released_peers_are_forgotten() {
        let limits = ConnLimits::new("test", 10, Some(3));
        let permits: Vec<_> = (1..=3).map(|i| limits.try_acquire(ip(i)).unwrap()).collect();
        drop(permits);
        let open = limits.open.lock().unwrap();
        assert_eq!(open.total, 0);
        assert!(open.by_peer.is_empty());
    }

    #[test]
    fn the_budget_keeps_a_reserve_and_splits_the_rest_between_the_ports() {
        let b = FdBudget::for_limit(1024);
        assert_eq!((b.https, b.mqtt), (384, 384));
        assert_eq!(default_per_peer(b.https), 192, "half the port below 512 per port");
        assert!(b.https + b.mqtt + 64 <= 1024);
        let big = FdBudget::for_limit(1 << 20);
        assert_eq!(default_per_peer(big.https), DEFAULT_PER_PEER);
        assert_eq!(big.https + big.mqtt, (1 << 20) * 3 / 4);
        let tiny = FdBudget::for_limit(64);
        assert!(tiny.https >= 1 && tiny.mqtt >= 1 && default_per_peer(tiny.https) >= 1);
    }

    #[test]
    fn raising_the_limit_reaches_the_hard_limit() {
        use rustix::process::{getrlimit, Resource};
        let before = getrlimit(Resource::Nofile);
        let now = raise_nofile_limit();
        assert!(before.current.is_none_or(|soft| now >= soft));
        if before.maximum.is_some() {
            assert_eq!(getrlimit(Resource::Nofile).current, before.maximum);
        }
    }
}
