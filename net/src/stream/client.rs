//! `millrace stream start|list|describe|stop`: requests on a node's batch
//! port (the same framed protocol as `millrace sql --server`), so a node
//! has one port for clients and one place that owns its queries.

use anyhow::bail;

use crate::batch::client::{call, done};
use crate::batch::proto::{Reply, Request, StreamInfo, StreamSpec};

fn streams(server: &str, r: Reply) -> anyhow::Result<Vec<StreamInfo>> {
    match r {
        Reply::Streams(s) => Ok(s),
        other => bail!("unexpected answer from {server}: {other:?}"),
    }
}

pub fn start(server: &str, spec: StreamSpec) -> anyhow::Result<String> {
    done(server, call(server, &Request::StreamStart(spec))?)
}

/// Starts a stream query built with the Dataset API on the node at
/// `server` (its batch address): `ds` reads one topic
/// (`Context::read_topic`) and the query writes to topic `sink`. The plan
/// is checked here first, so a query the engine cannot run incrementally
/// fails with the same message SQL would get.
///
/// ```no_run
/// use millrace_engine::dataset::Context;
/// use millrace_engine::expr::{col, count_star};
/// use millrace_engine::stream::{OutputMode, StreamOptions};
/// use millrace_core::stream::{StartAt, Trigger};
///
/// let ctx = Context::new();
/// let clicks = ctx.read_topic("clicks", "json", "user STRING, ts TIMESTAMP")?;
/// let counts = clicks.group_by(vec![col("user")]).agg(vec![count_star()])?;
/// let options = StreamOptions::new(OutputMode::Update);
/// millrace_net::stream::client::start_dataset("127.0.0.1:9094", "per-user", &counts, "counts", options, Trigger::Interval { interval_ms: 1000 }, StartAt::Earliest)?;
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn start_dataset(
    server: &str,
    name: &str,
    ds: &millrace_engine::dataset::Dataset,
    sink: &str,
    options: millrace_engine::stream::StreamOptions,
    trigger: millrace_core::stream::Trigger,
    start_at: millrace_core::stream::StartAt,
) -> anyhow::Result<String> {
    ds.stream_plan(sink, options.clone())?;
    let spec = StreamSpec {
        name: name.to_string(),
        sql: format!("-- Dataset API\nINSERT INTO {sink}\n{}", ds.plan.display_indent()),
        trigger,
        output_mode: options.output_mode,
        watermark: options.watermark,
        start_at,
        max_records_per_batch: None,
        retain_batches: None,
        dataset: Some(crate::batch::proto::DatasetQuery { plan: ds.plan.clone(), sink: sink.to_string() }),
    };
    start(server, spec)
}

pub fn stop(server: &str, name: &str) -> anyhow::Result<String> {
    done(server, call(server, &Request::StreamStop { name: name.to_string() })?)
}

pub fn list(server: &str) -> anyhow::Result<Vec<StreamInfo>> {
    streams(server, call(server, &Request::StreamList)?)
}

pub fn describe(server: &str, name: &str) -> anyhow::Result<StreamInfo> {
    let mut s = streams(server, call(server, &Request::StreamDescribe { name: name.to_string() })?)?;
    match s.pop() {
        Some(i) => Ok(i),
        None => bail!("no stream query named {name}"),
    }
}
