//! Running batch jobs for real: the core's driver and worker machines
//! driven by wall-clock time, with tasks executed by the engine on a pool
//! of OS threads — in this process (`local`, `millrace sql --local`) or on
//! the cluster's `millrace serve` nodes (`service`, reached with `client`).

#[cfg(not(madsim))]
pub mod client;
#[cfg(not(madsim))]
pub mod local;
pub mod output;
pub mod proto;
#[cfg(not(madsim))]
pub mod service;

/// The tables `millrace sql` knows, locally and on a cluster: files only.
pub fn catalog() -> millrace_engine::sql::Catalog {
    let mut catalog = millrace_engine::sql::Catalog::default();
    catalog.topics = Some(Box::new(|topic: &str| {
        Err(millrace_engine::EngineError::Plan(format!(
            "topic('{topic}'): batch queries do not read topics yet (files only: read_csv, read_json, read_parquet, read_text)"
        )))
    }));
    catalog
}
