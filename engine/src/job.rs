//! From the engine's stages to the driver's job: the driver sees stage
//! ids, partition counts, parents and an opaque payload (the bincode of
//! the stage's plan), nothing of Arrow.

use millrace_core::batch::{JobSpec, StageOutput as CoreOutput, StageSpec};

use crate::physical::{Stage, StageOutput};

pub fn job_spec(stages: &[Stage]) -> JobSpec {
    JobSpec {
        stages: stages
            .iter()
            .map(|s| StageSpec {
                id: s.id,
                partitions: s.partitions,
                parents: s.parents.clone(),
                output: match &s.plan.output {
                    StageOutput::Shuffle { partitions, .. } => CoreOutput::ShuffleMap { partitions: *partitions },
                    StageOutput::Result => CoreOutput::Result,
                },
                payload: s.plan.to_bytes(),
                preferred: Vec::new(),
            })
            .collect(),
    }
}
