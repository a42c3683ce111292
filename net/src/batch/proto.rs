//! The batch service's messages: between the nodes (a [`PeerTransport`] of
//! [`BatchMsg`], on each node's batch port) and between a command-line
//! client and a node (framed [`Request`]s and [`Reply`]s on the same port,
//! told apart by their first four bytes).
//!
//! [`PeerTransport`]: crate::peer::PeerTransport

use std::io::{Read, Write};

use millrace_core::Millis;
use millrace_core::batch::{DriverInput, JobId, JobProgress, JobState, StageId, WorkerInput};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A message between two nodes' batch services, stamped with the sender's
/// incarnation (its start time in microseconds; a worker's epoch), so a
/// worker knows when the driver it serves has restarted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchMsg {
    pub incarnation: u64,
    pub body: Body,
}

// Shuffle blocks still go through bincode; they could travel as the
// frame's payload as replicated batches do.
impl crate::peer::Payload for BatchMsg {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// A worker to the driver it serves: registration, heartbeats, task
    /// statuses.
    ToDriver(DriverInput),
    /// A driver to the worker serving it on the receiving node: launches,
    /// kills, clean-ups.
    ToWorker(WorkerInput),
    /// A driver to a node it does not count as a live worker (every
    /// heartbeat interval): register with me.
    Hello,
    /// A reducer's node asks for the block of reduce partition `reduce` of
    /// map output (`job`, `shuffle`, `map_partition`), written by the
    /// receiver's incarnation `epoch`.
    Fetch { id: u64, job: JobId, shuffle: StageId, map_partition: u32, reduce: u32, epoch: u64 },
    /// The answer to `Fetch { id, .. }`.
    Block { id: u64, fetched: Fetched },
    /// Cancel a job of the receiver's driver (a client asked another node).
    Cancel { job: JobId },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Fetched {
    Block(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Not held here (another incarnation wrote it, or it was cleaned up).
    Missing,
    /// Held, but larger than a message between nodes may be (its size).
    TooLarge(u64),
}

/// The node whose driver runs `job` (job ids carry it in their high 32
/// bits, so they are unique across drivers).
pub fn job_node(job: JobId) -> u32 {
    (job >> 32) as u32
}

/// A job id as people see it: `node-sequence`, e.g. `2-7` (node 2's
/// seventh job).
pub fn job_name(job: JobId) -> String {
    format!("{}-{}", job >> 32, job & 0xffff_ffff)
}

/// `node-sequence`, or the id as one number.
pub fn parse_job(s: &str) -> Result<JobId, String> {
    let bad = || format!("{s:?} is not a job id (like 2-7: the node that ran it, then its number there)");
    match s.split_once('-') {
        Some((node, seq)) => {
            let node: u32 = node.trim().parse().map_err(|_| bad())?;
            let seq: u32 = seq.trim().parse().map_err(|_| bad())?;
            Ok((u64::from(node) << 32) | u64::from(seq))
        }
        None => s.trim().parse().map_err(|_| bad()),
    }
}

/// First bytes a command-line client sends on a node's batch port.
pub const CLIENT_MAGIC: [u8; 4] = *b"MLRB";
/// Bumped when requests or replies change.
pub const CLIENT_VERSION: u16 = 3;
/// Largest client frame read (a result partition travels in one).
pub const MAX_CLIENT_FRAME: usize = 1 << 30;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Plan and run `sql` on the cluster, with this node as the driver.
    /// Replies: `Accepted`, `Progress`..., then `ResultPart`... and
    /// `Succeeded`, or `Failed`. Closing the connection cancels the job.
    Submit { sql: String, shuffle_partitions: Option<u32> },
    /// This node's jobs (or one), as `Jobs`.
    Status { job: Option<JobId> },
    /// Cancel a job (forwarded to its driver's node if that is another).
    Cancel { job: JobId },
    /// Define and start a stream query on this node. Replies `Done` or `Error`.
    StreamStart(StreamSpec),
    /// The stream queries this node knows, as `Streams`.
    StreamList,
    /// One stream query, as `Streams` with one entry (or `Error`).
    StreamDescribe { name: String },
    /// Stop a stream query and forget its definition (its logs remain, so
    /// starting it again with the same SQL resumes it). `Done` or `Error`.
    StreamStop { name: String },
    /// Define and start a connector on this node. `Done` or `Error`.
    ConnectStart(ConnectSpec),
    /// The connectors this node runs, as `Connectors`.
    ConnectList,
    /// One connector, as `Connectors` with one entry (or `Error`).
    ConnectDescribe { name: String },
    /// Stop a connector and forget its definition (its stored positions
    /// remain, so starting it again the same way resumes it).
    ConnectStop { name: String },
}

/// What `millrace connect start` asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectSpec {
    pub name: String,
    /// A source's destination, a sink's origin.
    pub topic: String,
    pub config: millrace_core::connect::ConnectorConfig,
    /// A source's records per second at most.
    pub rate: Option<u64>,
}

/// One connector as `millrace connect list|describe` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectorInfo {
    pub name: String,
    /// file-source, file-sink, generator.
    pub kind: String,
    pub topic: String,
    /// Its settings in a few words.
    pub summary: String,
    pub owner: u32,
    pub state: String,
    pub error: Option<String>,
    pub retrying: Option<String>,
    /// A source's records delivered to the topic; a sink's records written
    /// in this run.
    pub records: u64,
    /// Records moved per second since this run started.
    pub records_per_sec: Option<f64>,
    /// A source's position (JSON), a sink's durable offset per partition.
    pub position: String,
    /// Malformed input records skipped (since this run started).
    pub skipped: u64,
    pub last_warning: Option<String>,
}

/// What `millrace stream start` asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamSpec {
    pub name: String,
    /// `INSERT INTO sink SELECT ... FROM topic('in', ...)`.
    pub sql: String,
    pub trigger: millrace_core::stream::Trigger,
    pub output_mode: millrace_engine::stream::OutputMode,
    pub watermark: Option<millrace_engine::stream::Watermark>,
    pub start_at: millrace_core::stream::StartAt,
    pub max_records_per_batch: Option<u64>,
    /// Batches kept in the offset and commit logs behind the last commit
    /// (`None`: `def::DEFAULT_RETAIN_BATCHES`).
    #[serde(default)]
    pub retain_batches: Option<u64>,
    /// A query built with the Dataset API instead of SQL: its plan and
    /// sink topic (`sql` then only describes it).
    #[serde(default)]
    pub dataset: Option<DatasetQuery>,
}

/// A stream query as a Dataset API plan (`Dataset::stream_plan`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetQuery {
    pub plan: millrace_engine::plan::LogicalPlan,
    pub sink: String,
}

/// One stream query as `millrace stream list|describe` shows it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StreamInfo {
    pub name: String,
    pub sql: String,
    pub owner: u32,
    /// `running`, `waiting`, `stopped`, `failed`, ...
    pub state: String,
    pub error: Option<String>,
    pub trigger: String,
    pub output_mode: String,
    /// The last committed batch.
    pub batch: Option<u64>,
    pub input_rows_per_sec: Option<f64>,
    pub processed_rows_per_sec: Option<f64>,
    /// Planned to committed, of the last batch.
    pub processing_ms: Option<i64>,
    pub watermark: Option<i64>,
    /// Per input partition: records waiting after the last batch.
    pub lag: Vec<(String, i32, i64)>,
    /// The last batches: (batch, input rows, output records, processing ms).
    pub recent: Vec<(u64, u64, u64, i64)>,
    /// The last failure of a log read or append, if the query is retrying.
    pub retrying: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Accepted { job: JobId, node: u32, shuffle_partitions: u32 },
    Progress(JobProgress),
    /// One per result partition, in order: Arrow IPC stream bytes.
    ResultPart(#[serde(with = "serde_bytes")] Vec<u8>),
    Succeeded { job: JobId },
    /// `job` is `None` when the query never became a job (a planning error).
    Failed { job: Option<JobId>, reason: String },
    Status(Status),
    Done(String),
    Error(String),
    Streams(Vec<StreamInfo>),
    Connectors(Vec<ConnectorInfo>),
}

/// A node's answer to `Status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node: u32,
    /// The workers its driver counts as live: (node, task slots).
    pub workers: Vec<(u32, u32)>,
    pub jobs: Vec<JobInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    pub job: JobId,
    pub query: String,
    pub state: JobState,
    /// Milliseconds since the epoch.
    pub submitted: Millis,
    /// How long it ran (so far).
    pub elapsed_ms: Millis,
    pub progress: Option<JobProgress>,
    /// Why it was cancelled, when the driver knows more than "cancelled".
    pub note: Option<String>,
}

/// A frame: the length (u32 big-endian), then the bincode bytes.
pub fn encode_frame<M: Serialize>(msg: &M) -> anyhow::Result<Vec<u8>> {
    let mut out = vec![0u8; 4];
    let len = bincode::serde::encode_into_std_write(msg, &mut out, bincode::config::standard())?;
    let len = u32::try_from(len).map_err(|_| anyhow::anyhow!("a {len}-byte message is too large"))?;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

pub fn decode<M: DeserializeOwned>(bytes: &[u8]) -> anyhow::Result<M> {
    let config = bincode::config::standard().with_limit::<MAX_CLIENT_FRAME>();
    let (msg, used) = bincode::serde::decode_from_slice::<M, _>(bytes, config)?;
    if used != bytes.len() {
        anyhow::bail!("{} bytes left over after a message", bytes.len() - used);
    }
    Ok(msg)
}

/// Writes one frame to a blocking stream.
pub fn write_frame<M: Serialize>(w: &mut impl Write, msg: &M) -> anyhow::Result<()> {
    w.write_all(&encode_frame(msg)?)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame from a blocking stream.
pub fn read_frame<M: DeserializeOwned>(r: &mut impl Read) -> anyhow::Result<M> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_CLIENT_FRAME {
        anyhow::bail!("a {len}-byte frame is over the {MAX_CLIENT_FRAME}-byte limit");
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    decode(&body)
}

/// The client's first bytes.
pub fn client_hello() -> [u8; 6] {
    let mut h = [0u8; 6];
    h[..4].copy_from_slice(&CLIENT_MAGIC);
    h[4..].copy_from_slice(&CLIENT_VERSION.to_be_bytes());
    h
}
