//! Hostile and broken input closes the offending connection only; the
//! server keeps serving every other client.

use std::time::Duration;

use bytes::Bytes;
use millrace_core::records::{BatchBuilder, Compression, Record};
use millrace_net::client::Client;
use millrace_net::config::ServeConfig;
use millrace_net::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[global_allocator]
static ALLOC: millrace_net::alloc_guard::GuardedAlloc = millrace_net::alloc_guard::GuardedAlloc;

/// Starts a server on a free port; `name` keeps parallel tests' data apart.
async fn start(name: &str) -> (String, tokio::sync::oneshot::Sender<()>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("millrace-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = ServeConfig { listen: "127.0.0.1:0".parse().unwrap(), data_dir: dir.clone(), ..ServeConfig::default() };
    let server = Server::bind(config).await.unwrap();
    let addr = server.local_addr().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    (addr, stop, dir)
}

/// A normal client can still create, produce and fetch.
async fn assert_served(addr: &str, round: usize) {
    let mut c = tokio::time::timeout(Duration::from_secs(5), Client::connect(addr)).await.unwrap().unwrap();
    let topic = format!("ok-{round}");
    c.create_topic(&topic, 1, &[]).await.unwrap();
    let mut b = BatchBuilder::new(Compression::Zstd);
    b.push(Record { value: Some(b"still here".to_vec()), ..Record::default() });
    assert_eq!(c.produce(&topic, 0, Bytes::from(b.build()), -1).await.unwrap(), 0);
    let f = c.fetch(&topic, 0, 0, 100, 1 << 20).await.unwrap();
    assert_eq!(f.high_watermark, 1);
    assert!(!f.records.is_empty());
}

/// Sends raw bytes; returns what the server answered before closing (or
/// until a short timeout).
async fn send_raw(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(500), s.read_to_end(&mut out)).await;
    out
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as i32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// A request header v1: api key, version, correlation id, client id "t".
fn header(key: i16, version: i16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&key.to_be_bytes());
    h.extend_from_slice(&version.to_be_bytes());
    h.extend_from_slice(&42i32.to_be_bytes());
    h.extend_from_slice(&1i16.to_be_bytes());
    h.push(b't');
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_connection() {
    let (addr, stop, dir) = start("bad-frames").await;
    assert_served(&addr, 0).await;

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x00\x00\x00\x10this is not kafka".to_vec()),
        ("truncated frame", {
            let mut f = 100i32.to_be_bytes().to_vec();
            f.extend_from_slice(b"0123456789");
            f
        }),
        ("oversized length prefix", 0x7fff_ffffi32.to_be_bytes().to_vec()),
        ("negative length prefix", (-5i32).to_be_bytes().to_vec()),
        ("frame shorter than a header", frame(&[0, 3])),
        ("unknown api key", frame(&header(999, 0))),
        ("unsupported produce version", frame(&header(0, 1))),
        ("metadata claiming 2^31-1 topics", {
            let mut b = header(3, 1);
            b.extend_from_slice(&0x7fff_ffffi32.to_be_bytes());
            frame(&b)
        }),
        ("produce v9 claiming 2^32 topics (compact array)", {
            // Flexible header v2: key, version, correlation, client id, tagged fields.
            let mut b = header(0, 9);
            b.push(0); // header tagged fields
            b.push(0); // transactional id: null (compact nullable string)
            b.extend_from_slice(&1i16.to_be_bytes()); // acks
            b.extend_from_slice(&1000i32.to_be_bytes()); // timeout
            b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // array length varint
            frame(&b)
        }),
        ("produce with a corrupt batch", {
            let mut b = header(0, 3);
            b.extend_from_slice(&(-1i16).to_be_bytes()); // transactional id null
            b.extend_from_slice(&1i16.to_be_bytes());
            b.extend_from_slice(&1000i32.to_be_bytes());
            b.extend_from_slice(&1i32.to_be_bytes()); // one topic
            b.extend_from_slice(&4i16.to_be_bytes());
            b.extend_from_slice(b"ok-0");
            b.extend_from_slice(&1i32.to_be_bytes()); // one partition
            b.extend_from_slice(&0i32.to_be_bytes());
            b.extend_from_slice(&70i32.to_be_bytes()); // records bytes length
            b.extend_from_slice(&[0xab; 70]);
            frame(&b)
        }),
    ];
    // Random frames with a plausible header.
    let mut x = 0x1234_5678_9abc_def0u64;
    for key in [0i16, 1, 2, 3, 19, 20, 22, 32] {
        for _ in 0..20 {
            let mut b = header(key, 4);
            for _ in 0..(x % 200) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push(x as u8);
            }
            cases.push(("random body", frame(&b)));
        }
    }
    for (round, (what, bytes)) in cases.iter().enumerate() {
        let _ = send_raw(&addr, bytes).await;
        if round % 10 == 0 || round < 12 {
            assert_served(&addr, round + 1).await;
        }
        let _ = what;
    }
    // The corrupt batch was answered with CORRUPT_MESSAGE, not stored.
    let mut c = Client::connect(&addr).await.unwrap();
    assert_eq!(c.list_offset("ok-0", 0, -1).await.unwrap(), 1);
    assert_served(&addr, 10_000).await;
    let _ = stop.send(());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_api_versions_gets_a_v0_error_answer() {
    let (addr, stop, dir) = start("api-versions").await;
    let mut b = header(18, 99);
    b.push(0); // tagged fields of a flexible header
    let answer = send_raw(&addr, &frame(&b)).await;
    assert!(answer.len() > 10, "got {answer:?}");
    // length, correlation id, then error code 35 (UNSUPPORTED_VERSION).
    assert_eq!(&answer[4..8], &42i32.to_be_bytes());
    assert_eq!(i16::from_be_bytes([answer[8], answer[9]]), 35);
    let _ = stop.send(());
    let _ = std::fs::remove_dir_all(dir);
}
