//! Group consumers for the `groups` suite: members of one consumer group
//! that join, read, commit, leave, crash (vanish without leaving) and stall
//! (stop heartbeating past their session timeout) while the broker faults.
//! After the producers stop they drain: behave well until every record is
//! consumed and committed. Everything they learn goes into the history.

use std::time::Duration;

use millrace_net::client::consumer::StartAt;
use millrace_net::client::group_consumer::{GroupConsumer, GroupConsumerConfig};
use millrace_net::client::Client;
use tokio::time::{Instant, timeout};

use crate::history::EventKind;
use crate::workload::{Ctx, TOPIC};

pub const GROUP: &str = "chaos-group";
const SESSION_TIMEOUT_MS: i32 = 6_000;
const REBALANCE_TIMEOUT_MS: i32 = 10_000;
/// A poll may include a whole rebalance; longer than this is a broken link.
const POLL_TIMEOUT: Duration = Duration::from_millis(REBALANCE_TIMEOUT_MS as u64 + 5_000);
const COMMIT_EVERY: Duration = Duration::from_millis(300);

/// A small deterministic generator for the consumer's own choices.
struct Draw(u64);

impl Draw {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn config(consumer: u32) -> GroupConsumerConfig {
    let mut c = GroupConsumerConfig::new(GROUP, &[TOPIC]);
    c.session_timeout_ms = SESSION_TIMEOUT_MS;
    c.rebalance_timeout_ms = REBALANCE_TIMEOUT_MS;
    c.heartbeat_interval_ms = 1_000;
    c.reset = StartAt::Earliest;
    // Consumer 0 is a static member: its restarts keep its partitions.
    if consumer == 0 {
        c.instance_id = Some("static-0".into());
    }
    c
}

/// One consumer slot: a run of incarnations until `drain_until`.
pub async fn group_consumer(ctx: Ctx, consumer: u32, drain_until: Instant) {
    let mut draw = Draw(ctx.seed ^ 0x6772_6f75 ^ (u64::from(consumer) << 40));
    // Consumers that crashed stay here, connections open, until the end
    // (madsim reuses a freed port at once; see workload::Links).
    let mut graveyard: Vec<GroupConsumer> = Vec::new();
    while Instant::now() < drain_until {
        let Ok(Ok(mut c)) = timeout(Duration::from_secs(30), GroupConsumer::connect(&ctx.broker_addr, config(consumer))).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let draining = Instant::now() >= ctx.stop_at;
        // While faults may still happen, an incarnation lives 2-15 s and
        // may stall; while draining it lives to the end and behaves.
        let end = if draining { drain_until } else { (Instant::now() + Duration::from_millis(2_000 + draw.next(13_000))).min(drain_until) };
        let stall_at = (!draining && draw.next(4) == 0).then(|| Instant::now() + Duration::from_millis(draw.next(3_000)));
        let outcome = run_incarnation(&ctx, consumer, &mut c, end, stall_at).await;
        match outcome {
            Ok(()) if Instant::now() >= drain_until || draw.next(2) == 0 => {
                // A clean exit: commit and leave.
                let _ = timeout(Duration::from_secs(5), c.close()).await;
            }
            // A crash, or a broken connection: vanish without leaving.
            _ => graveyard.push(c),
        }
        tokio::time::sleep(Duration::from_millis(50 + draw.next(500))).await;
    }
    drop(graveyard);
}

async fn run_incarnation(ctx: &Ctx, consumer: u32, c: &mut GroupConsumer, end: Instant, stall_at: Option<Instant>) -> Result<(), ()> {
    let mut stalled = false;
    let mut last_commit = Instant::now();
    let mut dirty = false;
    while Instant::now() < end {
        if let Some(at) = stall_at
            && !stalled
            && Instant::now() >= at
        {
            // Stop heartbeating past the session timeout: the group must
            // move on without us, and our later commits must be refused.
            stalled = true;
            tokio::time::sleep(Duration::from_millis(SESSION_TIMEOUT_MS as u64 + 2_000)).await;
            // Like a process waking from a long pause, it first commits
            // what it had read, before it learns it was fenced: the
            // coordinator must refuse it, as others own its partitions now.
            commit(ctx, consumer, c).await?;
        }
        let join_started_ms = ctx.now_ms();
        match timeout(POLL_TIMEOUT, c.ensure_joined()).await {
            Err(_) => return Err(()),
            Ok(Err(e)) if e.code().is_none() => return Err(()),
            Ok(Err(_)) => {
                // A Kafka error (rebalance, fencing, a commit in flight):
                // try again shortly.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Ok(Ok(None)) => {}
            Ok(Ok(Some(a))) => ctx.history.record(
                ctx.now_ms(),
                EventKind::GroupAssigned {
                    node: ctx.node,
                    consumer,
                    member: a.member_id,
                    instance: config(consumer).instance_id,
                    generation: a.generation,
                    partitions: a.partitions.iter().map(|(_, p)| *p).collect(),
                    positions: a.positions.into_iter().map(|(_, p, o)| (p, o)).collect(),
                    join_started_ms,
                },
            ),
        }
        let polled = match timeout(POLL_TIMEOUT, c.poll(100)).await {
            Ok(r) => r,
            Err(_) => return Err(()),
        };
        match polled {
            Ok(Some(_)) => dirty = true,
            Ok(None) => {
                // Caught up: commit what we read, so lag reaches zero.
                if dirty || last_commit.elapsed() >= COMMIT_EVERY {
                    commit(ctx, consumer, c).await?;
                    last_commit = Instant::now();
                    dirty = false;
                }
            }
            Err(e) if e.code().is_some() => {
                // A Kafka error (rebalance, fencing, coordinator busy): the
                // consumer rejoins on its next poll.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => return Err(()),
        }
        if dirty && last_commit.elapsed() >= COMMIT_EVERY {
            commit(ctx, consumer, c).await?;
            last_commit = Instant::now();
            dirty = false;
        }
    }
    commit(ctx, consumer, c).await
}

async fn commit(ctx: &Ctx, consumer: u32, c: &mut GroupConsumer) -> Result<(), ()> {
    let Some(m) = c.membership().cloned() else { return Ok(()) };
    let invoked_ms = ctx.now_ms();
    match timeout(Duration::from_secs(5), c.commit()).await {
        Ok(Ok(offsets)) if !offsets.is_empty() => {
            let offsets = offsets.into_iter().map(|(_, p, o)| (p, o)).collect();
            ctx.history.record(
                ctx.now_ms(),
                EventKind::GroupCommitted { node: ctx.node, invoked_ms, consumer, member: m.member_id, generation: m.generation, offsets },
            );
            Ok(())
        }
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.code().is_some() => Ok(()),
        _ => Err(()),
    }
}

/// Reads the group's committed offsets every half second, so a commit
/// that a restart loses shows even when its member carries on from its own
/// position and nobody rejoins.
pub async fn observer(ctx: Ctx, until: Instant) {
    let mut retired: Vec<Client> = Vec::new();
    let mut client: Option<Client> = None;
    let parts: Vec<(String, i32)> = (0..ctx.partitions).map(|p| (TOPIC.to_string(), p)).collect();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let c = match client.as_mut() {
            Some(c) => c,
            None => match timeout(Duration::from_secs(5), Client::connect(&ctx.broker_addr)).await {
                Ok(Ok(c)) => client.insert(c),
                _ => continue,
            },
        };
        let invoked_ms = ctx.now_ms();
        match timeout(Duration::from_secs(2), c.fetch_offsets(GROUP, Some(&parts))).await {
            Ok(Ok(offsets)) => {
                let committed = offsets.into_iter().map(|(_, p, o)| (p, o)).collect();
                ctx.history.record(ctx.now_ms(), EventKind::GroupObserved { node: ctx.node, invoked_ms, committed });
            }
            // A Kafka error (a commit being written): ask again later.
            Ok(Err(e)) if e.code().is_some() => {}
            _ => retired.extend(client.take()),
        }
    }
}

/// After every consumer stopped: the group's committed offsets.
pub async fn final_offsets(ctx: Ctx, bound: Duration) {
    let deadline = Instant::now() + bound;
    let mut retired: Vec<Client> = Vec::new();
    let mut last_error = String::from("no answer");
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut client = match timeout(left, Client::connect(&ctx.broker_addr)).await {
            Ok(Ok(c)) => c,
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let parts: Vec<(String, i32)> = (0..ctx.partitions).map(|p| (TOPIC.to_string(), p)).collect();
        match timeout(Duration::from_secs(2), client.fetch_offsets(GROUP, Some(&parts))).await {
            Ok(Ok(offsets)) => {
                let committed = offsets.into_iter().map(|(_, p, o)| (p, o)).collect();
                ctx.history.record(ctx.now_ms(), EventKind::GroupFinal { node: ctx.node, committed });
                return;
            }
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = "timeout".into(),
        }
        retired.push(client);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ctx.history.record(ctx.now_ms(), EventKind::GroupFinalFailed { node: ctx.node, error: last_error });
}
