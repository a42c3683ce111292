//! The command-line side of the batch service: `millrace sql --server`,
//! `millrace job status`, `millrace job cancel` (blocking sockets).

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};
use arrow::array::RecordBatch;
use millrace_core::batch::{JobId, JobProgress};

use super::proto::{Reply, Status, Request, client_hello, job_name, read_frame, write_frame};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The batch address `millrace job` uses when none is given: a single
/// node's default.
pub const DEFAULT_SERVER: &str = "127.0.0.1:9094";

pub(crate) fn connect(server: &str) -> anyhow::Result<TcpStream> {
    let hint = "is `millrace serve` running there? A node's batch port is its Kafka port + 2 on a single node (127.0.0.1:9094 by default) \
                and its peer port + 100 in a cluster; `millrace dev-cluster` prints its nodes' batch servers";
    let addrs: Vec<_> = server
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve the batch server {server:?} (expected host:port)"))?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(mut s) => {
                let _ = s.set_nodelay(true);
                std::io::Write::write_all(&mut s, &client_hello())?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => bail!("cannot reach the batch service at {server}: {e} ({hint})"),
        None => bail!("the batch server {server:?} resolves to no address"),
    }
}

pub(crate) fn lost(server: &str, e: anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!("lost the connection to the batch service at {server}: {e:#}")
}

/// What happened to a submitted query.
pub enum Event<'a> {
    Accepted { job: JobId, node: u32, shuffle_partitions: u32 },
    Progress(&'a JobProgress),
}

/// Submits `sql` to the node at `server` and waits for its rows, calling
/// `on_event` as the job is accepted and progresses.
pub fn run_query(server: &str, sql: &str, shuffle_partitions: Option<u32>, mut on_event: impl FnMut(Event<'_>)) -> anyhow::Result<Vec<RecordBatch>> {
    let mut stream = connect(server)?;
    write_frame(&mut stream, &Request::Submit { sql: sql.to_string(), shuffle_partitions }).map_err(|e| lost(server, e))?;
    let mut parts = Vec::new();
    let mut job = None;
    loop {
        let reply: Reply = read_frame(&mut stream).map_err(|e| match job {
            Some(j) => anyhow::anyhow!("lost the connection to the batch service at {server} while job {} ran: {e:#} (did the node stop?)", job_name(j)),
            None => lost(server, e),
        })?;
        match reply {
            Reply::Accepted { job: j, node, shuffle_partitions } => {
                job = Some(j);
                on_event(Event::Accepted { job: j, node, shuffle_partitions });
            }
            Reply::Progress(p) => on_event(Event::Progress(&p)),
            Reply::ResultPart(bytes) => parts.push(bytes),
            Reply::Succeeded { .. } => break,
            Reply::Failed { job: Some(j), reason } if reason.starts_with("cancelled") => bail!("job {} was {reason}", job_name(j)),
            Reply::Failed { job: Some(j), reason } => bail!("job {} failed: {reason}", job_name(j)),
            Reply::Failed { job: None, reason } => bail!("{reason}"),
            Reply::Error(e) => bail!("{e}"),
            other => bail!("unexpected answer from {server}: {other:?}"),
        }
    }
    Ok(millrace_engine::job::decode_results(&parts)?)
}

/// One request to the node at `server` and its reply; a `Reply::Error`
/// becomes the error (the one line the CLI prints).
pub fn call(server: &str, request: &Request) -> anyhow::Result<Reply> {
    let mut stream = connect(server)?;
    write_frame(&mut stream, request).map_err(|e| lost(server, e))?;
    match read_frame::<Reply>(&mut stream).map_err(|e| lost(server, e))? {
        Reply::Error(e) => bail!("{e}"),
        r => Ok(r),
    }
}

/// The message of a `Reply::Done`.
pub fn done(server: &str, reply: Reply) -> anyhow::Result<String> {
    match reply {
        Reply::Done(msg) => Ok(msg),
        other => bail!("unexpected answer from {server}: {other:?}"),
    }
}

/// The live workers and the jobs of the node at `server` (or one job).
pub fn status(server: &str, job: Option<JobId>) -> anyhow::Result<Status> {
    match call(server, &Request::Status { job })? {
        Reply::Status(status) => Ok(status),
        other => bail!("unexpected answer from {server}: {other:?}"),
    }
}

/// Cancels `job` through the node at `server`; the answer to print.
pub fn cancel(server: &str, job: JobId) -> anyhow::Result<String> {
    done(server, call(server, &Request::Cancel { job })?)
}
