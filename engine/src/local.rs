//! Running a job's stages in this thread, one task after another, with
//! shuffle blocks kept in memory. It is the engine without the driver:
//! for tests, for the reference comparison, and for small local queries.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;

use crate::error::{EngineError, Result};
use crate::exec::{FetchFailed, TaskError, TaskInputs, TaskOutput, run_task};
use crate::exec_err;
use crate::physical::{PlannerConfig, Stage, cut};
use crate::plan::LogicalPlan;
use crate::shuffle;
use crate::source::TopicReader;
use crate::spill::Spill;

/// Shuffle blocks by (shuffle, map partition, reduce partition).
#[derive(Default)]
pub struct MemoryShuffle {
    blocks: BTreeMap<(u32, u32, u32), Vec<u8>>,
    maps: BTreeMap<u32, u32>,
}

impl MemoryShuffle {
    pub fn put(&mut self, shuffle: u32, map: u32, maps: u32, blocks: Vec<Vec<u8>>) {
        self.maps.insert(shuffle, maps);
        for (r, b) in blocks.into_iter().enumerate() {
            self.blocks.insert((shuffle, map, r as u32), b);
        }
    }
}

struct Inputs<'a> {
    shuffle: &'a MemoryShuffle,
    topics: Option<&'a dyn TopicReader>,
    spill: Option<Spill<'a>>,
}

impl TaskInputs for Inputs<'_> {
    fn shuffle_blocks(&self, shuffle: u32, reduce: u32) -> Result<Vec<Vec<u8>>, FetchFailed> {
        let maps = self.shuffle.maps.get(&shuffle).copied().unwrap_or(0);
        (0..maps)
            .map(|m| {
                self.shuffle
                    .blocks
                    .get(&(shuffle, m, reduce))
                    .cloned()
                    .ok_or(FetchFailed {
                        shuffle,
                        map_partition: m,
                    })
            })
            .collect()
    }
    fn topics(&self) -> Option<&dyn TopicReader> {
        self.topics
    }
    fn spill(&self) -> Option<Spill<'_>> {
        self.spill
    }
}

/// Runs every stage of `plan` and returns the result batches in
/// partition order.
pub fn run_local(
    plan: &LogicalPlan,
    config: PlannerConfig,
    topics: Option<&dyn TopicReader>,
) -> Result<Vec<RecordBatch>> {
    run_stages(&cut(plan, config)?, topics)
}

pub fn run_stages(stages: &[Stage], topics: Option<&dyn TopicReader>) -> Result<Vec<RecordBatch>> {
    run_stages_spilling(stages, topics, None)
}

/// [`run_stages`] with a memory limit per task, past which wide operators
/// spill into `spill`'s space.
pub fn run_stages_spilling(stages: &[Stage], topics: Option<&dyn TopicReader>, spill: Option<Spill<'_>>) -> Result<Vec<RecordBatch>> {
    let mut store = MemoryShuffle::default();
    let mut result = Vec::new();
    for stage in stages {
        for p in 0..stage.partitions {
            let out = run_task(
                &stage.plan,
                p,
                &Inputs {
                    shuffle: &store,
                    topics,
                    spill,
                },
            )
            .map_err(|e| match e {
                TaskError::Failed(e) => e,
                TaskError::Fetch(f) => exec_err!(
                    "shuffle {} block of map {} missing",
                    f.shuffle,
                    f.map_partition
                ),
            })?;
            match out {
                TaskOutput::Shuffle(blocks) => store.put(stage.id, p, stage.partitions, blocks),
                TaskOutput::Result(block) => result.extend(shuffle::decode(&block)?),
            }
        }
    }
    Ok(result)
}

/// Prints batches as a table.
pub fn pretty(batches: &[RecordBatch]) -> Result<String> {
    arrow::util::pretty::pretty_format_batches(batches)
        .map(|t| t.to_string())
        .map_err(EngineError::from)
}
