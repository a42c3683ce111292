//! What the service holds of a running connector, and what `list` and
//! `describe` show of it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

#[derive(Debug, Clone, Default)]
pub struct Shared {
    /// `waiting`, `producing`, `writing`, `failed`, `stopped`, ...
    pub state: String,
    /// Records moved: a source's delivered to the topic (over its whole
    /// life), a sink's handed to its output (in this run).
    pub records: u64,
    /// A source's position, a sink's durable offset per partition.
    pub position: String,
    /// Input skipped (malformed JSON lines).
    pub skipped: u64,
    pub last_warning: Option<String>,
    /// The last failure, while it is being retried.
    pub retrying: Option<String>,
    pub error: Option<String>,
    /// Wall-clock ms when this run started, and `records` then.
    pub started_at: i64,
    pub records_at_start: u64,
}

pub struct Handle {
    pub shared: Arc<Mutex<Shared>>,
    pub stop: Arc<AtomicBool>,
    pub wake: Arc<Notify>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Handle {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    pub fn snapshot(&self) -> Shared {
        lock(&self.shared).clone()
    }
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
