//! Running batch jobs for real: the core's driver and worker machines
//! driven by wall-clock time, with tasks executed by the engine on a pool
//! of OS threads — in this process (`local`, `millrace sql --local`) or on
//! the cluster's `millrace serve` nodes (`service`, reached with `client`).

#[cfg(not(madsim))]
pub mod blocks;
#[cfg(not(madsim))]
pub mod client;
#[cfg(not(madsim))]
pub mod local;
pub mod output;
pub mod proto;
#[cfg(not(madsim))]
pub mod service;
#[cfg(not(madsim))]
pub mod spill;

#[cfg(not(madsim))]
pub mod topics;

/// The tables `millrace sql` knows, locally and on a cluster: files, and
/// `topic('name')` read from the brokers of `topics` (without it, a topic
/// is refused).
#[cfg(not(madsim))]
pub fn catalog(topics: Option<&topics::KafkaTopics>) -> millrace_engine::sql::Catalog {
    let mut catalog = millrace_engine::sql::Catalog::default();
    catalog.topics = Some(match topics {
        Some(t) => topics::resolver(t.clone()),
        None => Box::new(|topic: &str| {
            Err(millrace_engine::EngineError::Plan(format!(
                "topic('{topic}'): this node knows no Kafka broker to read topics from"
            )))
        }),
    });
    catalog
}
