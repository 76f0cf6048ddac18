//! The ferrohub hub process: the [`hub`] core and its transports.
//!
//! [`hub`] owns every state change and push; [`api`] (the REST API) and
//! `mqtt` (the device endpoint, over TLS and WebSockets) are adapters over
//! it that never import each other. [`serve`] wires the process: data dir
//! → store → policies → TLS → [`hub::Hub::open`] → listeners → `hub.json`
//! and the ready line → serve until a signal → clean exit.

pub mod api;
mod client_cert;
mod clock;
pub mod conn_limits;
mod fsutil;
mod https_conn;
pub mod hub;
pub mod hubfile;
pub mod listen;
pub mod metrics;
mod mqtt;
pub mod options;
pub mod policies;
mod sync;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferrohub_core::connection_string::ConnectionString;
use ferrohub_store::SqliteStore;

pub use options::ServeOptions;

use crate::hubfile::HubInfo;

/// How often the configuration engine re-evaluates everything, besides
/// reacting to each change.
pub const DEFAULT_FULL_PASS: Duration = Duration::from_secs(300);

/// File name of the embedded database inside the data dir.
pub const DB_FILE: &str = "hub.db";

/// Runs a hub until SIGINT or SIGTERM. Prints `ready https=<port> mqtt=<port>`
/// and the `iothubowner` connection string on stdout once every listener is
/// bound, and removes `hub.json` on the way out.
pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    // Signal handlers go in first: a SIGTERM that arrives right after the
    // ready line must shut down cleanly, not kill the process.
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    let dir = &opts.data_dir;
    fsutil::create_private_dir(dir).with_context(|| format!("creating data dir {}", dir.display()))?;

    // The database holds device keys: create it owner-only before SQLite
    // does (SQLite gives its WAL files the main file's mode).
    fsutil::touch_private(&dir.join(DB_FILE))?;
    fsutil::check_private(dir)?;
    let store =
        SqliteStore::open(&dir.join(DB_FILE)).map_err(|e| anyhow::anyhow!("opening the store: {e}"))?;
    let policies = policies::load_or_create(dir)?;

    let mut host_names = opts.host_names.clone();
    if host_names.is_empty() {
        host_names.push("localhost".into());
    }
    // Tokens may name the hub by any name its certificate carries.
    let mut auth_names = host_names.clone();
    auth_names.extend(["localhost", "127.0.0.1", "::1", "[::1]"].map(String::from));

    let identity = match (&opts.tls_cert, &opts.tls_key) {
        (Some(c), Some(k)) => tls::operator(dir, c, k)?,
        (None, None) => tls::generated(dir, &opts.host_names)?,
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    // Both listeners ask for (never require) a client certificate: X.509
    // devices present one over MQTT on either port.
    let client_certs: Arc<dyn rustls::server::danger::ClientCertVerifier> =
        Arc::new(client_cert::AnyClientCert::new());
    let https_tls = tls::server_config(&identity, &[b"http/1.1"], Some(client_certs.clone()))?;
    let mqtt_tls = tls::server_config(&identity, &[], Some(client_certs))?;

    let (addrs, defaults) = listen::addresses(&opts.bind);
    let https = listen::bind_https(&addrs, opts.https_port, defaults)?;
    let mqtt = listen::bind_mqtt(&addrs, opts.mqtt_port, defaults)?;

    // Whatever was connected when the hub last stopped is not any more: the
    // hub resets those connection states while it loads the twins.
    let hub = hub::Hub::open(hub::HubConfig {
        data_dir: dir.clone(),
        store: Arc::new(store),
        policies: policies.clone(),
        host_names: auth_names,
        full_pass: opts.config_eval_interval.unwrap_or(DEFAULT_FULL_PASS),
        quotas: opts.quotas,
        daily_quota: opts.daily_quota,
        firmware_base_uri: firmware_base_uri(&host_names[0], https.port),
        rollout_step: Duration::from_secs(1),
        firmware_limits: opts.firmware_limits,
    })
    .await?;
    let app = api::router(hub.clone())
        .merge(mqtt::websocket_routes(hub.clone()))
        .layer(tower_http::trace::TraceLayer::new_for_http());

    let limits = Limits::resolve(&opts.limits);
    let handle = axum_server::Handle::new();
    let rustls_config = axum_server::tls_rustls::RustlsConfig::from_config(https_tls);
    let mut tasks = tokio::task::JoinSet::new();
    for listener in https.listeners {
        let tls = axum_server::tls_rustls::RustlsAcceptor::new(rustls_config.clone())
            .handshake_timeout(limits.handshake);
        let acceptor =
            https_conn::HttpsAcceptor::new(tls, limits.https.clone(), limits.http, limits.max_header_bytes);
        let mut server = axum_server::from_tcp(listener).acceptor(acceptor).handle(handle.clone());
        configure_http(server.http_builder());
        let app = app.clone();
        tasks.spawn(
            async move { server.serve(app.into_make_service()).await.context("HTTPS listener failed") },
        );
    }
    for listener in mqtt.listeners {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tasks.spawn(mqtt::accept_loop(
            listener,
            mqtt_tls.clone(),
            hub.clone(),
            limits.mqtt.clone(),
            limits.handshake,
        ));
    }

    let info = HubInfo {
        pid: std::process::id(),
        host_names: host_names.clone(),
        https_port: https.port,
        mqtt_port: mqtt.port,
        ca_file: identity.ca_file.clone(),
    };
    info.write(dir).context("writing hub.json")?;
    let owner = policies.iter().find(|p| p.key_name == "iothubowner").context("no iothubowner policy")?;
    let cs = ConnectionString::for_policy(&host_names[0], &owner.key_name, &owner.primary_key);
    println!("{}", hubfile::ReadyLine { https_port: https.port, mqtt_port: mqtt.port });
    println!("{cs}");
    tracing::info!(https = https.port, mqtt = mqtt.port, data_dir = %dir.display(), "hub ready");

    let result = tokio::select! {
        _ = terminate.recv() => Ok(()),
        _ = interrupt.recv() => Ok(()),
        Some(r) = tasks.join_next() => r.context("listener task panicked").and_then(|r| r),
    };
    tracing::info!("shutting down");
    handle.graceful_shutdown(Some(Duration::from_secs(5)));
    HubInfo::remove(dir);
    hub.throttles.persist_daily();
    tasks.abort_all();
    result
}

/// The connection options with their defaults filled in.
struct Limits {
    handshake: Duration,
    http: https_conn::HttpTimeouts,
    max_header_bytes: usize,
    https: Arc<conn_limits::ConnLimits>,
    mqtt: Arc<conn_limits::ConnLimits>,
}

impl Limits {
    fn resolve(o: &options::ConnectionOptions) -> Self {
        let budget = conn_limits::FdBudget::of_process();
        let https = o.max_https_connections.unwrap_or(budget.https);
        let mqtt = o.max_mqtt_connections.unwrap_or(budget.mqtt);
        let per_peer = o.max_connections_per_peer.unwrap_or_else(|| conn_limits::default_per_peer(https));
        let http = https_conn::HttpTimeouts {
            header: o.http_header_timeout.unwrap_or(options::DEFAULT_HTTP_HEADER_TIMEOUT),
            body: o.http_body_timeout.unwrap_or(options::DEFAULT_HTTP_BODY_TIMEOUT),
            idle: o.http_idle_timeout.unwrap_or(options::DEFAULT_HTTP_IDLE_TIMEOUT),
        };
        let max_header_bytes = o
            .http_max_header_bytes
            .unwrap_or(options::DEFAULT_HTTP_MAX_HEADER_BYTES)
            .max(options::MIN_HTTP_MAX_HEADER_BYTES);
        tracing::info!(open_files = budget.nofile, https, mqtt, per_peer, "connection caps");
        Self {
            handshake: o.tls_handshake_timeout.unwrap_or(options::DEFAULT_TLS_HANDSHAKE_TIMEOUT),
            http,
            max_header_bytes,
            https: conn_limits::ConnLimits::new("HTTPS", https, Some(per_peer)),
            // No per-peer cap on MQTT: fleets behind one NAT (and the load
            // generator) connect thousands of devices from one address, and
            // the port reaps clients that do not CONNECT within 10 s.
            mqtt: conn_limits::ConnLimits::new("MQTT", mqtt, None),
        }
    }
}

/// HTTP/1.1 only (ALPN offers nothing else, and the timeouts here are
/// HTTP/1's). The header limit is `https_conn`'s; hyper keeps its own
/// read buffer (~400 KB, which also ends a head that never ends with 431).
fn configure_http(builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>) {
    let fresh = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    *builder = std::mem::replace(builder, fresh).http1_only();
    // hyper's own header timeout also cuts idle keep-alive connections;
    // `https_conn` times headers and idleness apart instead.
    builder.http1().header_read_timeout(None);
}

/// Where devices fetch hosted images: the hub's first host name, with the
/// HTTPS port unless it is 443.
fn firmware_base_uri(host: &str, port: u16) -> String {
    if port == 443 {
        format!("https://{host}")
    } else {
        format!("https://{host}:{port}")
    }
}
