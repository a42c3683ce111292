//! Workload clients: idempotent producers and tailing readers built on
//! Millrace's own Kafka client, recording what they do in the history.

use std::time::Duration;

use bytes::Bytes;
use millrace_core::records::{self, BatchBuilder, Compression, Record};
use millrace_net::client::{Client, ClientError};
use tokio::time::{Instant, timeout};

use crate::history::{EventKind, History, OpId};

pub const TOPIC: &str = "chaos";
/// A request that takes longer than this is treated as a broken connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct Ctx {
    pub history: History,
    pub start: Instant,
    pub broker_addr: String,
    pub node: usize,
    pub partitions: i32,
    /// Producers start no new operation after this instant.
    pub stop_at: Instant,
    pub seed: u64,
}

impl Ctx {
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn record(&self, kind: EventKind) {
        self.history.record(self.now_ms(), kind);
    }
}

/// Longest a connection attempt may take (madsim's TCP gives up by itself
/// after about 10 s on a dead or cut link).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

async fn connect(ctx: &Ctx) -> Client {
    loop {
        if let Ok(Ok(c)) = timeout(CONNECT_TIMEOUT, Client::connect(&ctx.broker_addr)).await {
            return c;
        }
        tokio::time::sleep(BACKOFF).await;
    }
}

/// A client connection that is replaced, never dropped, when it fails.
///
/// madsim hands a freed client port out again at once; a late message of
/// a dropped connection then lands on the new connection with the same
/// addresses (the real world's TIME_WAIT prevents this). Keeping replaced
/// connections open until the client ends keeps every port unique.
struct Conn {
    client: Client,
    retired: Vec<Client>,
}

impl Conn {
    async fn open(ctx: &Ctx) -> Self {
        Self { client: connect(ctx).await, retired: Vec::new() }
    }

    async fn replace(&mut self, ctx: &Ctx) {
        tokio::time::sleep(BACKOFF).await;
        let fresh = connect(ctx).await;
        self.retired.push(std::mem::replace(&mut self.client, fresh));
    }
}

/// Creates the topic, retrying until the broker answers.
pub async fn create_topic(ctx: &Ctx) {
    let mut c = Conn::open(ctx).await;
    loop {
        match timeout(REQUEST_TIMEOUT, c.client.create_topic(TOPIC, ctx.partitions, &[])).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) if e.code() == Some(36) => return, // TOPIC_ALREADY_EXISTS
            _ => c.replace(ctx).await,
        }
    }
}

/// A small deterministic generator for the client's own choices.
struct Draw(u64);

impl Draw {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// An idempotent producer: one batch in flight, retried with the same
/// sequence numbers until it is acknowledged or definitely refused.
pub async fn producer(ctx: Ctx, client_id: u32) {
    let mut draw = Draw(ctx.seed ^ (u64::from(client_id) << 32));
    let mut conn = Conn::open(&ctx).await;
    let mut identity: Option<(i64, i16)> = None;
    let mut next_seq = vec![0i32; ctx.partitions as usize];
    let mut op_seq = 0u64;
    let mut value_seq = 0u64;
    while Instant::now() < ctx.stop_at {
        if identity.is_none() {
            match timeout(REQUEST_TIMEOUT, conn.client.init_producer_id()).await {
                Ok(Ok(id)) => identity = Some(id),
                _ => {
                    conn.replace(&ctx).await;
                    continue;
                }
            }
        }
        let (pid, epoch) = identity.expect("set above");
        let partition = draw.next(ctx.partitions as u64) as i32;
        let count = 1 + draw.next(5) as usize;
        let values: Vec<String> = (0..count)
            .map(|_| {
                value_seq += 1;
                format!("n{}c{}v{}", ctx.node, client_id, value_seq)
            })
            .collect();
        op_seq += 1;
        let op: OpId = (client_id, op_seq);
        let seq = next_seq[partition as usize];
        let mut b = BatchBuilder::new(if draw.next(2) == 0 { Compression::None } else { Compression::Lz4 });
        for v in &values {
            b.push(Record { timestamp: ctx.now_ms() as i64, value: Some(v.as_bytes().to_vec()), ..Record::default() });
        }
        let batch = Bytes::from(b.idempotent(pid, epoch, seq).build());
        ctx.record(EventKind::Invoke { node: ctx.node, op, partition, values: values.clone() });
        let mut attempts = 0;
        loop {
            attempts += 1;
            match timeout(REQUEST_TIMEOUT, conn.client.produce(TOPIC, partition, batch.clone(), -1)).await {
                Ok(Ok(base_offset)) => {
                    ctx.record(EventKind::Ok { op, base_offset });
                    next_seq[partition as usize] = seq.wrapping_add(count as i32) & i32::MAX;
                    break;
                }
                Ok(Err(ClientError::Kafka { name, .. })) => {
                    // A refusal is definite only if no earlier attempt of
                    // this batch may still be in flight (a late one can
                    // still land); otherwise the outcome is unknown.
                    if attempts == 1 {
                        ctx.record(EventKind::Fail { op, error: name });
                    } else {
                        ctx.record(EventKind::Unknown { op });
                    }
                    // Its sequence numbers must never carry other data, so
                    // the producer starts a new session (as Kafka's bumps
                    // its epoch after a failed batch).
                    identity = None;
                    next_seq.iter_mut().for_each(|s| *s = 0);
                    break;
                }
                other => {
                    tracing::debug!(client_id, ?op, outcome = ?other.map(|r| r.map(|_| ())), "produce outcome unknown; retrying");
                    // Unknown outcome: retry the same batch (same sequence)
                    // on a new connection, as Kafka's producer does.
                    if Instant::now() >= ctx.stop_at + Duration::from_secs(30) {
                        ctx.record(EventKind::Unknown { op });
                        return;
                    }
                    conn.replace(&ctx).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5 + draw.next(40))).await;
    }
}

/// Reads one partition from `offset` up to the high watermark once.
/// Returns the records and the high watermark seen.
async fn read_once(client: &mut Client, ctx: &Ctx, partition: i32, offset: i64) -> Result<(Vec<(i64, String)>, i64), String> {
    let f = match timeout(REQUEST_TIMEOUT, client.fetch(TOPIC, partition, offset, 200, 64 * 1024)).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("timeout".into()),
    };
    let mut out = Vec::new();
    for batch in records::split_batches(&f.records) {
        let decoded = batch.map_err(|e| e.to_string()).and_then(|(_, b)| records::decode_records(b).map_err(|e| e.to_string()));
        match decoded {
            Ok((_, recs)) => {
                for r in recs.into_iter().filter(|r| r.offset >= offset) {
                    let v = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned();
                    out.push((r.offset, v));
                }
            }
            Err(e) => {
                ctx.record(EventKind::CorruptFetch { node: ctx.node, partition, offset, error: e.clone() });
                return Err(format!("corrupt batch: {e}"));
            }
        }
    }
    Ok((out, f.high_watermark))
}

/// Tails every partition, recording what it reads.
pub async fn reader(ctx: Ctx, reader_id: u32) {
    let mut conn = Conn::open(&ctx).await;
    let mut next = vec![0i64; ctx.partitions as usize];
    while Instant::now() < ctx.stop_at {
        for p in 0..ctx.partitions {
            match read_once(&mut conn.client, &ctx, p, next[p as usize]).await {
                Ok((recs, _)) if !recs.is_empty() => {
                    next[p as usize] = recs.last().expect("non-empty").0 + 1;
                    ctx.record(EventKind::Read { node: ctx.node, reader: reader_id, partition: p, records: recs });
                }
                Ok(_) => {}
                Err(_) => conn.replace(&ctx).await,
            }
        }
    }
}

/// After healing: reads every partition up to its high watermark, within
/// `bound`. Records `Final` or `FinalFailed` per partition.
pub async fn final_read(ctx: Ctx, bound: Duration) {
    let deadline = Instant::now() + bound;
    let mut client: Option<Client> = None;
    // Replaced connections stay open until the end (see `Conn`).
    let mut retired: Vec<Client> = Vec::new();
    for p in 0..ctx.partitions {
        let mut records = Vec::new();
        let mut offset = 0;
        let mut last_error = String::from("no answer");
        let done = loop {
            if Instant::now() >= deadline {
                break None;
            }
            let c = match client.as_mut() {
                Some(c) => c,
                None => match timeout(deadline.saturating_duration_since(Instant::now()), Client::connect(&ctx.broker_addr)).await {
                    Ok(Ok(c)) => client.insert(c),
                    _ => {
                        tokio::time::sleep(BACKOFF).await;
                        continue;
                    }
                },
            };
            match read_once(c, &ctx, p, offset).await {
                Ok((recs, hw)) => {
                    if let Some(last) = recs.last() {
                        offset = last.0 + 1;
                    }
                    records.extend(recs);
                    if offset >= hw {
                        break Some(hw);
                    }
                }
                Err(e) => {
                    last_error = e;
                    retired.extend(client.take());
                    tokio::time::sleep(BACKOFF).await;
                }
            }
        };
        match done {
            Some(high_watermark) => ctx.record(EventKind::Final { node: ctx.node, partition: p, high_watermark, records }),
            None => ctx.record(EventKind::FinalFailed { node: ctx.node, partition: p, error: last_error }),
        }
    }
}
