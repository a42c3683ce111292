//! The task that owns the broker machine: it turns commands from
//! connections and timer expiries into inputs, and executes the effects.
//!
//! Group commit falls out of the loop's shape: it takes every command
//! already queued before answering `SyncNeeded`, so one fsync covers all
//! the produce requests that arrived while the previous one ran.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use millrace_core::broker::cluster::{FetchOutcome, ReplicaFetchReply};
use millrace_core::broker::{Broker, Effect, Input, PeerMessage, Request, RequestId, Response};
use millrace_core::storage::Storage;
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::peer::{Payload, PeerTransport};

/// Cluster mode: the transport to the other nodes and what they send.
pub struct Peers {
    pub transport: PeerTransport<PeerMessage>,
    pub inbox: mpsc::Receiver<(u64, PeerMessage)>,
}

/// A replicated batch travels as its frame's payload: from the leader's
/// memory to the socket, and from the follower's receive buffer to its
/// append, without a copy through bincode on either side.
impl Payload for PeerMessage {
    fn take_payload(&mut self) -> Option<Bytes> {
        match self {
            PeerMessage::FetchReply(ReplicaFetchReply { outcome: FetchOutcome::Data { records, .. }, .. }) => {
                Some(std::mem::take(records))
            }
            _ => None,
        }
    }

    fn put_payload(&mut self, payload: Bytes) -> Result<(), Bytes> {
        match self {
            PeerMessage::FetchReply(ReplicaFetchReply { outcome: FetchOutcome::Data { records, .. }, .. }) if records.is_empty() => {
                *records = payload;
                Ok(())
            }
            _ => Err(payload),
        }
    }
}

/// Upper bound of commands taken per loop turn (bounded work per turn).
const MAX_BURST: usize = 4096;

pub enum Command {
    Request { id: RequestId, request: Request, reply: oneshot::Sender<Response> },
    Disconnected { conn: u64 },
    /// Make everything durable, then stop; answered when done.
    Shutdown { done: oneshot::Sender<()> },
}

/// Runs until shutdown (Ok) or a fatal storage failure (Err with the reason:
/// the node must stop without acknowledging anything more).
pub async fn run<S: Storage>(
    mut broker: Broker<S>,
    mut commands: mpsc::Receiver<Command>,
    clock: Clock,
    peers: Option<Peers>,
) -> Result<(), String> {
    let mut waiting: HashMap<RequestId, oneshot::Sender<Response>> = HashMap::new();
    let mut timers: BTreeSet<i64> = BTreeSet::new();
    let mut out = Vec::new();
    let (transport, mut inbox) = match peers {
        Some(p) => (Some(p.transport), Some(p.inbox)),
        None => (None, None),
    };
    let transport = transport.as_ref();
    // A first tick lets the machine arm its periodic timers (retention
    // checks) and gives state restored on open (group members' sessions,
    // offset retention) its timers, before any request arrives.
    broker.step(clock.now(), Input::Tick, &mut out);
    if execute(&broker, &mut out, &mut waiting, &mut timers, transport).is_some() {
        sync_until_settled(&mut broker, &clock, &mut out, &mut waiting, &mut timers, transport);
    }
    loop {
        if let Some(reason) = broker.failure() {
            return Err(reason.to_string());
        }
        let first = match timers.first().copied() {
            Some(at) => tokio::select! {
                // Polled in order: tokio's random branch order would draw from a
                // process-global seed and break replay in the simulator.
                // Timers first, so a stream of commands cannot starve them.
                biased;
                _ = tokio::time::sleep_until(clock.instant_at(at)) => {
                    let now = clock.now();
                    while timers.first().is_some_and(|t| *t <= now) {
                        timers.pop_first();
                    }
                    broker.step(now, Input::Tick, &mut out);
                    if execute(&broker, &mut out, &mut waiting, &mut timers, transport).is_some() {
                        sync_until_settled(&mut broker, &clock, &mut out, &mut waiting, &mut timers, transport);
                    }
                    // A timer armed for "now" (the log cleaner has more
                    // steps) is due again at once: take the commands already
                    // queued first, so background work never starves them.
                    match commands.try_recv() {
                        Ok(c) => Some(c),
                        Err(_) => continue,
                    }
                }
                m = recv_peer(&mut inbox) => {
                    peer_turn(&mut broker, &clock, m, &mut inbox, &mut out, &mut waiting, &mut timers, transport);
                    // Then the commands already queued: neither side starves.
                    match commands.try_recv() {
                        Ok(c) => Some(c),
                        Err(_) => continue,
                    }
                }
                c = commands.recv() => c,
            },
            None => tokio::select! {
                biased;
                m = recv_peer(&mut inbox) => {
                    peer_turn(&mut broker, &clock, m, &mut inbox, &mut out, &mut waiting, &mut timers, transport);
                    // Then the commands already queued: neither side starves.
                    match commands.try_recv() {
                        Ok(c) => Some(c),
                        Err(_) => continue,
                    }
                }
                c = commands.recv() => c,
            },
        };
        let Some(first) = first else { break };
        let mut next = Some(first);
        let mut taken = 0;
        let mut shutdown = None;
        while let Some(cmd) = next.take() {
            let now = clock.now();
            match cmd {
                Command::Request { id, request, reply } => {
                    waiting.insert(id, reply);
                    broker.step(now, Input::Request { id, request }, &mut out);
                }
                Command::Disconnected { conn } => {
                    waiting.retain(|id, _| id.conn != conn);
                    broker.step(now, Input::Disconnected { conn }, &mut out);
                }
                Command::Shutdown { done } => shutdown = Some(done),
            }
            taken += 1;
            if taken < MAX_BURST && shutdown.is_none() {
                next = commands.try_recv().ok();
            }
        }
        let needs_sync = execute(&broker, &mut out, &mut waiting, &mut timers, transport).is_some();
        if needs_sync && let Some(delay) = crate::buggify::slow_fsync() {
            tokio::time::sleep(delay).await;
        }
        if needs_sync || shutdown.is_some() {
            sync_until_settled(&mut broker, &clock, &mut out, &mut waiting, &mut timers, transport);
        }
        if let Some(done) = shutdown {
            let _ = done.send(());
            return broker.failure().map_or(Ok(()), |r| Err(r.to_string()));
        }
    }
    sync_until_settled(&mut broker, &clock, &mut out, &mut waiting, &mut timers, transport);
    broker.failure().map_or(Ok(()), |r| Err(r.to_string()))
}

/// Feeds `Sync` until the machine stops asking for one: finishing a sync
/// can append more (the group coordinator persists the next step of a
/// rebalance), which needs a sync of its own. Bounded, as each round only
/// follows up the previous one.
fn sync_until_settled<S: Storage>(
    broker: &mut Broker<S>,
    clock: &Clock,
    out: &mut Vec<Effect>,
    waiting: &mut HashMap<RequestId, oneshot::Sender<Response>>,
    timers: &mut BTreeSet<i64>,
    transport: Option<&PeerTransport<PeerMessage>>,
) {
    const MAX_ROUNDS: usize = 16;
    for _ in 0..MAX_ROUNDS {
        broker.step(clock.now(), Input::Sync, out);
        if execute(broker, out, waiting, timers, transport).is_none() {
            return;
        }
    }
    tracing::warn!("sync requests did not settle after {MAX_ROUNDS} rounds; the next turn continues");
}

/// Carries out effects. Returns `Some(())` if a sync was asked for.
fn execute<S: Storage>(
    broker: &Broker<S>,
    out: &mut Vec<Effect>,
    waiting: &mut HashMap<RequestId, oneshot::Sender<Response>>,
    timers: &mut BTreeSet<i64>,
    transport: Option<&PeerTransport<PeerMessage>>,
) -> Option<()> {
    if broker.failure().is_some() {
        // Nothing more may leave a failed machine.
        out.clear();
        waiting.clear();
        return None;
    }
    let mut sync = None;
    for effect in out.drain(..) {
        match effect {
            Effect::Reply { id, response } => {
                if let Some(reply) = waiting.remove(&id) {
                    let _ = reply.send(response);
                }
            }
            Effect::Timer { at } => {
                timers.insert(at);
            }
            Effect::SyncNeeded => sync = Some(()),
            Effect::Send { to, message } => match transport {
                Some(t) => t.send(to as u64, message),
                None => tracing::warn!(to, "a message for a peer, but this node has no peers"),
            },
            Effect::Fatal { reason } => {
                tracing::error!(%reason, "fatal storage failure; stopping so no unsynced write is acknowledged");
                waiting.clear();
            }
        }
    }
    sync
}

/// The next message from a peer; pending forever without peers.
async fn recv_peer(inbox: &mut Option<mpsc::Receiver<(u64, PeerMessage)>>) -> Option<(u64, PeerMessage)> {
    match inbox {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Steps the machine with a peer message and the others already queued
/// (bounded), then syncs once if asked: replicated appends are
/// group-committed like produce requests.
#[allow(clippy::too_many_arguments)]
fn peer_turn<S: Storage>(
    broker: &mut Broker<S>,
    clock: &Clock,
    first: Option<(u64, PeerMessage)>,
    inbox: &mut Option<mpsc::Receiver<(u64, PeerMessage)>>,
    out: &mut Vec<Effect>,
    waiting: &mut HashMap<RequestId, oneshot::Sender<Response>>,
    timers: &mut BTreeSet<i64>,
    transport: Option<&PeerTransport<PeerMessage>>,
) {
    let Some(first) = first else {
        // The transport is gone: no more peer messages.
        *inbox = None;
        return;
    };
    let mut next = Some(first);
    let mut taken = 0;
    while let Some((from, message)) = next.take() {
        broker.step(clock.now(), Input::Peer { from: from as i32, message }, out);
        taken += 1;
        if taken < MAX_BURST {
            next = inbox.as_mut().and_then(|rx| rx.try_recv().ok());
        }
    }
    if execute(broker, out, waiting, timers, transport).is_some() {
        sync_until_settled(broker, clock, out, waiting, timers, transport);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_core::broker::cluster::ReplicaFetch;

    fn roundtrip(mut msg: PeerMessage) -> PeerMessage {
        let payload = msg.take_payload();
        let config = bincode::config::standard();
        let mut back: PeerMessage = bincode::serde::decode_from_slice(&bincode::serde::encode_to_vec(&msg, config).unwrap(), config).unwrap().0;
        if let Some(p) = payload.filter(|p| !p.is_empty()) {
            back.put_payload(p).expect("the message takes its payload back");
        }
        back
    }

    #[test]
    fn replicated_batches_travel_as_payloads_and_other_messages_take_none() {
        let data = |records: &'static [u8]| {
            PeerMessage::FetchReply(ReplicaFetchReply {
                seq: 7,
                topic: "t".into(),
                partition: 2,
                leader_epoch: 3,
                outcome: FetchOutcome::Data { high_watermark: 5, log_start: 0, records: Bytes::from_static(records) },
            })
        };
        let mut m = data(b"batches");
        assert_eq!(m.clone().take_payload().as_deref(), Some(&b"batches"[..]));
        assert_eq!(roundtrip(m.clone()), m);
        assert_eq!(roundtrip(data(b"")), data(b""));
        // A message that already holds its records, or none at all, takes no payload.
        assert!(m.put_payload(Bytes::from_static(b"x")).is_err());
        let mut fetch = PeerMessage::Fetch(ReplicaFetch {
            seq: 1,
            topic: "t".into(),
            partition: 0,
            leader_epoch: 1,
            fetch_offset: 0,
            last_fetched_epoch: -1,
        });
        assert!(fetch.take_payload().is_none());
        assert!(fetch.put_payload(Bytes::from_static(b"x")).is_err());
    }
}
