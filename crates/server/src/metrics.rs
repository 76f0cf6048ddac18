//! The hub in Prometheus's text exposition format, for `GET /metrics`.
//!
//! Two kinds of series. Counts the hub keeps anyway (connections, devices,
//! configurations, throttle refusals, the daily quota, telemetry accepted)
//! are read when a scrape comes, into a [`Snapshot`] encoded as constant
//! metrics, so no hot path pays for metrics it already counts. HTTP
//! requests are counted and timed by a middleware, by route template.
//! Labels are bounded: route templates, a fixed set of methods, status
//! codes, throttle classes — never a device id.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The prefix of every series.
const PREFIX: &str = "ferrohub";

/// Labels of an HTTP request series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

/// Labels of an HTTP duration series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

fn new_duration_histogram() -> Histogram {
    // 0.5 ms to about 16 s: REST calls take milliseconds, long polls and
    // firmware uploads seconds.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16))
}

/// HTTP request counts and durations, shared by the middleware and the
/// scrape.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            durations: Family::new_with_constructor(new_duration_histogram as fn() -> Histogram),
        }
    }
}

/// The method as a label: one of HTTP's own, else `other` (a client may
/// send any token as a method).
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl HttpMetrics {
    /// Records one request of `route` (a template such as `/twins/{id}`).
    pub fn observe(&self, method: &axum::http::Method, route: &str, status: u16, seconds: f64) {
        let method = method_label(method);
        self.requests.get_or_create(&RequestLabels { method, route: route.to_owned(), status }).inc();
        self.durations.get_or_create(&RouteLabels { method, route: route.to_owned() }).observe(seconds);
    }
}

/// The middleware: times each request and records it under its route
/// template (`unmatched` for a path no route has, so unknown paths do not
/// each make a series).
pub async fn track(
    axum::extract::State(metrics): axum::extract::State<HttpMetrics>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let res = next.run(req).await;
    metrics.observe(&method, &route, res.status().as_u16(), started.elapsed().as_secs_f64());
    res
}

/// What a scrape reads of the hub.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Devices with a live connection on this node.
    pub connected_devices: u64,
    /// Registered device identities.
    pub devices_total: u64,
    /// Enabled ones.
    pub devices_enabled: u64,
    /// Automatic device configurations.
    pub configurations: u64,
    /// Device-to-cloud messages accepted since start.
    pub telemetry_accepted: u64,
    /// Operations refused (or telemetry delayed) per throttle class.
    pub throttled: Vec<(&'static str, u64)>,
    /// The daily quota's limit, today's count and refusals, if set.
    pub daily_quota: Option<(u64, u64, u64)>,
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = |e: &mut DescriptorEncoder, name: &str, help: &str, v: u64| -> std::fmt::Result {
            let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
            g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
        };
        gauge(
            &mut encoder,
            "connected_devices",
            "Devices with a live connection on this node",
            self.connected_devices,
        )?;
        gauge(&mut encoder, "registered_devices", "Registered device identities", self.devices_total)?;
        gauge(
            &mut encoder,
            "enabled_devices",
            "Registered device identities that are enabled",
            self.devices_enabled,
        )?;
        gauge(&mut encoder, "configurations", "Automatic device configurations", self.configurations)?;
        let accepted = ConstCounter::new(self.telemetry_accepted);
        accepted.encode(encoder.encode_descriptor(
            "telemetry_messages_accepted",
            "Device-to-cloud messages accepted since the hub started",
            None,
            accepted.metric_type(),
        )?)?;
        let mut throttled = encoder.encode_descriptor(
            "throttled_operations",
            "Operations refused (MQTT telemetry: delayed) by each throttle since the hub started",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (class, n) in &self.throttled {
            ConstCounter::new(*n).encode(throttled.encode_family(&[("class", *class)])?)?;
        }
        if let Some((limit, used, refused)) = self.daily_quota {
            gauge(
                &mut encoder,
                "daily_quota_messages",
                "Messages the daily quota allows per UTC day",
                limit,
            )?;
            gauge(&mut encoder, "daily_quota_used_messages", "Messages counted against today's quota", used)?;
            let r = ConstCounter::new(refused);
            r.encode(encoder.encode_descriptor(
                "daily_quota_refused_operations",
                "Operations refused because the day's quota was used",
                None,
                r.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// OpenMetrics text as Prometheus's older text format (0.0.4), for clients
/// that do not ask for OpenMetrics (curl, `promtool check metrics`): a
/// counter's `HELP` and `TYPE` name its `_total` series, and the `UNIT` and
/// `EOF` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(name) = line.strip_prefix("# TYPE ").and_then(|r| r.strip_suffix(" counter")) {
            counters.insert(name.to_owned());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find(|p| line.starts_with(p));
        match meta {
            Some(prefix) => {
                let rest = &line[prefix.len()..];
                let name = rest.split(' ').next().unwrap_or_default();
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total{}", &rest[name.len()..]));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Encodes a scrape: the build, the snapshot and the HTTP series.
pub fn encode(snapshot: Snapshot, http: &HttpMetrics) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix(PREFIX);
    let build =
        Family::<[(&'static str, &'static str); 1], prometheus_client::metrics::gauge::Gauge>::default();
    build.get_or_create(&[("version", env!("CARGO_PKG_VERSION"))]).set(1);
    registry.register("build_info", "The running ferrohub's version", build);
    registry.register_collector(Box::new(snapshot));
    registry.register(
        "http_requests",
        "HTTP requests answered, by route template and status",
        http.requests.clone(),
    );
    registry.register_with_unit(
        "http_request_duration",
        "Time from a request's arrival to its answer, by route template",
        prometheus_client::registry::Unit::Seconds,
        http.durations.clone(),
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_scrape_names_every_series_with_the_prefix_and_suffixes() {
        let http = HttpMetrics::default();
        http.observe(&axum::http::Method::GET, "/twins/{id}", 200, 0.003);
        http.observe(&axum::http::Method::from_bytes(b"BREW").unwrap(), "unmatched", 404, 0.001);
        let snapshot = Snapshot {
            connected_devices: 3,
            devices_total: 10,
            devices_enabled: 9,
            configurations: 2,
            telemetry_accepted: 41,
            throttled: vec![("d2c", 5), ("query", 0)],
            daily_quota: Some((8000, 12, 1)),
        };
        let text = encode(snapshot, &http).unwrap();
        for line in [
            "ferrohub_build_info{version=\"",
            "ferrohub_connected_devices 3",
            "ferrohub_registered_devices 10",
            "ferrohub_telemetry_messages_accepted_total 41",
            "ferrohub_throttled_operations_total{class=\"d2c\"} 5",
            "ferrohub_daily_quota_used_messages 12",
            "ferrohub_http_requests_total{method=\"GET\",route=\"/twins/{id}\",status=\"200\"} 1",
            "ferrohub_http_requests_total{method=\"other\",route=\"unmatched\",status=\"404\"} 1",
            "ferrohub_http_request_duration_seconds_count{method=\"GET\",route=\"/twins/{id}\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(line), "no {line} in\n{text}");
        }
        assert!(!text.contains("BREW"));
        assert!(!text.contains(".."), "help texts end with one period: {text}");
    }

    #[test]
    fn prometheus_text_names_counters_by_their_total_series() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total 3\n\
                  # HELP a_seconds Time.\n# TYPE a_seconds histogram\n# UNIT a_seconds seconds\na_seconds_count 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total 3\n\
             # HELP a_seconds Time.\n# TYPE a_seconds histogram\na_seconds_count 1\n"
        );
    }
}
