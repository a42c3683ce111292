//! Cutting a logical plan into stages. Every wide operator (aggregate,
//! join, distinct, a sort or limit over several partitions, repartition)
//! ends a shuffle-map stage and starts a new one that reads the shuffle;
//! narrow operators stay in the stage of their input. The result is a list
//! of stages, parents first, the last one the result stage — the shape the
//! driver in `millrace_core::batch` schedules.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::expr::{AggExpr, Expr, col};
use crate::ops::aggregate::{AggMode, decomposable, partial_schema};
use crate::plan::{JoinKind, LogicalPlan, SortKey};
use crate::source::Source;
use crate::types::{Field, Schema};

/// One task's operator tree, evaluated for one partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    Scan {
        source: Source,
        schema: Schema,
    },
    ShuffleRead {
        shuffle: u32,
        schema: Schema,
    },
    /// Partition `p` is the first child's partitions, then the second's...
    Union {
        inputs: Vec<(Op, u32)>,
    },
    Project {
        input: Box<Op>,
        schema: Schema,
        exprs: Vec<(Expr, String)>,
    },
    Filter {
        input: Box<Op>,
        schema: Schema,
        predicate: Expr,
    },
    /// `keep`: the input columns carried along (indices into `schema`).
    Explode {
        input: Box<Op>,
        schema: Schema,
        expr: Expr,
        separator: String,
        name: String,
        keep: Vec<usize>,
    },
    Aggregate {
        input: Box<Op>,
        schema: Schema,
        mode: AggMode,
        group: Vec<(Expr, String)>,
        aggs: Vec<(AggExpr, String)>,
        original: Schema,
    },
    HashJoin {
        left: Box<Op>,
        right: Box<Op>,
        left_schema: Schema,
        right_schema: Schema,
        kind: JoinKind,
        on: Vec<(Expr, Expr)>,
        filter: Option<Expr>,
    },
    Sort {
        input: Box<Op>,
        schema: Schema,
        keys: Vec<SortKey>,
        limit: Option<usize>,
    },
    Limit {
        input: Box<Op>,
        skip: usize,
        fetch: Option<usize>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StageOutput {
    /// Hash-partition the output by `keys` (round-robin if none).
    Shuffle {
        keys: Vec<Expr>,
        partitions: u32,
    },
    Result,
}

/// What a stage's tasks run: the payload the driver ships.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagePlan {
    pub op: Op,
    /// The columns `op` produces.
    pub schema: Schema,
    pub output: StageOutput,
}

impl StagePlan {
    pub fn to_bytes(&self) -> Vec<u8> {
        // Encoding plain serde data into a Vec cannot fail.
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<StagePlan> {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map(|(p, _)| p)
            .map_err(|e| crate::exec_err!("a stage plan does not decode: {e}"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub id: u32,
    pub partitions: u32,
    /// The shuffles (stage ids) this stage reads.
    pub parents: Vec<u32>,
    pub plan: StagePlan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannerConfig {
    /// Reduce partitions of a shuffle (Spark's `spark.sql.shuffle.partitions`,
    /// whose default of 200 is far too many for small clusters).
    pub shuffle_partitions: u32,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            shuffle_partitions: 4,
        }
    }
}

/// The stages of `plan`, parents first; the last is the result stage.
pub fn cut(plan: &LogicalPlan, config: PlannerConfig) -> Result<Vec<Stage>> {
    let mut c = Cutter {
        stages: Vec::new(),
        config,
    };
    let (op, n) = c.plan(plan)?;
    let schema = plan.schema()?;
    let id = c.stages.len() as u32;
    let parents = shuffles_read(&op);
    c.stages.push(Stage {
        id,
        partitions: n,
        parents,
        plan: StagePlan {
            op,
            schema,
            output: StageOutput::Result,
        },
    });
    Ok(c.stages)
}

fn shuffles_read(op: &Op) -> Vec<u32> {
    let mut out = Vec::new();
    fn walk(op: &Op, out: &mut Vec<u32>) {
        match op {
            Op::Scan { .. } => {}
            Op::ShuffleRead { shuffle, .. } => {
                if !out.contains(shuffle) {
                    out.push(*shuffle)
                }
            }
            Op::Union { inputs } => inputs.iter().for_each(|(o, _)| walk(o, out)),
            Op::Project { input, .. }
            | Op::Filter { input, .. }
            | Op::Explode { input, .. }
            | Op::Aggregate { input, .. }
            | Op::Sort { input, .. }
            | Op::Limit { input, .. } => walk(input, out),
            Op::HashJoin { left, right, .. } => {
                walk(left, out);
                walk(right, out);
            }
        }
    }
    walk(op, &mut out);
    out
}

struct Cutter {
    stages: Vec<Stage>,
    config: PlannerConfig,
}

impl Cutter {
    /// Ends a stage that writes `op` as a shuffle and returns the read side.
    fn shuffle(&mut self, op: Op, n: u32, schema: Schema, keys: Vec<Expr>, partitions: u32) -> Op {
        let id = self.stages.len() as u32;
        let parents = shuffles_read(&op);
        self.stages.push(Stage {
            id,
            partitions: n,
            parents,
            plan: StagePlan {
                op,
                schema: schema.clone(),
                output: StageOutput::Shuffle { keys, partitions },
            },
        });
        Op::ShuffleRead {
            shuffle: id,
            schema,
        }
    }

    fn plan(&mut self, plan: &LogicalPlan) -> Result<(Op, u32)> {
        Ok(match plan {
            LogicalPlan::Scan { source, schema } => (
                Op::Scan {
                    source: source.clone(),
                    schema: schema.clone(),
                },
                source.partitions(),
            ),
            LogicalPlan::Alias { input, .. } => self.plan(input)?,
            LogicalPlan::Project { input, exprs } => {
                if let LogicalPlan::Explode {
                    input: inner,
                    expr,
                    separator,
                    name,
                } = input.as_ref()
                {
                    // Carry only the input columns the projection reads.
                    let in_schema = inner.schema()?;
                    let mut used = Vec::new();
                    for (e, _) in exprs {
                        e.columns(&mut used);
                    }
                    let keep: Vec<usize> = (0..in_schema.len())
                        .filter(|&i| {
                            used.iter().any(|u| {
                                in_schema.index_of(u).ok() == Some(i)
                                    && !u.eq_ignore_ascii_case(name)
                            })
                        })
                        .collect();
                    let mut fields: Vec<Field> =
                        keep.iter().map(|&i| in_schema.fields[i].clone()).collect();
                    fields.push(Field::new(name, crate::types::DataType::Utf8));
                    let (child, n) = self.plan(inner)?;
                    let exploded = Op::Explode {
                        input: Box::new(child),
                        schema: in_schema,
                        expr: expr.clone(),
                        separator: separator.clone(),
                        name: name.clone(),
                        keep,
                    };
                    (
                        Op::Project {
                            input: Box::new(exploded),
                            schema: Schema::new(fields),
                            exprs: exprs.clone(),
                        },
                        n,
                    )
                } else {
                    let (child, n) = self.plan(input)?;
                    (
                        Op::Project {
                            input: Box::new(child),
                            schema: input.schema()?,
                            exprs: exprs.clone(),
                        },
                        n,
                    )
                }
            }
            LogicalPlan::Filter { input, predicate } => {
                let (child, n) = self.plan(input)?;
                (
                    Op::Filter {
                        input: Box::new(child),
                        schema: input.schema()?,
                        predicate: predicate.clone(),
                    },
                    n,
                )
            }
            LogicalPlan::Explode {
                input,
                expr,
                separator,
                name,
            } => {
                let schema = input.schema()?;
                let (child, n) = self.plan(input)?;
                let keep = (0..schema.len()).collect();
                (
                    Op::Explode {
                        input: Box::new(child),
                        schema,
                        expr: expr.clone(),
                        separator: separator.clone(),
                        name: name.clone(),
                        keep,
                    },
                    n,
                )
            }
            LogicalPlan::Aggregate { input, group, aggs } => {
                self.aggregate(input, group.clone(), aggs.clone())?
            }
            LogicalPlan::Distinct { input } => {
                let schema = input.schema()?;
                let group = schema
                    .fields
                    .iter()
                    .map(|f| (col(f.qualified_name()), f.name.clone()))
                    .collect();
                self.aggregate(input, group, Vec::new())?
            }
            LogicalPlan::Join {
                left,
                right,
                kind,
                on,
                filter,
            } => {
                let (ls, rs) = (left.schema()?, right.schema()?);
                let p = self.config.shuffle_partitions;
                let (lop, ln) = self.plan(left)?;
                let lread = self.shuffle(
                    lop,
                    ln,
                    ls.clone(),
                    on.iter().map(|(l, _)| l.clone()).collect(),
                    p,
                );
                let (rop, rn) = self.plan(right)?;
                let rread = self.shuffle(
                    rop,
                    rn,
                    rs.clone(),
                    on.iter().map(|(_, r)| r.clone()).collect(),
                    p,
                );
                (
                    Op::HashJoin {
                        left: Box::new(lread),
                        right: Box::new(rread),
                        left_schema: ls,
                        right_schema: rs,
                        kind: *kind,
                        on: on.clone(),
                        filter: filter.clone(),
                    },
                    p,
                )
            }
            LogicalPlan::Sort { input, keys } => self.sort(input, keys, None)?,
            LogicalPlan::Limit { input, skip, fetch } => {
                let top = fetch.map(|f| f.saturating_add(*skip));
                if let LogicalPlan::Sort { input: inner, keys } = input.as_ref() {
                    // ORDER BY .. LIMIT k: every task keeps only its top k.
                    let (op, _) = self.sort(inner, keys, top)?;
                    return Ok((
                        Op::Limit {
                            input: Box::new(op),
                            skip: *skip,
                            fetch: *fetch,
                        },
                        1,
                    ));
                }
                let schema = input.schema()?;
                let (child, n) = self.plan(input)?;
                if n == 1 {
                    (
                        Op::Limit {
                            input: Box::new(child),
                            skip: *skip,
                            fetch: *fetch,
                        },
                        1,
                    )
                } else {
                    let local = Op::Limit {
                        input: Box::new(child),
                        skip: 0,
                        fetch: top,
                    };
                    let read = self.shuffle(local, n, schema, Vec::new(), 1);
                    (
                        Op::Limit {
                            input: Box::new(read),
                            skip: *skip,
                            fetch: *fetch,
                        },
                        1,
                    )
                }
            }
            LogicalPlan::Union { inputs } => {
                let mut children = Vec::new();
                let mut total = 0;
                for i in inputs {
                    let (op, n) = self.plan(i)?;
                    total += n;
                    children.push((op, n));
                }
                (Op::Union { inputs: children }, total)
            }
            LogicalPlan::Repartition {
                input,
                partitions,
                keys,
            } => {
                let schema = input.schema()?;
                let (child, n) = self.plan(input)?;
                (
                    self.shuffle(child, n, schema, keys.clone(), *partitions),
                    *partitions,
                )
            }
        })
    }

    fn sort(
        &mut self,
        input: &LogicalPlan,
        keys: &[SortKey],
        limit: Option<usize>,
    ) -> Result<(Op, u32)> {
        let schema = input.schema()?;
        let (child, n) = self.plan(input)?;
        let local = Op::Sort {
            input: Box::new(child),
            schema: schema.clone(),
            keys: keys.to_vec(),
            limit,
        };
        if n == 1 {
            return Ok((local, 1));
        }
        // Each task sorts (and cuts to the top k); one reducer merges.
        let read = self.shuffle(local, n, schema.clone(), Vec::new(), 1);
        Ok((
            Op::Sort {
                input: Box::new(read),
                schema,
                keys: keys.to_vec(),
                limit,
            },
            1,
        ))
    }

    fn aggregate(
        &mut self,
        input: &LogicalPlan,
        group: Vec<(Expr, String)>,
        aggs: Vec<(AggExpr, String)>,
    ) -> Result<(Op, u32)> {
        let schema = input.schema()?;
        let (child, n) = self.plan(input)?;
        let p = if group.is_empty() {
            1
        } else {
            self.config.shuffle_partitions
        };
        if decomposable(&aggs) {
            let pschema = partial_schema(&schema, &group, &aggs)?;
            let partial = Op::Aggregate {
                input: Box::new(child),
                schema: schema.clone(),
                mode: AggMode::Partial,
                group: group.clone(),
                aggs: aggs.clone(),
                original: schema.clone(),
            };
            let keys = group.iter().map(|(_, n)| col(n.clone())).collect();
            let read = self.shuffle(partial, n, pschema.clone(), keys, p);
            Ok((
                Op::Aggregate {
                    input: Box::new(read),
                    schema: pschema,
                    mode: AggMode::Final,
                    group,
                    aggs,
                    original: schema,
                },
                p,
            ))
        } else {
            let keys = group.iter().map(|(e, _)| e.clone()).collect();
            let read = self.shuffle(child, n, schema.clone(), keys, p);
            Ok((
                Op::Aggregate {
                    input: Box::new(read),
                    schema: schema.clone(),
                    mode: AggMode::Complete,
                    group,
                    aggs,
                    original: schema,
                },
                p,
            ))
        }
    }
}
