//! One `millrace serve` process for the tests that need a real single
//! node: free loopback ports (Kafka P, batch P + 2), a data directory,
//! restart on the same ports and data, SIGKILL as a crash, and the small
//! CLI helpers the stream and connector tests share.

#![allow(dead_code)] // each test binary uses its part

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_millrace");

/// One server at a time: the machine may have two cores.
pub static SERIAL: Mutex<()> = Mutex::new(());

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A port P with P and P + 2 (the batch port) free.
fn free_port() -> u16 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let mut x = (u64::from(std::process::id()) ^ nanos ^ 0x9e37_79b9) | 1;
    for _ in 0..500 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let base = 20_000 + (x % 30_000) as u16;
        if [0, 1, 2].iter().all(|off| bindable(base + off)) {
            return base;
        }
    }
    panic!("no free ports");
}

/// A fresh directory `millrace-<suite>-<name>-<pid>` under the temp dir.
pub fn tempdir(suite: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("millrace-{suite}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn millrace(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("RUST_BACKTRACE", "0").env_remove("MILLRACE_BATCH_SERVER").env_remove("MILLRACE_BOOTSTRAP").output().unwrap()
}

pub fn ok(args: &[&str]) -> String {
    let o = millrace(args);
    assert!(o.status.success(), "millrace {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// The one error line of a command that must fail.
pub fn fails(args: &[&str]) -> String {
    let o = millrace(args);
    let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert_eq!(o.status.code(), Some(1), "millrace {args:?} should fail: {err}");
    assert!(err.starts_with("Error: ") && err.lines().count() == 1 && !err.contains("panick"), "millrace {args:?}: {err}");
    err
}

pub fn wait_until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Server {
    child: Option<Child>,
    pub dir: PathBuf,
    pub bootstrap: String,
    pub batch: String,
    env: Vec<(String, String)>,
}

impl Server {
    pub fn start(dir: &Path) -> Server {
        Server::start_with(dir, &[])
    }

    pub fn start_with(dir: &Path, env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut s = Server { child: None, dir: dir.to_path_buf(), bootstrap: format!("127.0.0.1:{port}"), batch: format!("127.0.0.1:{}", port + 2), env };
        s.restart();
        s
    }

    /// Starts the process (again) on the same ports and data.
    pub fn restart(&mut self) {
        let child = Command::new(BIN)
            .args(["serve", "--listen", &self.bootstrap, "--data-dir"])
            .arg(self.dir.join("data"))
            .env("MILLRACE_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("server.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let (b, s) = (self.bootstrap.clone(), self.batch.clone());
        wait_until("the server", Duration::from_secs(10), || TcpStream::connect(&b).is_ok() && TcpStream::connect(&s).is_ok());
    }

    /// SIGKILL: no shutdown, no flush, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Produces `lines` (values, no keys) to `topic`.
pub fn produce(bootstrap: &str, topic: &str, lines: &[String]) {
    produce_with(bootstrap, topic, lines, &[]);
}

/// [`produce`] with more `millrace produce` flags (`--key-separator |`).
pub fn produce_with(bootstrap: &str, topic: &str, lines: &[String], flags: &[&str]) {
    let mut child = Command::new(BIN)
        .args(["produce", topic, "-b", bootstrap])
        .args(flags)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "produce: {}", String::from_utf8_lossy(&o.stderr));
}
