//! The inter-node transport over real loopback TCP: delivery in order per
//! sender, reconnection to a peer that comes up late or restarts, hostile
//! connections closed without disturbing others, and shutdown freeing the
//! port.
//!
//! Addresses: every node binds port 0 with an empty peer map, then learns
//! the others' addresses through `set_peers`.

// Real sockets and std listeners: not a simulator test.
#![cfg(not(madsim))]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use millrace_net::peer::{self, MAX_FRAME_BYTES, NodeId, PEER_QUEUE, PROTOCOL_VERSION, PeerTransport};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::Receiver;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Msg {
    Seq { n: u64, pad: Vec<u8> },
    Hello(String),
}

/// `Seq`'s padding travels as a payload (after the encoded message, not
/// through bincode), so these tests cover that path too.
impl peer::Payload for Msg {
    fn take_payload(&mut self) -> Option<bytes::Bytes> {
        match self {
            Msg::Seq { pad, .. } if !pad.is_empty() => Some(std::mem::take(pad).into()),
            _ => None,
        }
    }

    fn put_payload(&mut self, payload: bytes::Bytes) -> Result<(), bytes::Bytes> {
        match self {
            Msg::Seq { pad, .. } if pad.is_empty() => {
                *pad = payload.to_vec();
                Ok(())
            }
            _ => Err(payload),
        }
    }
}

fn seq(n: u64) -> Msg {
    // Varied sizes, so frames split across reads in every way.
    Msg::Seq { n, pad: vec![n as u8; (n % 300) as usize] }
}

type Rx = Receiver<(NodeId, Msg)>;

const WAIT: Duration = Duration::from_secs(10);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Binds one node per id on port 0, then tells each where the others are.
async fn cluster(ids: &[NodeId]) -> Vec<(PeerTransport<Msg>, Rx)> {
    let mut nodes = Vec::new();
    for &id in ids {
        nodes.push(PeerTransport::<Msg>::bind(id, 1, loopback(), BTreeMap::new()).await.unwrap());
    }
    let addrs: BTreeMap<NodeId, SocketAddr> = ids.iter().zip(&nodes).map(|(id, (t, _))| (*id, t.local_addr())).collect();
    for (&id, (t, _)) in ids.iter().zip(&nodes) {
        t.set_peers(addrs.iter().filter(|(other, _)| **other != id).map(|(k, v)| (*k, *v)).collect());
    }
    nodes
}

/// Receives `n` messages, failing the test if they do not come in time.
async fn recv_n(rx: &mut Rx, n: usize) -> Vec<(NodeId, Msg)> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(m)) => got.push(m),
            Ok(None) => panic!("receiver closed after {} of {n} messages", got.len()),
            Err(_) => panic!("only {} of {n} messages arrived", got.len()),
        }
    }
    got
}

fn seq_of(m: &Msg) -> u64 {
    match m {
        Msg::Seq { n, pad } => {
            assert_eq!(pad, &vec![*n as u8; (n % 300) as usize], "payload of {n} intact");
            *n
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Checks that per sender the sequence numbers are exactly `0..n` in order.
fn assert_in_order(got: &[(NodeId, Msg)], senders: &[NodeId], n: u64) {
    for &s in senders {
        let ns: Vec<u64> = got.iter().filter(|(from, _)| *from == s).map(|(_, m)| seq_of(m)).collect();
        assert_eq!(ns, (0..n).collect::<Vec<_>>(), "messages from {s}");
    }
    assert!(got.iter().all(|(from, _)| senders.contains(from)), "a message from an unexpected sender");
}

/// The connection is closed by the other end (end of stream or reset) soon.
async fn assert_closed(mut s: TcpStream, what: &str) {
    let mut sink = Vec::new();
    match tokio::time::timeout(WAIT, s.read_to_end(&mut sink)).await {
        Ok(_) => {} // end of stream, or reset because our bytes were left unread
        Err(_) => panic!("{what}: connection still open"),
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

fn encode(m: &Msg) -> Vec<u8> {
    bincode::serde::encode_to_vec(m, bincode::config::standard()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_exchange_both_ways_in_order() {
    let mut nodes = cluster(&[1, 2]).await;
    let n = 3000;
    let big = Msg::Hello("x".repeat(2 << 20));
    for i in 0..n {
        nodes[0].0.send(2, seq(i));
        nodes[1].0.send(1, seq(i));
        if i == n / 2 {
            // A frame much bigger than a read, in the middle of the stream.
            nodes[0].0.send(2, big.clone());
        }
    }
    let (a_rx, rest) = nodes.split_first_mut().unwrap();
    let at_b = recv_n(&mut rest[0].1, n as usize + 1).await;
    let at_a = recv_n(&mut a_rx.1, n as usize).await;
    assert_in_order(&at_a, &[2], n);
    let big_at = at_b.iter().position(|(_, m)| *m == big).expect("the big message arrived");
    assert_eq!(big_at, n as usize / 2 + 1);
    let mut at_b = at_b;
    at_b.remove(big_at);
    assert_in_order(&at_b, &[1], n);
    assert_eq!(nodes[0].0.dropped() + nodes[1].0.dropped(), 0);
    for (t, _) in &nodes {
        t.shutdown_and_wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_every_pair_in_order() {
    let ids = [1, 2, 3];
    let mut nodes = cluster(&ids).await;
    let n = 2000;
    for i in 0..n {
        for (from, (t, _)) in ids.iter().zip(&nodes) {
            for to in ids.iter().filter(|to| *to != from) {
                t.send(*to, seq(i));
            }
        }
    }
    for (me, (_, rx)) in ids.iter().zip(nodes.iter_mut()) {
        let got = recv_n(rx, 2 * n as usize).await;
        let others: Vec<NodeId> = ids.iter().copied().filter(|id| id != me).collect();
        assert_in_order(&got, &others, n);
    }
    for (t, _) in &nodes {
        assert_eq!(t.dropped(), 0);
        t.shutdown_and_wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_down_at_first_gets_the_messages_sent_once_it_is_up() {
    // An address where nothing listens yet: below the kernel's ephemeral
    // range, so no other test's outgoing connection takes it before B binds
    // (port 0 gave one from that range, and CI once lost this race).
    let b_addr = free_low_port();
    let (a, mut a_rx) = PeerTransport::<Msg>::bind(1, 1, loopback(), BTreeMap::from([(2, b_addr)])).await.unwrap();
    for i in 0..10 {
        a.send(2, seq(i));
    }
    // A fails to connect and backs off (each failed attempt drops a message).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.dropped() >= 1, "a failed connection attempt drops its message");

    let (b, mut b_rx) = PeerTransport::<Msg>::bind(2, 1, b_addr, BTreeMap::from([(1, a.local_addr())])).await.unwrap();
    for i in 100..200 {
        a.send(2, seq(i));
    }
    // Early messages may be lost; all later ones arrive, everything in order.
    let mut got = Vec::new();
    while got.last() != Some(&199) {
        match tokio::time::timeout(WAIT, b_rx.recv()).await {
            Ok(Some((from, m))) => {
                assert_eq!(from, 1);
                got.push(seq_of(&m));
            }
            other => panic!("stalled after {got:?}: {other:?}"),
        }
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    let later: Vec<u64> = got.iter().copied().filter(|n| *n >= 100).collect();
    assert_eq!(later, (100..200).collect::<Vec<_>>());

    // And the other way.
    b.send(1, Msg::Hello("up".into()));
    assert_eq!(recv_n(&mut a_rx, 1).await, vec![(2, Msg::Hello("up".into()))]);
    a.shutdown_and_wait().await;
    b.shutdown_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_on_the_same_address_gets_messages_again() {
    let mut nodes = cluster(&[1, 2]).await;
    let (b, mut b_rx) = nodes.pop().unwrap();
    let (a, _a_rx) = nodes.pop().unwrap();
    a.send(2, seq(0));
    assert_in_order(&recv_n(&mut b_rx, 1).await, &[1], 1);

    // B stops (A's connection to it breaks) and comes back on its address.
    let b_addr = b.local_addr();
    b.shutdown_and_wait().await;
    assert!(tokio::time::timeout(WAIT, b_rx.recv()).await.unwrap().is_none(), "the old receiver ends");
    let (b2, mut b2_rx) = PeerTransport::<Msg>::bind(2, 2, b_addr, BTreeMap::from([(1, a.local_addr())])).await.unwrap();

    // A keeps sending until the new B hears it; from then on nothing is lost.
    let mut next = 1;
    let first = loop {
        a.send(2, seq(next));
        next += 1;
        assert!(next < 2000, "the restarted peer never heard from A");
        if let Ok(Some((1, m))) = tokio::time::timeout(Duration::from_millis(10), b2_rx.recv()).await {
            break seq_of(&m);
        }
    };
    let last = next + 100;
    for i in next..last {
        a.send(2, seq(i));
    }
    let mut got = vec![first];
    while *got.last().unwrap() != last - 1 {
        match tokio::time::timeout(WAIT, b2_rx.recv()).await {
            Ok(Some((1, m))) => got.push(seq_of(&m)),
            other => panic!("stalled after {got:?}: {other:?}"),
        }
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    assert!((next..last).all(|i| got.contains(&i)), "every message sent after the peer answered arrived");
    a.shutdown_and_wait().await;
    b2.shutdown_and_wait().await;
}

/// The new connection A opens to "B" (played by hand: `b` is where A
/// connects to node 2) while A keeps sending to it for `within`, if any.
/// The caller keeps it open: closing it would make A reconnect.
async fn reconnection(a: &PeerTransport<Msg>, b: &tokio::net::TcpListener, within: Duration) -> Option<TcpStream> {
    let deadline = tokio::time::Instant::now() + within;
    let mut n = 1000;
    while tokio::time::Instant::now() < deadline {
        a.send(2, seq(n));
        n += 1;
        if let Ok(accepted) = tokio::time::timeout(Duration::from_millis(50), b.accept()).await {
            return Some(accepted.unwrap().0);
        }
    }
    None
}

/// A peer that connects to us from a new incarnation restarted: our
/// connection to it may go to the dead one, so it is replaced. One that
/// connects again from the same incarnation only lost or replaced its own
/// connection; taking that as a restart made two nodes replace their
/// connections in turn (replication suite, seed 400215).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_new_incarnation_replaces_our_connection() {
    let b = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let (a, _a_rx) = PeerTransport::<Msg>::bind(1, 1, loopback(), BTreeMap::from([(2, b.local_addr().unwrap())])).await.unwrap();
    let a_addr = a.local_addr();
    let hello_as_2 = |incarnation: u64| async move {
        let mut s = TcpStream::connect(a_addr).await.unwrap();
        s.write_all(&peer::handshake(2, incarnation)).await.unwrap();
        s
    };
    a.send(2, seq(0));
    let _first = tokio::time::timeout(WAIT, b.accept()).await.expect("A connects to B").unwrap();
    // Connections younger than a second are never replaced; wait that out.
    let settle = Duration::from_millis(1200);

    tokio::time::sleep(settle).await;
    let _seven = hello_as_2(7).await;
    let _second = reconnection(&a, &b, WAIT).await.expect("B's first incarnation seen: A replaces its connection");

    tokio::time::sleep(settle).await;
    let _seven_again = hello_as_2(7).await;
    assert!(reconnection(&a, &b, Duration::from_millis(1500)).await.is_none(), "the same incarnation again: A keeps its connection");

    let _eight = hello_as_2(8).await;
    let _third = reconnection(&a, &b, WAIT).await.expect("a new incarnation: A replaces its connection");
    a.shutdown_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_handshakes_are_closed_and_others_undisturbed() {
    let mut nodes = cluster(&[1, 2]).await;
    let b_addr = nodes[1].0.local_addr();
    for i in 0..500 {
        nodes[0].0.send(2, seq(i));
    }

    // Not our protocol at all.
    let mut s = TcpStream::connect(b_addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: millrace\r\n\r\n").await.unwrap();
    assert_closed(s, "wrong magic").await;

    // Our magic, another protocol version.
    let mut h = peer::handshake(9, 1);
    h[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
    let mut s = TcpStream::connect(b_addr).await.unwrap();
    s.write_all(&h).await.unwrap();
    assert_closed(s, "wrong version").await;

    // A peer claiming B's own id.
    let mut s = TcpStream::connect(b_addr).await.unwrap();
    s.write_all(&peer::handshake(2, 1)).await.unwrap();
    assert_closed(s, "own id").await;

    for i in 500..1000 {
        nodes[0].0.send(2, seq(i));
    }
    // A's connection was never touched: nothing lost, nothing reordered.
    assert_in_order(&recv_n(&mut nodes[1].1, 1000).await, &[1], 1000);
    assert_eq!(nodes[0].0.dropped(), 0);
    for (t, _) in &nodes {
        t.shutdown_and_wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_length_closes_only_that_connection() {
    let mut nodes = cluster(&[1, 2]).await;
    let b_addr = nodes[1].0.local_addr();
    for i in 0..500 {
        nodes[0].0.send(2, seq(i));
    }
    // A hand-made peer 9: a good frame (the documented format), then a
    // length prefix past the cap.
    let mut s = TcpStream::connect(b_addr).await.unwrap();
    let mut bytes = peer::handshake(9, 1).to_vec();
    bytes.extend(frame(&encode(&Msg::Hello("by hand".into()))));
    bytes.extend(((MAX_FRAME_BYTES + 1) as u32).to_be_bytes());
    bytes.extend([0u8; 64]);
    s.write_all(&bytes).await.unwrap();
    assert_closed(s, "oversized frame").await;

    let mut s = TcpStream::connect(b_addr).await.unwrap();
    let mut bytes = peer::handshake(9, 1).to_vec();
    bytes.extend(u32::MAX.to_be_bytes());
    s.write_all(&bytes).await.unwrap();
    assert_closed(s, "length u32::MAX").await;

    for i in 500..1000 {
        nodes[0].0.send(2, seq(i));
    }
    let got = recv_n(&mut nodes[1].1, 1001).await;
    let (by_hand, from_a): (Vec<_>, Vec<_>) = got.into_iter().partition(|(from, _)| *from == 9);
    assert_eq!(by_hand, vec![(9, Msg::Hello("by hand".into()))]);
    assert_in_order(&from_a, &[1], 1000);
    assert_eq!(nodes[0].0.dropped(), 0);
    for (t, _) in &nodes {
        t.shutdown_and_wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_frame_closes_only_that_connection() {
    let mut nodes = cluster(&[1, 2]).await;
    let b_addr = nodes[1].0.local_addr();
    for i in 0..300 {
        nodes[0].0.send(2, seq(i));
    }
    // An enum variant index that does not exist.
    let mut s = TcpStream::connect(b_addr).await.unwrap();
    let mut bytes = peer::handshake(9, 1).to_vec();
    bytes.extend(frame(&[0xfb, 0xff, 0xff]));
    s.write_all(&bytes).await.unwrap();
    assert_closed(s, "bad variant").await;

    // A good message with a byte left over in its frame.
    let mut s = TcpStream::connect(b_addr).await.unwrap();
    let mut payload = encode(&Msg::Hello("x".into()));
    payload.push(0);
    let mut bytes = peer::handshake(9, 1).to_vec();
    bytes.extend(frame(&payload));
    s.write_all(&bytes).await.unwrap();
    assert_closed(s, "trailing byte").await;

    // A connection that ends inside a frame.
    let mut s = TcpStream::connect(b_addr).await.unwrap();
    let mut bytes = peer::handshake(9, 1).to_vec();
    bytes.extend(100u32.to_be_bytes());
    bytes.extend([1, 2, 3]);
    s.write_all(&bytes).await.unwrap();
    drop(s);

    for i in 300..600 {
        nodes[0].0.send(2, seq(i));
    }
    assert_in_order(&recv_n(&mut nodes[1].1, 600).await, &[1], 600);
    assert!(tokio::time::timeout(Duration::from_millis(200), nodes[1].1.recv()).await.is_err(), "nothing from the bad peers");
    for (t, _) in &nodes {
        t.shutdown_and_wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_frees_the_port_and_ends_the_receiver() {
    let mut nodes = cluster(&[1, 2]).await;
    // Traffic both ways: each node holds an accepted and an opened connection.
    for i in 0..100 {
        nodes[0].0.send(2, seq(i));
        nodes[1].0.send(1, seq(i));
    }
    recv_n(&mut nodes[0].1, 100).await;
    recv_n(&mut nodes[1].1, 100).await;
    let (b, mut b_rx) = nodes.pop().unwrap();
    let (a, mut a_rx) = nodes.pop().unwrap();
    let (a_addr, b_addr) = (a.local_addr(), b.local_addr());

    // shutdown(): the tasks go as soon as the runtime gets to them; once the
    // receiver has ended, the port is free.
    a.shutdown();
    let before = a.dropped();
    a.send(2, seq(0));
    assert_eq!(a.dropped(), before + 1, "a send after shutdown is dropped");
    assert!(tokio::time::timeout(WAIT, a_rx.recv()).await.unwrap().is_none(), "the receiver ends");
    let a2 = PeerTransport::<Msg>::bind(1, 2, a_addr, BTreeMap::new()).await.expect("the port is free once the receiver ended");

    // shutdown_and_wait(): the port is free when it returns.
    b.shutdown_and_wait().await;
    let (b2, mut b2_rx) = PeerTransport::<Msg>::bind(2, 2, b_addr, BTreeMap::from([(1, a_addr)])).await.unwrap();
    assert!(tokio::time::timeout(WAIT, b_rx.recv()).await.unwrap().is_none());

    // The new incarnations talk.
    let (a2, mut a2_rx) = a2;
    a2.set_peers(BTreeMap::from([(2, b_addr)]));
    a2.send(2, Msg::Hello("again".into()));
    b2.send(1, Msg::Hello("again".into()));
    assert_eq!(recv_n(&mut b2_rx, 1).await, vec![(1, Msg::Hello("again".into()))]);
    assert_eq!(recv_n(&mut a2_rx, 1).await, vec![(2, Msg::Hello("again".into()))]);
    a2.shutdown_and_wait().await;
    b2.shutdown_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_peers_and_full_queues_drop_without_blocking() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (a, _rx) = PeerTransport::<Msg>::bind(1, 1, loopback(), BTreeMap::from([(2, dead)])).await.unwrap();
    a.send(7, Msg::Hello("nobody".into()));
    assert_eq!(a.dropped(), 1);
    let total = 3 * PEER_QUEUE as u64;
    for i in 0..total {
        a.send(2, seq(i));
    }
    // The queue holds PEER_QUEUE; the task may take a few for failed connects.
    assert!(a.dropped() >= total - PEER_QUEUE as u64 - 10, "dropped {}", a.dropped());
    assert_eq!(a.peers(), BTreeMap::from([(2, dead)]));
    a.shutdown_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_frees_the_port() {
    let (a, mut rx) = PeerTransport::<Msg>::bind(1, 1, loopback(), BTreeMap::new()).await.unwrap();
    let addr = a.local_addr();
    let clone = a.clone();
    drop(a);
    drop(clone);
    assert!(tokio::time::timeout(WAIT, rx.recv()).await.unwrap().is_none(), "the receiver ends");
    let (again, _rx) = PeerTransport::<Msg>::bind(1, 2, addr, BTreeMap::new()).await.unwrap();
    again.shutdown_and_wait().await;
}

/// With `Extras`: a connection that does not start with the magic is handed
/// over with its first bytes (the peer protocol is undisturbed), and the
/// node hears of connections that open, end, or cannot be made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_connections_are_handed_over_and_links_reported() {
    use millrace_net::peer::{Extras, LinkEvent};
    let (foreign_tx, mut foreign) = tokio::sync::mpsc::unbounded_channel();
    let (links_tx, mut links) = tokio::sync::mpsc::unbounded_channel();
    let extras = Extras { foreign: Some(foreign_tx), links: Some(links_tx) };
    let (a, mut a_rx) = PeerTransport::<Msg>::bind_with(1, 10, loopback(), BTreeMap::new(), extras).await.unwrap();
    let (b, _b_rx) = PeerTransport::<Msg>::bind(2, 20, loopback(), BTreeMap::from([(1, a.local_addr())])).await.unwrap();

    // Someone else's protocol on the same port.
    let mut other = TcpStream::connect(a.local_addr()).await.unwrap();
    other.write_all(b"MLRBhello").await.unwrap();
    let mut f = tokio::time::timeout(WAIT, foreign.recv()).await.unwrap().unwrap();
    assert!(f.prefix.len() >= 4 && f.prefix.starts_with(b"MLRB"), "{:?}", f.prefix);
    f.stream.write_all(b"answer").await.unwrap();
    let mut got = [0u8; 6];
    other.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"answer");

    // A peer still gets through, and its connection is reported.
    b.send(1, seq(0));
    assert_in_order(&recv_n(&mut a_rx, 1).await, &[2], 1);
    let ev = tokio::time::timeout(WAIT, links.recv()).await.unwrap().unwrap();
    assert_eq!(ev, LinkEvent::Up { peer: 2, incarnation: 20 });
    b.shutdown_and_wait().await;
    let ev = tokio::time::timeout(WAIT, links.recv()).await.unwrap().unwrap();
    assert_eq!(ev, LinkEvent::Down { peer: 2, incarnation: 20 });

    // A peer nobody listens for: the message is dropped, and said so.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    a.set_peers(BTreeMap::from([(3, nobody)]));
    a.send(3, seq(1));
    let ev = tokio::time::timeout(WAIT, links.recv()).await.unwrap().unwrap();
    assert_eq!(ev, LinkEvent::Broken { peer: 3 });
    a.shutdown_and_wait().await;
}

/// A free port in 31000..32700 (below Linux's ephemeral range, 32768+).
fn free_low_port() -> std::net::SocketAddr {
    let start = 31_000 + (std::process::id() % 1_500) as u16;
    for port in (start..32_700).chain(31_000..start) {
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().unwrap();
        }
    }
    panic!("no free port in 31000..32700");
}
