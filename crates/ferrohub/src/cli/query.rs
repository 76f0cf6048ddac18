//! `ferrohub query -q "..."`, as `az iot hub query`: runs a query over the
//! device twins and prints every row of every page as one JSON array.

use anyhow::bail;
use clap::Args;

use super::args::Common;
use super::context::Context;
use super::Outcome;

#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    /// The query, e.g. `SELECT * FROM devices WHERE tags.devicetype = 'chiller'`.
    #[arg(long = "query-command", short = 'q', value_name = "QUERY")]
    pub(crate) query: String,
    /// At most this many rows; -1 for all [default: all].
    #[arg(long, allow_negative_numbers = true, value_name = "N")]
    pub(crate) top: Option<i64>,
    /// Rows per request (`x-ms-max-item-count`; ferrohub only) [default:
    /// the hub's, 100].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub(crate) page_size: Option<u32>,
    #[command(flatten)]
    pub(crate) common: Common,
}

/// Runs `query`.
pub(crate) async fn run(args: QueryArgs) -> anyhow::Result<Outcome> {
    let top = match args.top {
        None | Some(-1) => None,
        Some(n) if n > 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        Some(n) => bail!("--top must be a positive number or -1, got {n}"),
    };
    let ctx = Context::resolve(&args.common)?;
    let result = ctx.client()?.query_limited(&args.query, args.page_size, top).await?;
    Outcome::value(&ctx, &result.items)
}
