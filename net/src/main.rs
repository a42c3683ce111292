//! The `millrace` command: the server and the client helpers.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use millrace_core::records::{Compression, Header, Record};
use millrace_net::client::consumer::{PartitionReader, StartAt};
use millrace_net::client::producer::{Producer, ProducerConfig};
use millrace_net::client::Client;
use millrace_net::config::{DEFAULT_DATA_DIR, DEFAULT_LISTEN, ServeConfig};
use millrace_net::server::Server;

#[global_allocator]
static ALLOC: millrace_net::alloc_guard::GuardedAlloc = millrace_net::alloc_guard::GuardedAlloc;

#[derive(Parser)]
#[command(name = "millrace", version, about = "A Kafka-compatible streaming log with a batch engine beside it.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker. Without options: listens on 127.0.0.1:9092 and keeps
    /// data under ./millrace-data.
    Serve(ServeArgs),
    /// Create, list, describe or delete topics on a running server.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Produce lines from standard input, one record per line.
    Produce(ProduceArgs),
    /// Print records of a topic to standard output, one per line.
    Consume(ConsumeArgs),
    /// List, describe (members, committed offsets, lag) or delete consumer groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Start a local cluster of N `millrace serve` processes on loopback
    /// ports and supervise them (a node that dies is restarted) until Ctrl-C.
    DevCluster(millrace_net::dev_cluster::DevClusterArgs),
    #[cfg(feature = "batch")]
    /// Run a SQL query (files via read_csv('path'), read_json, read_parquet,
    /// read_text) on the batch engine — in this process, or on a cluster
    /// with --server — and print the result as a table, or write it with
    /// --output.
    Sql(SqlArgs),
    #[cfg(feature = "batch")]
    /// List or cancel the batch jobs of a node.
    #[command(subcommand)]
    Job(JobCommand),
    #[cfg(feature = "batch")]
    /// Start, list, describe or stop stream queries: SQL run micro-batch by
    /// micro-batch over a topic, its results written to a topic exactly once.
    #[command(subcommand)]
    Stream(StreamCommand),
    #[cfg(feature = "batch")]
    /// Start, list, describe or stop connectors: a file or folder tailed
    /// into a topic, a topic written to rolling files, generated records.
    #[command(subcommand)]
    Connect(ConnectCommand),
}

#[cfg(feature = "batch")]
#[derive(Subcommand)]
// Parsed once per run: the size of `Start` does not matter.
#[allow(clippy::large_enum_variant)]
enum ConnectCommand {
    /// Define a connector on a node and start it; the node resumes it when
    /// it restarts, until it is stopped.
    Start {
        /// The connector's name (letters, digits, '-', '_', '.').
        name: String,
        /// file-source, file-sink or generator.
        #[arg(long = "type")]
        kind: String,
        /// The topic written to (a source) or read from (a sink).
        #[arg(long)]
        topic: String,
        /// file-source: a file or a folder of files to tail; file-sink: the
        /// folder to write files into (created if missing).
        #[arg(long)]
        path: Option<String>,
        /// file-source: lines or json (each line validated; malformed ones
        /// skipped and logged). file-sink: json (records as JSON objects)
        /// or lines (values only).
        #[arg(long)]
        format: Option<String>,
        /// Sources: at most this many records per second.
        #[arg(long)]
        rate: Option<u64>,
        /// generator: page-views or sequence.
        #[arg(long = "kind", default_value = "page-views")]
        generator: String,
        /// generator: the seed of its records.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// generator: stop after this many records.
        #[arg(long)]
        count: Option<u64>,
        /// file-sink: records per file at most.
        #[arg(long, default_value_t = 10_000)]
        roll_records: u64,
        /// file-sink: bytes per file, about (the record crossing it ends it).
        #[arg(long, default_value_t = 16 << 20)]
        roll_bytes: u64,
        /// file-sink: a file is written once its first record is this old
        /// (500ms, 1s, 2m).
        #[arg(long, default_value = "1s")]
        roll_after: String,
        /// file-sink: where a new sink starts reading, earliest or latest.
        #[arg(long, default_value = "earliest")]
        from: String,
        #[command(flatten)]
        conn: BatchConn,
    },
    /// The connectors of a node: type, state, records moved.
    List {
        #[command(flatten)]
        conn: BatchConn,
    },
    /// One connector: state, records moved, position, skipped input, the
    /// last warning or error.
    Describe {
        name: String,
        #[command(flatten)]
        conn: BatchConn,
    },
    /// Stop a connector (it is not resumed again; its positions remain, so
    /// starting it again the same way continues where it stopped).
    Stop {
        name: String,
        #[command(flatten)]
        conn: BatchConn,
    },
}

#[cfg(feature = "batch")]
#[derive(Subcommand)]
enum StreamCommand {
    /// Define a stream query on a node and start it; the node resumes it
    /// when it restarts, until it is stopped.
    Start {
        /// The query's name (letters, digits, '-', '_', '.').
        name: String,
        /// INSERT INTO out SELECT ... FROM topic('in', 'json', 'user STRING, ts TIMESTAMP') ...
        #[arg(long)]
        sql: String,
        /// When batches run: an interval (500ms, 1s, 2m), once, or available-now.
        #[arg(long, default_value = "1s")]
        trigger: String,
        /// append, update or complete.
        #[arg(long, default_value = "append")]
        output_mode: String,
        /// An event-time watermark: a TIMESTAMP column and a delay, e.g. 'ts 10 seconds'.
        #[arg(long)]
        watermark: Option<String>,
        /// Where a new query starts reading: earliest or latest.
        #[arg(long, default_value = "latest")]
        from: String,
        /// At most this many input records per batch (Spark's maxOffsetsPerTrigger).
        #[arg(long)]
        max_records_per_batch: Option<u64>,
        /// Batches the query's offset and commit logs keep behind the last
        /// commit; older entries are purged (Spark's minBatchesToRetain).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
        retain_batches: u64,
        #[command(flatten)]
        conn: BatchConn,
    },
    /// The stream queries of a node: state, last batch, rates.
    List {
        #[command(flatten)]
        conn: BatchConn,
    },
    /// One stream query's progress: batch id, rates, processing time,
    /// watermark, lag per input partition, recent batches.
    Describe {
        name: String,
        #[command(flatten)]
        conn: BatchConn,
    },
    /// Stop a stream query (it is not resumed again; its logs remain, so
    /// starting it again with the same SQL continues where it stopped).
    Stop {
        name: String,
        #[command(flatten)]
        conn: BatchConn,
    },
}

#[cfg(feature = "batch")]
#[derive(Args, Clone)]
struct BatchConn {
    /// A node's batch service (host:port): its Kafka port + 2 on a single
    /// node, its peer port + 100 in a cluster.
    #[arg(long, short = 's', default_value = millrace_net::batch::client::DEFAULT_SERVER, env = "MILLRACE_BATCH_SERVER")]
    server: String,
}

#[cfg(feature = "batch")]
#[derive(Subcommand)]
enum JobCommand {
    /// The jobs submitted to a node (running, and the last ones ended):
    /// state, elapsed time, and per stage the tasks done.
    Status {
        /// Only this job (like 2-7), with its query and stages.
        #[arg(value_parser = millrace_net::batch::proto::parse_job)]
        job: Option<u64>,
        #[command(flatten)]
        conn: BatchConn,
    },
    /// Cancel a running job (asked of any node, it reaches the job's driver).
    Cancel {
        /// The job (like 2-7: node 2's seventh job).
        #[arg(value_parser = millrace_net::batch::proto::parse_job)]
        job: u64,
        #[command(flatten)]
        conn: BatchConn,
    },
}

#[cfg(feature = "batch")]
#[derive(Args)]
struct SqlArgs {
    /// The query, e.g. "SELECT k, count(*) FROM read_csv('data.csv') GROUP BY k".
    query: String,
    /// Submit to this node's batch service (host:port) and run on its
    /// cluster; the node is the job's driver. Without it (or with --local)
    /// the query runs in this process.
    #[arg(long, short = 's', env = "MILLRACE_BATCH_SERVER")]
    server: Option<String>,
    /// Run in this process (Spark's local[N]), even if MILLRACE_BATCH_SERVER
    /// is set. The default without --server.
    #[arg(long)]
    local: bool,
    /// Write the result to FILE (.csv, .json or .parquet) instead of printing it.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Task slots (threads) of a local run [default: the number of cores].
    #[arg(long)]
    slots: Option<u32>,
    /// Megabytes an aggregate or join of one task may hold before it spills
    /// to the temp directory (0: never) [default: 256; a cluster's nodes use
    /// their batch.task_memory_mb].
    #[arg(long)]
    task_memory_mb: Option<u64>,
    /// Reduce partitions per shuffle [default: 2 x the task slots, the
    /// cluster's with --server].
    #[arg(long)]
    shuffle_partitions: Option<u32>,
    /// Print the logical plan and its stages instead of running it.
    #[arg(long)]
    explain: bool,
    /// Broker that `topic('name')` reads from in a local run. With
    /// --server the cluster's nodes read from their own brokers.
    #[arg(long, short = 'b', default_value = DEFAULT_LISTEN, env = "MILLRACE_BOOTSTRAP")]
    bootstrap: String,
}

#[derive(Subcommand)]
enum GroupCommand {
    /// List consumer groups with their state.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a group's members and, per partition, the committed offset,
    /// the log end offset and the lag (like kafka-consumer-groups --describe).
    Describe {
        group: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete an empty group and its committed offsets.
    Delete {
        group: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on for Kafka clients [default: 127.0.0.1:9092].
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Directory for the log and metadata [default: ./millrace-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// TOML configuration file; flags given here override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// host:port given to clients in metadata [default: the listen address].
    #[arg(long)]
    advertised: Option<String>,
    /// Cluster mode: this node's id (Kafka's node.id).
    #[arg(long)]
    node_id: Option<i32>,
    /// Cluster mode: every controller voter as id@ip:port, comma-separated,
    /// this node included (Kafka's controller.quorum.voters).
    #[arg(long, value_delimiter = ',')]
    voters: Vec<String>,
    /// Cluster mode: where to listen for other nodes [default: this node's voter address].
    #[arg(long)]
    peer_listen: Option<std::net::SocketAddr>,
    /// Where the batch service listens for drivers, workers and `millrace
    /// sql --server` [default: the Kafka port + 2 on a single node; the
    /// peer port + 100 in a cluster].
    #[arg(long)]
    batch_listen: Option<std::net::SocketAddr>,
    /// Task slots of this node's batch worker [default: the number of cores].
    #[arg(long)]
    batch_slots: Option<u32>,
}

#[derive(Args, Clone)]
struct Conn {
    /// Server to talk to.
    #[arg(long, short = 'b', default_value = DEFAULT_LISTEN, env = "MILLRACE_BOOTSTRAP")]
    bootstrap: String,
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Number of partitions [default: the server's num_partitions].
        #[arg(long, short = 'p', default_value_t = -1)]
        partitions: i32,
        /// Topic config as key=value (repeatable), e.g. segment.bytes=1048576.
        #[arg(long = "config", short = 'c')]
        configs: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List topics.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a topic's partitions, offsets and configs.
    Describe {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Change a topic's configs (unspecified ones stay as they are).
    Alter {
        name: String,
        /// Config to set, as key=value (repeatable), e.g. retention.ms=3600000.
        #[arg(long = "config", short = 'c')]
        configs: Vec<String>,
        /// Config to return to its default (repeatable).
        #[arg(long = "delete-config")]
        delete: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a topic and its data.
    Delete {
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Args)]
struct ProduceArgs {
    topic: String,
    /// Send every record to this partition (default: by key, else round-robin).
    #[arg(long, short = 'p')]
    partition: Option<i32>,
    /// Split each line at the first occurrence of this into key and value.
    #[arg(long)]
    key_separator: Option<String>,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    compression: String,
    /// 0, 1 or all.
    #[arg(long, default_value = "all")]
    acks: String,
    /// Records per batch.
    #[arg(long, default_value_t = 500)]
    batch_records: usize,
    /// Disable the idempotent producer.
    #[arg(long)]
    no_idempotence: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
struct ConsumeArgs {
    topic: String,
    /// Read only this partition (default: all, one after another at the end
    /// of each fetch round).
    #[arg(long, short = 'p')]
    partition: Option<i32>,
    /// Start offset: earliest, latest, or a number.
    #[arg(long, default_value = "earliest")]
    offset: String,
    /// Stop after this many records.
    #[arg(long)]
    max_messages: Option<u64>,
    /// Stop once every partition is read up to its high watermark.
    #[arg(long)]
    exit_at_end: bool,
    /// Print key<TAB>value.
    #[arg(long)]
    print_key: bool,
    /// Consume as a member of this consumer group: partitions are shared
    /// with the group's other members, reading resumes at the committed
    /// offsets (else at --offset earliest/latest), and offsets are
    /// committed whenever the consumer has caught up, and on exit.
    #[arg(long, short = 'g')]
    group: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

/// An error is printed as one line of its causes (`Error: a: b`), exit
/// code 1: anyhow's `Debug` output, which `main` returning `Result` uses,
/// adds a stack backtrace whenever RUST_BACKTRACE is set.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MILLRACE_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match std::env::var("MILLRACE_WORKERS").ok().and_then(|v| v.parse::<usize>().ok()) {
        Some(0) => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        Some(n) => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build()?,
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
    };
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Topic(cmd) => topic(cmd).await,
            Command::Produce(args) => produce(args).await,
            Command::Consume(args) if args.group.is_some() => consume_group(args).await,
            Command::Consume(args) => consume(args).await,
            Command::Group(cmd) => group(cmd).await,
            Command::DevCluster(args) => millrace_net::dev_cluster::run(args).await,
            #[cfg(feature = "batch")]
            Command::Sql(args) => sql(args),
            #[cfg(feature = "batch")]
            Command::Job(cmd) => job(cmd),
            #[cfg(feature = "batch")]
            Command::Stream(cmd) => stream(cmd),
            #[cfg(feature = "batch")]
            Command::Connect(cmd) => connect(cmd),
        }
    })
}

#[cfg(feature = "batch")]
fn sql(args: SqlArgs) -> anyhow::Result<()> {
    use millrace_net::batch::local;
    let server = args.server.clone().filter(|_| !args.local && !args.explain);
    if let Some(server) = server {
        if args.slots.is_some() {
            bail!("--slots is for local runs; a node's task slots are its batch.slots setting (--batch-slots)");
        }
        if args.task_memory_mb.is_some() {
            bail!("--task-memory-mb is for local runs; a node's limit is its batch.task_memory_mb setting");
        }
        return sql_on_cluster(&args, &server);
    }
    let mut config = local::LocalConfig::default();
    if let Some(s) = args.slots {
        config.slots = s.max(1);
        config.planner.shuffle_partitions = (s * 2).max(2);
    }
    if let Some(p) = args.shuffle_partitions {
        config.planner.shuffle_partitions = p.max(1);
    }
    if let Some(m) = args.task_memory_mb {
        config.task_memory_mb = m;
    }
    let topics = millrace_net::batch::topics::KafkaTopics::new(&args.bootstrap);
    config.topics = Some(std::sync::Arc::new(topics.clone()));
    let plan = millrace_engine::sql::plan_sql(&args.query, &millrace_net::batch::catalog(Some(&topics)))?;
    if args.explain {
        println!("{}", plan.display_indent());
        for st in millrace_engine::physical::cut(&plan, config.planner)? {
            let kind = match &st.plan.output {
                millrace_engine::physical::StageOutput::Shuffle { partitions, .. } => format!("shuffle-map -> {partitions} partitions"),
                millrace_engine::physical::StageOutput::Result => "result".to_string(),
            };
            println!("stage {}: {} tasks, {kind}, reads {:?}", st.id, st.partitions, st.parents);
        }
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut bar = progress::StageBar::new();
    let spilled = std::sync::Arc::new(local::Spilled::default());
    let batches = local::run_counting(&plan, &config, &spilled, |p| bar.update(p))?;
    bar.finish();
    let (bytes, runs) = (spilled.bytes.load(std::sync::atomic::Ordering::Relaxed), spilled.runs.load(std::sync::atomic::Ordering::Relaxed));

    print_result(&args, &batches, started)?;
    if bytes > 0 {
        eprintln!("spilled {:.1} MB to disk in {runs} runs (over --task-memory-mb {})", bytes as f64 / 1e6, config.task_memory_mb);
    }
    Ok(())
}

#[cfg(feature = "batch")]
fn sql_on_cluster(args: &SqlArgs, server: &str) -> anyhow::Result<()> {
    use millrace_net::batch::client::{Event, run_query};
    let started = std::time::Instant::now();
    let mut bar = progress::StageBar::new();
    let result = run_query(server, &args.query, args.shuffle_partitions, |e| match e {
        Event::Accepted { job, node, shuffle_partitions } => {
            bar.println(&format!(
                "job {} running, driven by node {node} ({server}); {shuffle_partitions} shuffle partitions",
                millrace_net::batch::proto::job_name(job)
            ));
        }
        Event::Progress(p) => bar.update(p),
    });
    bar.finish();
    print_result(args, &result?, started)
}

#[cfg(feature = "batch")]
fn print_result(args: &SqlArgs, batches: &[arrow::array::RecordBatch], started: std::time::Instant) -> anyhow::Result<()> {
    use millrace_net::batch::output;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    match &args.output {
        Some(path) => {
            output::write_file(path, batches)?;
            eprintln!("{rows} rows written to {} in {:.2} s", path.display(), started.elapsed().as_secs_f64());
        }
        None => {
            println!("{}", output::table(batches)?);
            eprintln!("{rows} rows in {:.2} s", started.elapsed().as_secs_f64());
        }
    }
    Ok(())
}

#[cfg(feature = "batch")]
mod progress {
    use std::io::IsTerminal;
    use std::time::Instant;

    use indicatif::{ProgressBar, ProgressStyle};
    use millrace_core::batch::JobProgress;

    /// A bar of tasks done on a terminal; otherwise a status line per
    /// finished stage, so logs of long jobs still show progress.
    pub struct StageBar {
        bar: Option<ProgressBar>,
        stages_done: usize,
        started: Instant,
    }

    impl StageBar {
        pub fn new() -> StageBar {
            let bar = std::io::stderr().is_terminal().then(|| {
                let b = ProgressBar::new(0);
                b.set_style(ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} tasks  {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));
                b
            });
            StageBar { bar, stages_done: 0, started: Instant::now() }
        }

        pub fn update(&mut self, p: &JobProgress) {
            let total: u32 = p.stages.iter().map(|s| s.total).sum();
            let done: u32 = p.stages.iter().map(|s| s.done).sum();
            let finished = p.stages.iter().filter(|s| s.total > 0 && s.done == s.total).count();
            let running: Vec<String> = p.stages.iter().filter(|s| s.running > 0).map(|s| format!("stage {} ({}/{})", s.id, s.done, s.total)).collect();
            match &self.bar {
                Some(b) => {
                    b.set_length(total as u64);
                    b.set_position(done as u64);
                    b.set_message(running.join(", "));
                }
                None => {
                    if finished > self.stages_done {
                        eprintln!("[{:>6.1}s] {finished}/{} stages done, {done}/{total} tasks", self.started.elapsed().as_secs_f64(), p.stages.len());
                    }
                }
            }
            self.stages_done = finished;
        }

        /// A line above the bar (or on its own without a terminal).
        pub fn println(&self, line: &str) {
            match &self.bar {
                Some(b) => b.println(line),
                None => eprintln!("{line}"),
            }
        }

        pub fn finish(&self) {
            if let Some(b) = &self.bar {
                b.finish_and_clear();
            }
        }
    }
}

#[cfg(feature = "batch")]
fn job(cmd: JobCommand) -> anyhow::Result<()> {
    use millrace_core::batch::JobState;
    use millrace_net::batch::client;
    match cmd {
        JobCommand::Status { job, conn } => {
            let status = client::status(&conn.server, job)?;
            let workers: Vec<String> = status.workers.iter().map(|(w, slots)| format!("{w} ({slots} slots)")).collect();
            println!("node {} ({}): live workers {}", status.node, conn.server, if workers.is_empty() { "none".into() } else { workers.join(", ") });
            let jobs = status.jobs;
            if jobs.is_empty() {
                println!("no jobs");
                return Ok(());
            }
            println!("{:<16}  {:<10}  {:>9}  {:<40}  QUERY", "JOB", "STATE", "ELAPSED", "STAGES (tasks done/total)");
            for j in &jobs {
                let stages = j
                    .progress
                    .as_ref()
                    .map(|p| p.stages.iter().map(|s| format!("{}:{}/{}", s.id, s.done, s.total)).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                let state = match &j.state {
                    JobState::Running => "running",
                    JobState::Succeeded => "succeeded",
                    JobState::Failed { .. } => "failed",
                    JobState::Cancelled => "cancelled",
                };
                let query: String = j.query.split_whitespace().collect::<Vec<_>>().join(" ");
                let query = if job.is_none() && query.chars().count() > 60 { format!("{}...", query.chars().take(57).collect::<String>()) } else { query };
                println!("{:<16}  {:<10}  {:>8.1}s  {:<40}  {}", millrace_net::batch::proto::job_name(j.job), state, j.elapsed_ms as f64 / 1000.0, stages, query);
                if let JobState::Failed { reason } = &j.state {
                    println!("{:<16}  {reason}", "");
                }
                if let Some(note) = &j.note {
                    println!("{:<16}  {note}", "");
                }
                if job.is_some()
                    && let Some(p) = &j.progress
                {
                    for s in &p.stages {
                        println!("  stage {}: {}/{} tasks done, {} running, attempt {}", s.id, s.done, s.total, s.running, s.attempt);
                    }
                }
            }
        }
        JobCommand::Cancel { job, conn } => println!("{}", client::cancel(&conn.server, job)?),
    }
    Ok(())
}

#[cfg(feature = "batch")]
fn stream(cmd: StreamCommand) -> anyhow::Result<()> {
    use millrace_net::batch::proto::{StreamInfo, StreamSpec};
    use millrace_net::stream::{client, def};
    let rate = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.1}"));
    let watermark = |w: Option<i64>| w.map_or("-".to_string(), millrace_engine::time::format_rfc3339);
    match cmd {
        StreamCommand::Start { name, sql, trigger, output_mode, watermark, from, max_records_per_batch, retain_batches, conn } => {
            let spec = StreamSpec {
                name,
                sql,
                trigger: def::parse_trigger(&trigger).map_err(anyhow::Error::msg)?,
                output_mode: def::parse_mode(&output_mode).map_err(anyhow::Error::msg)?,
                watermark: watermark.as_deref().map(def::parse_watermark).transpose().map_err(anyhow::Error::msg)?,
                start_at: def::parse_start(&from).map_err(anyhow::Error::msg)?,
                max_records_per_batch,
                retain_batches: Some(retain_batches),
                dataset: None,
            };
            println!("{}", client::start(&conn.server, spec)?);
        }
        StreamCommand::List { conn } => {
            let queries = client::list(&conn.server)?;
            if queries.is_empty() {
                println!("no stream queries");
                return Ok(());
            }
            println!("{:<20}  {:<18}  {:>6}  {:>10}  {:>10}  {:<10}  {:<14}  SQL", "NAME", "STATE", "BATCH", "INPUT/S", "PROCESS/S", "MODE", "TRIGGER");
            for q in &queries {
                let sql: String = q.sql.split_whitespace().collect::<Vec<_>>().join(" ");
                let sql = if sql.chars().count() > 60 { format!("{}...", sql.chars().take(57).collect::<String>()) } else { sql };
                let batch = q.batch.map_or("-".to_string(), |b| b.to_string());
                println!(
                    "{:<20}  {:<18}  {:>6}  {:>10}  {:>10}  {:<10}  {:<14}  {sql}",
                    q.name, q.state, batch, rate(q.input_rows_per_sec), rate(q.processed_rows_per_sec), q.output_mode, q.trigger
                );
            }
        }
        StreamCommand::Describe { name, conn } => {
            let q: StreamInfo = client::describe(&conn.server, &name)?;
            let sql: String = q.sql.split_whitespace().collect::<Vec<_>>().join(" ");
            println!("query:            {}", q.name);
            println!("sql:              {sql}");
            println!("node:             {}", q.owner);
            println!("state:            {}", q.state);
            if let Some(e) = &q.error {
                println!("error:            {e}");
            }
            if let Some(r) = &q.retrying {
                println!("retrying:         {r}");
            }
            println!("trigger:          {}", q.trigger);
            println!("output mode:      {}", q.output_mode);
            println!("batch:            {}", q.batch.map_or("- (none committed yet)".to_string(), |b| b.to_string()));
            println!("input rows/s:     {}", rate(q.input_rows_per_sec));
            println!("processed rows/s: {}", rate(q.processed_rows_per_sec));
            println!("processing time:  {}", q.processing_ms.map_or("-".to_string(), |ms| format!("{ms} ms")));
            println!("watermark:        {}", watermark(q.watermark));
            if !q.lag.is_empty() {
                println!();
                println!("{:<30}  {:>9}  {:>8}", "TOPIC", "PARTITION", "LAG");
                for (topic, p, lag) in &q.lag {
                    println!("{topic:<30}  {p:>9}  {lag:>8}");
                }
            }
            if !q.recent.is_empty() {
                println!();
                println!("{:>6}  {:>10}  {:>10}  {:>10}", "BATCH", "INPUT", "OUTPUT", "TIME");
                for (b, input, output, ms) in &q.recent {
                    println!("{b:>6}  {input:>10}  {output:>10}  {:>8} ms", ms);
                }
            }
        }
        StreamCommand::Stop { name, conn } => println!("{}", client::stop(&conn.server, &name)?),
    }
    Ok(())
}

/// The settings of `millrace connect start`, checked here so a mistake is
/// one clear line before anything reaches the node.
#[cfg(feature = "batch")]
#[allow(clippy::too_many_arguments)]
fn connect_config(
    kind: &str,
    path: Option<String>,
    format: Option<String>,
    generator: &str,
    seed: u64,
    count: Option<u64>,
    roll: (u64, u64, &str),
    from: &str,
) -> anyhow::Result<millrace_core::connect::ConnectorConfig> {
    use millrace_core::connect::{ConnectorConfig, ConnectorKind, GeneratorKind, LineFormat, SinkFormat};
    let kind = ConnectorKind::parse(kind).map_err(anyhow::Error::msg)?;
    let need_path = |what: &str| -> anyhow::Result<String> {
        let Some(p) = &path else { bail!("a {} needs --path ({what})", kind.name()) };
        // The node resolves nothing against its own directory.
        let abs = std::path::absolute(p).with_context(|| format!("bad path {p:?}"))?;
        Ok(abs.display().to_string())
    };
    Ok(match kind {
        ConnectorKind::FileSource => ConnectorConfig::FileSource {
            path: need_path("a file or a folder of files to tail")?,
            format: LineFormat::parse(format.as_deref().unwrap_or("lines")).map_err(anyhow::Error::msg)?,
        },
        ConnectorKind::FileSink => {
            let roll_ms = millrace_net::stream::def::parse_trigger(roll.2)
                .ok()
                .and_then(|t| match t {
                    millrace_core::stream::Trigger::Interval { interval_ms } if interval_ms > 0 => Some(interval_ms),
                    _ => None,
                })
                .ok_or_else(|| anyhow::anyhow!("bad --roll-after {:?}: write a duration (500ms, 1s, 2m)", roll.2))?;
            if roll.0 == 0 || roll.1 == 0 {
                bail!("--roll-records and --roll-bytes must be at least 1");
            }
            ConnectorConfig::FileSink {
                path: need_path("the folder to write files into")?,
                format: SinkFormat::parse(format.as_deref().unwrap_or("json")).map_err(anyhow::Error::msg)?,
                roll_records: roll.0,
                roll_bytes: roll.1,
                roll_ms,
                from_earliest: millrace_net::stream::def::parse_start(from).map_err(anyhow::Error::msg)? == millrace_core::stream::StartAt::Earliest,
            }
        }
        ConnectorKind::Generator => {
            if path.is_some() || format.is_some() {
                bail!("a generator takes no --path or --format (it makes its records: --kind, --seed, --count, --rate)");
            }
            ConnectorConfig::Generator { seed, kind: GeneratorKind::parse(generator).map_err(anyhow::Error::msg)?, count }
        }
    })
}

#[cfg(feature = "batch")]
fn connect(cmd: ConnectCommand) -> anyhow::Result<()> {
    use millrace_net::batch::proto::ConnectSpec;
    use millrace_net::connect::client;
    match cmd {
        ConnectCommand::Start { name, kind, topic, path, format, rate, generator, seed, count, roll_records, roll_bytes, roll_after, from, conn } => {
            let config = connect_config(&kind, path, format, &generator, seed, count, (roll_records, roll_bytes, &roll_after), &from)?;
            if rate == Some(0) {
                bail!("--rate must be at least 1 record per second");
            }
            if rate.is_some() && !config.kind().is_source() {
                bail!("--rate is for sources");
            }
            println!("{}", client::start(&conn.server, ConnectSpec { name, topic, config, rate })?);
        }
        ConnectCommand::List { conn } => {
            let all = client::list(&conn.server)?;
            if all.is_empty() {
                println!("no connectors");
                return Ok(());
            }
            println!("{:<20}  {:<12}  {:<20}  {:<10}  {:>10}  {:>9}  WHAT", "NAME", "TYPE", "TOPIC", "STATE", "RECORDS", "RECORDS/S");
            for c in &all {
                let rate = c.records_per_sec.map_or("-".to_string(), |r| format!("{r:.1}"));
                println!("{:<20}  {:<12}  {:<20}  {:<10}  {:>10}  {:>9}  {}", c.name, c.kind, c.topic, c.state, c.records, rate, c.summary);
            }
        }
        ConnectCommand::Describe { name, conn } => {
            let c = client::describe(&conn.server, &name)?;
            println!("connector:    {}", c.name);
            println!("type:         {}", c.kind);
            println!("topic:        {}", c.topic);
            println!("what:         {}", c.summary);
            println!("node:         {}", c.owner);
            println!("state:        {}", c.state);
            if let Some(e) = &c.error {
                println!("error:        {e}");
            }
            if let Some(r) = &c.retrying {
                println!("retrying:     {r}");
            }
            println!("records:      {}", c.records);
            println!("records/s:    {}", c.records_per_sec.map_or("-".to_string(), |r| format!("{r:.1}")));
            println!("position:     {}", c.position);
            println!("skipped:      {}", c.skipped);
            if let Some(w) = &c.last_warning {
                println!("last warning: {w}");
            }
        }
        ConnectCommand::Stop { name, conn } => println!("{}", client::stop(&conn.server, &name)?),
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => ServeConfig::from_toml_file(path)?,
        None => ServeConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if args.advertised.is_some() {
        config.advertised = args.advertised;
    }
    if let Some(id) = args.node_id {
        config.broker.node_id = id;
    }
    if !args.voters.is_empty() {
        config.voters = args.voters;
    }
    if args.peer_listen.is_some() {
        config.peer_listen = args.peer_listen;
    }
    if args.batch_listen.is_some() {
        config.batch_listen = args.batch_listen;
    }
    if let Some(slots) = args.batch_slots {
        config.batch.slots = slots;
    }
    let _ = DEFAULT_DATA_DIR;
    let server = Server::bind(config).await?;
    if let Err(e) = server.run(shutdown_signal()).await {
        // Status 70 (EX_SOFTWARE): a supervisor should restart the node;
        // recovery then keeps exactly what was durable.
        tracing::error!("{e:#}");
        std::process::exit(70);
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        // Polled in order: tokio's random branch order would draw from a
        // process-global seed and break replay in the simulator.
        biased;
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

async fn topic(cmd: TopicCommand) -> anyhow::Result<()> {
    match cmd {
        TopicCommand::Create { name, partitions, configs, conn } => {
            let pairs = config_pairs(&configs)?;
            let mut client = Client::connect_routed(&conn.bootstrap).await?;
            client.create_topic(&name, partitions, &pairs).await?;
            println!("created topic {name}");
        }
        TopicCommand::Alter { name, configs, delete, conn } => {
            if configs.is_empty() && delete.is_empty() {
                bail!("nothing to change: give --config key=value or --delete-config key");
            }
            let mut changes: Vec<(String, Option<String>)> =
                config_pairs(&configs)?.into_iter().map(|(k, v)| (k, Some(v))).collect();
            changes.extend(delete.into_iter().map(|k| (k, None)));
            let mut client = Client::connect_routed(&conn.bootstrap).await?;
            client.alter_topic_configs(&name, &changes).await?;
            println!("altered topic {name}");
        }
        TopicCommand::List { conn } => {
            let mut client = Client::connect_routed(&conn.bootstrap).await?;
            for t in client.metadata(None, false).await? {
                println!("{}", t.name);
            }
        }
        TopicCommand::Describe { name, conn } => {
            let mut client = Client::connect_routed(&conn.bootstrap).await?;
            let meta = client.metadata(Some(&[&name]), false).await?;
            let t = meta.first().context("no metadata returned")?;
            println!("topic {}  id {}  partitions {}", t.name, t.topic_id, t.partitions.len());
            let replicas = client.replicas(&name).await?;
            let ids = |v: &[i32]| v.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
            println!("{:>9}  {:>14}  {:>14}  {:>6}  {:>5}  {:<12}  isr", "partition", "start offset", "end offset", "leader", "epoch", "replicas");
            for &p in &t.partitions {
                let start = client.list_offset(&name, p, -2).await?;
                let end = client.list_offset(&name, p, -1).await?;
                let r = replicas.iter().find(|r| r.partition == p);
                let (leader, epoch) = r.map_or((-1, -1), |r| (r.leader, r.leader_epoch));
                let (reps, isr) = r.map_or((String::new(), String::new()), |r| (ids(&r.replicas), ids(&r.isr)));
                println!("{p:>9}  {start:>14}  {end:>14}  {leader:>6}  {epoch:>5}  {reps:<12}  {isr}");
            }
            for (k, v, is_default) in client.describe_topic_configs(&name).await? {
                println!("config {k}={v}{}", if is_default { " (default)" } else { "" });
            }
        }
        TopicCommand::Delete { name, conn } => {
            let mut client = Client::connect_routed(&conn.bootstrap).await?;
            client.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

/// `key=value` arguments as pairs.
fn config_pairs(configs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    configs
        .iter()
        .map(|c| {
            c.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).with_context(|| format!("config {c:?} is not key=value"))
        })
        .collect()
}

async fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let compression = Compression::from_name(&args.compression)
        .with_context(|| format!("unknown compression {:?}; use none, gzip, snappy, lz4 or zstd", args.compression))?;
    let acks = match args.acks.as_str() {
        "all" | "-1" => -1,
        "1" => 1,
        "0" => 0,
        other => bail!("acks must be 0, 1 or all, not {other:?}"),
    };
    let config = ProducerConfig {
        acks,
        compression,
        idempotent: !args.no_idempotence && acks == -1,
        batch_records: args.batch_records.max(1),
        retries: 5,
    };
    let mut producer = Producer::new(&args.conn.bootstrap, &args.topic, config).await?;
    let stdin = std::io::stdin();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    for line in stdin.lock().lines() {
        let line = line?;
        let (key, value) = match &args.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (Some(k.as_bytes().to_vec()), v.as_bytes().to_vec()),
                None => (None, line.into_bytes()),
            },
            None => (None, line.into_bytes()),
        };
        let record = Record { offset: 0, timestamp: now, key, value: Some(value), headers: Vec::<Header>::new() };
        producer.send(args.partition, record).await?;
    }
    producer.flush().await?;
    eprintln!("produced {} records to {}", producer.acked, args.topic);
    Ok(())
}

async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let start = match args.offset.as_str() {
        "earliest" | "beginning" => StartAt::Earliest,
        "latest" | "end" => StartAt::Latest,
        n => StartAt::Offset(n.parse().with_context(|| format!("offset must be earliest, latest or a number, not {n:?}"))?),
    };
    let mut client = Client::connect_routed(&args.conn.bootstrap).await?;
    let partitions = match args.partition {
        Some(p) => vec![p],
        None => client.metadata(Some(&[&args.topic]), false).await?.first().map(|t| t.partitions.clone()).unwrap_or_default(),
    };
    let mut readers = Vec::new();
    for p in partitions {
        readers.push(PartitionReader::open(&mut client, &args.topic, p, start).await?);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut count = 0u64;
    let wait = if readers.len() > 1 { 100 } else { 1000 };
    loop {
        let mut idle = true;
        for r in readers.iter_mut() {
            while let Some(rec) = r.next(&mut client, wait).await? {
                idle = false;
                print_record(&mut out, &rec, args.print_key)?;
                count += 1;
                if args.max_messages.is_some_and(|m| count >= m) {
                    out.flush()?;
                    return Ok(());
                }
                if r.at_end() {
                    break;
                }
            }
        }
        out.flush()?;
        if idle && args.exit_at_end && readers.iter().all(|r| r.at_end()) {
            return Ok(());
        }
    }
}

async fn group(cmd: GroupCommand) -> anyhow::Result<()> {
    match cmd {
        GroupCommand::List { conn } => {
            // One coordinator holds every group (the offsets topic has one
            // partition): any group id finds it.
            let mut client = Client::connect_to_coordinator(&conn.bootstrap, "millrace-cli").await?;
            println!("{:<30}  {:<20}  PROTOCOL TYPE", "GROUP", "STATE");
            for (id, protocol_type, state) in client.list_groups().await? {
                println!("{id:<30}  {state:<20}  {protocol_type}");
            }
        }
        GroupCommand::Describe { group, conn } => {
            let mut client = Client::connect_to_coordinator(&conn.bootstrap, &group).await?;
            let d = client.describe_group(&group).await?;
            println!("group {}  state {}  protocol {}  members {}", d.group, d.state, d.protocol, d.members.len());
            let committed = client.fetch_offsets(&group, None).await?;
            let mut rows: Vec<(String, i32)> = committed.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
            for m in &d.members {
                rows.extend(m.assignment.iter().cloned());
            }
            rows.sort();
            rows.dedup();
            println!(
                "{:<24} {:>9} {:>16} {:>14} {:>8}  {:<40} HOST/CLIENT-ID",
                "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "CONSUMER-ID"
            );
            for (topic, partition) in rows {
                let current = committed.iter().find(|(t, p, _)| *t == topic && *p == partition).map_or(-1, |c| c.2);
                let end = client.list_offset(&topic, partition, -1).await.ok();
                let lag = match (current, end) {
                    (c, Some(e)) if c >= 0 => (e - c).max(0).to_string(),
                    _ => "-".into(),
                };
                let owner = d.members.iter().find(|m| m.assignment.iter().any(|(t, p)| *t == topic && *p == partition));
                println!(
                    "{:<24} {:>9} {:>16} {:>14} {:>8}  {:<40} {}",
                    topic,
                    partition,
                    if current >= 0 { current.to_string() } else { "-".into() },
                    end.map_or("-".into(), |e| e.to_string()),
                    lag,
                    owner.map_or("-", |m| m.member_id.as_str()),
                    owner.map_or("-".to_string(), |m| format!("{}/{}", m.client_host, m.client_id)),
                );
            }
        }
        GroupCommand::Delete { group, conn } => {
            let mut client = Client::connect_to_coordinator(&conn.bootstrap, &group).await?;
            client.delete_group(&group).await?;
            println!("deleted group {group}");
        }
    }
    Ok(())
}

/// `consume --group`: a group member that prints what it reads, commits
/// whenever it has caught up, and commits and leaves the group on exit.
async fn consume_group(args: ConsumeArgs) -> anyhow::Result<()> {
    use millrace_net::client::group_consumer::{GroupConsumer, GroupConsumerConfig};
    let group = args.group.clone().expect("checked by the caller");
    let mut config = GroupConsumerConfig::new(&group, &[&args.topic]);
    config.reset = match args.offset.as_str() {
        "earliest" | "beginning" => StartAt::Earliest,
        "latest" | "end" => StartAt::Latest,
        other => bail!("with --group, --offset must be earliest or latest (where to start without a committed offset), not {other:?}"),
    };
    if args.partition.is_some() {
        bail!("--partition and --group exclude each other: the group assigns partitions");
    }
    let mut consumer = GroupConsumer::connect_routed(&args.conn.bootstrap, config).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut count = 0u64;
    let mut idle_polls = 0;
    let result: anyhow::Result<()> = async {
        loop {
            match consumer.poll(500).await? {
                Some((_, _, rec)) => {
                    idle_polls = 0;
                    print_record(&mut out, &rec, args.print_key)?;
                    count += 1;
                    if args.max_messages.is_some_and(|m| count >= m) {
                        return Ok(());
                    }
                }
                None => {
                    out.flush()?;
                    // Commit while idle too, so lag shows what was read.
                    let _ = consumer.commit().await;
                    idle_polls += 1;
                    if args.exit_at_end && idle_polls >= 3 {
                        return Ok(());
                    }
                }
            }
        }
    }
    .await;
    out.flush()?;
    drop(out);
    consumer.close().await?;
    eprintln!("consumed {count} records in group {group}");
    result
}

/// One record as a line: the value, or key TAB value.
fn print_record(out: &mut impl Write, rec: &Record, print_key: bool) -> std::io::Result<()> {
    if print_key {
        out.write_all(rec.key.as_deref().unwrap_or_default())?;
        out.write_all(b"\t")?;
    }
    out.write_all(rec.value.as_deref().unwrap_or_default())?;
    out.write_all(b"\n")
}
