//! `ferrohub configuration create|show|list|update|delete|show-metric`, in
//! the shape of `az iot hub configuration`.

use std::path::Path;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};

use super::args::Common;
use super::context::Context;
use super::generic_update::{apply_set, parse_set};
use super::progress::{ProgressView, Row};
use super::Outcome;
use ferrohub_service_client::{WatchEvent, WatchStream};

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigurationCommand {
    /// Create an automatic device configuration.
    Create(CreateArgs),
    /// Show a configuration with its current metric results.
    Show(ConfigIdArgs),
    /// List configurations.
    List(ListArgs),
    /// Update a configuration's target condition, priority, labels or
    /// metrics (content cannot change).
    Update(UpdateArgs),
    /// Delete a configuration.
    Delete(DeleteArgs),
    /// Run a metric's query and list what it matches, or (--watch) follow
    /// the configuration's metric counts live.
    #[command(name = "show-metric", after_help = WATCH_EXIT_CODES)]
    ShowMetric(ShowMetricArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// The configuration id (lowercased, as az does).
    #[arg(long, short = 'c', value_name = "ID")]
    pub(crate) config_id: String,
    /// The content: a file path or inline JSON, `{"deviceContent": {..}}` or
    /// the whole `{"content": {"deviceContent": {..}}}`.
    #[arg(long, short = 'k', value_name = "FILE|JSON")]
    pub(crate) content: String,
    /// Which devices it targets, e.g. `tags.devicetype = 'chiller'`
    /// [default: none].
    #[arg(long, visible_alias = "tc", short = 't', value_name = "CONDITION")]
    pub(crate) target_condition: Option<String>,
    /// Higher wins where configurations overlap [default: 0].
    #[arg(long, visible_alias = "pri", allow_negative_numbers = true, value_name = "N")]
    pub(crate) priority: Option<i64>,
    /// Custom metrics: a file path or inline JSON, `{"queries": {name: query}}`
    /// or `{"metrics": {"queries": {..}}}`.
    #[arg(long, short = 'm', value_name = "FILE|JSON")]
    pub(crate) metrics: Option<String>,
    /// Labels: a JSON object of strings.
    #[arg(long, visible_alias = "lab", value_name = "JSON")]
    pub(crate) labels: Option<String>,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct ConfigIdArgs {
    /// The configuration id.
    #[arg(long, short = 'c', value_name = "ID")]
    pub(crate) config_id: String,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// At most this many configurations [default: all].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub(crate) top: Option<u32>,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
    /// The configuration id.
    #[arg(long, short = 'c', value_name = "ID")]
    pub(crate) config_id: String,
    /// az generic update: `priority=30`, `targetCondition="tags.x='y'"`,
    /// `labels.owner=ops`, `metrics.queries.current="SELECT ..."` (repeatable).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub(crate) set: Vec<String>,
    /// New priority.
    #[arg(long, visible_alias = "pri", allow_negative_numbers = true, value_name = "N")]
    pub(crate) priority: Option<i64>,
    /// New target condition.
    #[arg(long, visible_alias = "tc", short = 't', value_name = "CONDITION")]
    pub(crate) target_condition: Option<String>,
    /// New labels (a JSON object of strings; replaces the old ones).
    #[arg(long, visible_alias = "lab", value_name = "JSON")]
    pub(crate) labels: Option<String>,
    /// Update only if the configuration's etag is this [default: *].
    #[arg(long, short = 'e', value_name = "ETAG")]
    pub(crate) etag: Option<String>,
    #[command(flatten)]
    pub(crate) common: Common,
}

#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    /// The configuration id.
    #[arg(long, short = 'c', value_name = "ID")]
    pub(crate) config_id: String,
    /// Delete only if the configuration's etag is this [default: *].
    #[arg(long, short = 'e', value_name = "ETAG")]
    pub(crate) etag: Option<String>,
    #[command(flatten)]
    pub(crate) common: Common,
}

/// `--metric-type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub(crate) enum MetricType {
    /// A custom metric (`metrics.queries`).
    #[default]
    User,
    /// A hub metric (`systemMetrics.queries`: targetedCount, appliedCount).
    System,
}

#[derive(Debug, Args)]
pub(crate) struct ShowMetricArgs {
    /// The configuration id.
    #[arg(long, short = 'c', value_name = "ID")]
    pub(crate) config_id: String,
    /// The metric's name, e.g. `current` or `appliedCount`.
    #[arg(long, short = 'm', value_name = "NAME")]
    pub(crate) metric_id: String,
    /// Which collection the metric is in.
    #[arg(long, visible_alias = "mt", value_enum, default_value_t = MetricType::User)]
    pub(crate) metric_type: MetricType,
    /// Follow the counts live instead: every metric of the configuration
    /// (the requested one first) as progress bars out of targetedCount, or
    /// one plain line per change when stdout is not a terminal.
    #[arg(long)]
    pub(crate) watch: bool,
    /// With --watch: stop (exit 0) once the metric's count is at least N.
    #[arg(long, value_name = "N")]
    pub(crate) until: Option<u64>,
    #[command(flatten)]
    pub(crate) common: Common,
}

const WATCH_EXIT_CODES: &str = "\
Exit codes with --watch:
  0  --until N was reached, or Ctrl-C
  3  the configuration was deleted while watching
  1  any error: unknown configuration or metric, lost connection, bad arguments";

/// Runs one `configuration` subcommand.
pub(crate) async fn run(command: ConfigurationCommand) -> anyhow::Result<Outcome> {
    match command {
        ConfigurationCommand::Create(args) => create(args).await,
        ConfigurationCommand::Show(args) => {
            let ctx = Context::resolve(&args.common)?;
            let config = ctx.client()?.get_configuration(&args.config_id).await?;
            Outcome::value(&ctx, &config)
        }
        ConfigurationCommand::List(args) => {
            let ctx = Context::resolve(&args.common)?;
            let configs = ctx.client()?.list_configurations(args.top).await?;
            Outcome::value(&ctx, &configs)
        }
        ConfigurationCommand::Update(args) => update(args).await,
        ConfigurationCommand::Delete(args) => {
            let ctx = Context::resolve(&args.common)?;
            let etag = args.etag.as_deref().unwrap_or("*");
            ctx.client()?.delete_configuration(&args.config_id, etag).await?;
            Ok(Outcome::Nothing)
        }
        ConfigurationCommand::ShowMetric(args) => show_metric(args).await,
    }
}

/// A `FILE|JSON` argument: a readable file's contents, else the text itself.
fn json_arg(flag: &str, arg: &str) -> anyhow::Result<Value> {
    let path = Path::new(arg);
    let text = if path.is_file() {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    } else {
        arg.to_owned()
    };
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("{flag} is neither a readable file nor valid JSON"))?;
    if !value.is_object() {
        bail!("{flag} must be a JSON object");
    }
    Ok(value)
}

/// az's reading of `--content`: the whole `{"content": {..}}` or just its
/// inside; exactly one of `deviceContent` / `moduleContent` is kept.
fn content_of(value: Value) -> anyhow::Result<Value> {
    let mut value = value;
    if let Some(inner) = value.get_mut("content") {
        value = inner.take();
    }
    const KEYS: [&str; 2] = ["deviceContent", "moduleContent"];
    let present: Vec<&str> = KEYS.into_iter().filter(|k| value.get(k).is_some()).collect();
    match present.as_slice() {
        [key] => {
            let mut content = Map::new();
            content.insert((*key).to_owned(), value[*key].take());
            Ok(Value::Object(content))
        }
        [] => bail!("--content needs the property deviceContent or moduleContent"),
        _ => bail!("--content may hold deviceContent or moduleContent, not both"),
    }
}

/// az's reading of `--metrics`: `{"queries": {..}}` or
/// `{"metrics": {"queries": {..}}}`; returns the queries object.
fn metric_queries_of(value: Value) -> anyhow::Result<Value> {
    let mut value = value;
    if let Some(inner) = value.get_mut("metrics") {
        value = inner.take();
    }
    match value.get_mut("queries") {
        Some(queries) if queries.is_object() => Ok(queries.take()),
        Some(_) => bail!("--metrics: 'queries' must be a JSON object of name: query"),
        None => bail!("--metrics must include the 'queries' property"),
    }
}

fn labels_of(text: &str) -> anyhow::Result<Value> {
    let labels = json_arg("--labels", text)?;
    Ok(labels)
}

/// The body `configuration create` sends.
fn create_body(args: &CreateArgs) -> anyhow::Result<Value> {
    let content = content_of(json_arg("--content", &args.content)?)?;
    let mut body = json!({
        "id": args.config_id.to_lowercase(),
        "content": content,
        "targetCondition": args.target_condition.clone().unwrap_or_default(),
        "priority": args.priority.unwrap_or(0),
    });
    if let Some(metrics) = &args.metrics {
        body["metrics"] = json!({ "queries": metric_queries_of(json_arg("--metrics", metrics)?)? });
    }
    if let Some(labels) = &args.labels {
        body["labels"] = labels_of(labels)?;
    }
    Ok(body)
}

async fn create(args: CreateArgs) -> anyhow::Result<Outcome> {
    let ctx = Context::resolve(&args.common)?;
    let body = create_body(&args)?;
    let created = ctx.client()?.create_configuration(&body).await?;
    Outcome::value(&ctx, &created)
}

/// The PUT body of `configuration update`: az's generic update (`--set`)
/// applied to the current configuration, then the flags; only the fields a
/// configuration update carries are sent.
fn update_body(current: &Value, args: &UpdateArgs) -> anyhow::Result<Value> {
    let mut doc = current.clone();
    for expr in &args.set {
        apply_set(&mut doc, &parse_set(expr)?)?;
    }
    if let Some(priority) = args.priority {
        doc["priority"] = json!(priority);
    }
    if let Some(condition) = &args.target_condition {
        doc["targetCondition"] = json!(condition);
    }
    if let Some(labels) = &args.labels {
        doc["labels"] = labels_of(labels)?;
    }
    let field = |name: &str| doc.get(name).cloned().unwrap_or(Value::Null);
    let queries = doc.get("metrics").and_then(|m| m.get("queries")).cloned().unwrap_or_else(|| json!({}));
    if !queries.is_object() {
        bail!("metrics.queries must be a JSON object");
    }
    let labels = field("labels");
    if !(labels.is_object() || labels.is_null()) {
        bail!("labels must be a JSON object");
    }
    Ok(json!({
        "id": field("id"),
        "schemaVersion": field("schemaVersion"),
        "labels": labels,
        "content": field("content"),
        "targetCondition": field("targetCondition"),
        "priority": field("priority"),
        "metrics": { "queries": queries },
    }))
}

async fn update(args: UpdateArgs) -> anyhow::Result<Outcome> {
    let ctx = Context::resolve(&args.common)?;
    let client = ctx.client()?;
    let current = client.get_configuration(&args.config_id).await?;
    let body = update_body(&current, &args)?;
    let etag = args.etag.as_deref().unwrap_or("*");
    let updated = client.update_configuration(&body, etag).await?;
    Outcome::value(&ctx, &updated)
}

/// The metric's rows as az lists them: the device ids when every row has
/// one (the case for metric queries, `SELECT deviceId FROM devices ...`),
/// else the rows themselves.
fn metric_result(rows: Vec<Value>) -> Vec<Value> {
    let device_id = |row: &Value| -> Option<Value> {
        let map = row.as_object()?;
        map.iter().find(|(k, _)| k.eq_ignore_ascii_case("deviceId")).map(|(_, v)| v.clone())
    };
    match rows.iter().map(device_id).collect::<Option<Vec<Value>>>() {
        Some(ids) => ids,
        None => rows,
    }
}

async fn show_metric(args: ShowMetricArgs) -> anyhow::Result<Outcome> {
    let ctx = Context::resolve(&args.common)?;
    if args.watch {
        return watch_metric(&ctx, &args).await;
    }
    if args.until.is_some() {
        bail!("--until needs --watch");
    }
    let client = ctx.client()?;
    let config = client.get_configuration(&args.config_id).await?;
    let (section, kind) = match args.metric_type {
        MetricType::User => ("metrics", "user"),
        MetricType::System => ("systemMetrics", "system"),
    };
    let query = config
        .get(section)
        .and_then(|m| m.get("queries"))
        .and_then(|q| q.get(&args.metric_id))
        .and_then(Value::as_str)
        .with_context(|| {
            format!(
                "The {kind} metric '{}' is not defined in the configuration '{}'",
                args.metric_id, args.config_id
            )
        })?
        .to_owned();
    let rows = client.query(&query, None).await?.items;
    let output = json!({
        "metric": args.metric_id,
        "query": query,
        "result": metric_result(rows),
    });
    Outcome::value(&ctx, &output)
}

/// `show-metric --watch`: draws each snapshot of the configuration until
/// `--until` is met, the configuration is deleted, or Ctrl-C.
async fn watch_metric(ctx: &Context, args: &ShowMetricArgs) -> anyhow::Result<Outcome> {
    let mut stream = ctx.client()?.watch_configuration(&args.config_id).await?;
    let mut view = ProgressView::for_stdout();
    let outcome = follow(&mut stream, &mut view, args).await;
    // The last counts stay on screen whatever ended the watch.
    view.finish();
    outcome
}

async fn follow(
    stream: &mut WatchStream,
    view: &mut ProgressView,
    args: &ShowMetricArgs,
) -> anyhow::Result<Outcome> {
    let id = &args.config_id;
    loop {
        let event = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(Outcome::Nothing),
            event = stream.next() => event,
        };
        match event.with_context(|| format!("the hub ended the watch of configuration '{id}'"))?? {
            WatchEvent::Deleted => {
                view.println(&format!("configuration '{id}' was deleted"));
                return Ok(Outcome::Exit(3));
            }
            WatchEvent::Snapshot(config) => {
                let rows = metric_rows(&config, &args.metric_id, args.metric_type)?;
                view.update(&rows);
                if args.until.is_some_and(|n| rows[0].value >= n) {
                    return Ok(Outcome::Nothing);
                }
            }
        }
    }
}

/// The rows of a watched configuration: the requested metric first
/// (highlighted), then the other custom metrics, then appliedCount and
/// targetedCount; counts are out of targetedCount. Never empty.
fn metric_rows(config: &Value, metric_id: &str, metric_type: MetricType) -> anyhow::Result<Vec<Row>> {
    let count = |section: &str, name: &str| {
        config[section]["results"][name].as_i64().map_or(0, |n| u64::try_from(n).unwrap_or(0))
    };
    let names = |section: &str| -> Vec<String> {
        let queries = config[section]["queries"].as_object();
        queries.map(|q| q.keys().cloned().collect()).unwrap_or_default()
    };
    let targeted = count("systemMetrics", "targetedCount");
    let total = |section: &str, name: &str| (section, name) != ("systemMetrics", "targetedCount");
    let row = |section: &str, name: &str| {
        Row::new(name, count(section, name), total(section, name).then_some(targeted))
    };
    let (section, kind) = match metric_type {
        MetricType::User => ("metrics", "user"),
        MetricType::System => ("systemMetrics", "system"),
    };
    if !names(section).iter().any(|n| n == metric_id) {
        bail!(
            "The {kind} metric '{metric_id}' is not defined in the configuration '{}'",
            config["id"].as_str().unwrap_or_default()
        );
    }
    let mut rows = vec![Row { highlight: true, ..row(section, metric_id) }];
    for name in names("metrics") {
        if (section, metric_id) != ("metrics", name.as_str()) {
            rows.push(row("metrics", &name));
        }
    }
    for name in ["appliedCount", "targetedCount"] {
        if (section, metric_id) != ("systemMetrics", name) {
            rows.push(row("systemMetrics", name));
        }
    }
    Ok(rows)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cli::progress::plain_line;

    #[test]
    fn content_is_accepted_bare_or_wrapped() {
        let inner = json!({"deviceContent": {"properties.desired.fw": {"v": "1"}}});
        assert_eq!(content_of(inner.clone()).unwrap(), inner);
        let wrapped = json!({"content": inner.clone(), "id": "x", "priority": 3});
        assert_eq!(content_of(wrapped).unwrap(), inner);
        let extra = json!({"deviceContent": {}, "other": 1});
        assert_eq!(content_of(extra).unwrap(), json!({"deviceContent": {}}));
        assert!(content_of(json!({"modulesContent": {}})).is_err());
        assert!(content_of(json!({"deviceContent": {}, "moduleContent": {}})).is_err());
    }

    #[test]
    fn metrics_are_accepted_bare_or_wrapped() {
        let queries = json!({"current": "SELECT deviceId FROM devices"});
        assert_eq!(metric_queries_of(json!({"queries": queries.clone()})).unwrap(), queries);
        assert_eq!(metric_queries_of(json!({"metrics": {"queries": queries.clone()}})).unwrap(), queries);
        assert!(metric_queries_of(json!({"current": "x"})).is_err());
        assert!(metric_queries_of(json!({"queries": "x"})).is_err());
    }

    #[test]
    fn update_applies_set_then_flags_and_sends_updatable_fields() {
        let current = json!({
            "id": "c1", "schemaVersion": "1.0", "labels": {"a": "b"},
            "content": {"deviceContent": {"properties.desired.x": 1}},
            "targetCondition": "tags.a = 'b'", "priority": 1,
            "metrics": {"queries": {"m": "SELECT deviceId FROM devices"}, "results": {"m": 0}},
            "systemMetrics": {"queries": {}, "results": {}}, "etag": "AAA",
            "createdTimeUtc": "t", "lastUpdatedTimeUtc": "t",
        });
        let args = UpdateArgs {
            config_id: "c1".into(),
            set: vec!["priority=5".into(), "labels.owner=ops".into()],
            priority: None,
            target_condition: Some("tags.a = 'c'".into()),
            labels: None,
            etag: None,
            common: Common::default(),
        };
        let body = update_body(&current, &args).unwrap();
        assert_eq!(
            body,
            json!({
                "id": "c1", "schemaVersion": "1.0", "labels": {"a": "b", "owner": "ops"},
                "content": {"deviceContent": {"properties.desired.x": 1}},
                "targetCondition": "tags.a = 'c'", "priority": 5,
                "metrics": {"queries": {"m": "SELECT deviceId FROM devices"}},
            })
        );
    }

    #[test]
    fn metric_results_are_device_ids_when_every_row_has_one() {
        let rows = vec![json!({"deviceId": "d1"}), json!({"deviceid": "d2"})];
        assert_eq!(metric_result(rows), vec![json!("d1"), json!("d2")]);
        let rows = vec![json!({"deviceId": "d1"}), json!({"n": 2})];
        assert_eq!(metric_result(rows.clone()), rows);
        assert_eq!(metric_result(vec![]), Vec::<Value>::new());
    }

    #[test]
    fn create_lowercases_the_id_and_defaults_like_az() {
        let args = CreateArgs {
            config_id: "FirmWare285".into(),
            content: r#"{"deviceContent":{"properties.desired.fw":{"v":"1"}}}"#.into(),
            target_condition: None,
            priority: None,
            metrics: None,
            labels: Some(r#"{"k":"v"}"#.into()),
            common: Common::default(),
        };
        let body = create_body(&args).unwrap();
        assert_eq!(
            body,
            json!({
                "id": "firmware285",
                "content": {"deviceContent": {"properties.desired.fw": {"v": "1"}}},
                "targetCondition": "", "priority": 0, "labels": {"k": "v"},
            })
        );
    }

    #[test]
    fn watched_rows_put_the_requested_metric_first_out_of_targeted() {
        let config = json!({
            "id": "c1",
            "metrics": {"queries": {"error": "q", "current": "q"}, "results": {"error": 1, "current": 4}},
            "systemMetrics": {"queries": {"targetedCount": "q", "appliedCount": "q"},
                              "results": {"targetedCount": 5, "appliedCount": 3}},
        });
        let rows = metric_rows(&config, "current", MetricType::User).unwrap();
        assert!(rows[0].highlight && !rows[1].highlight);
        assert_eq!(plain_line(&rows), "current=4/5 error=1/5 appliedCount=3/5 targetedCount=5");
        let rows = metric_rows(&config, "appliedCount", MetricType::System).unwrap();
        assert_eq!(plain_line(&rows), "appliedCount=3/5 error=1/5 current=4/5 targetedCount=5");
        assert!(metric_rows(&config, "nope", MetricType::User).is_err());
        assert!(metric_rows(&config, "current", MetricType::System).is_err());
    }
}
