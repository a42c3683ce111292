//! The Dataset API: the same logical plans as SQL, built in Rust.
//!
//! ```no_run
//! use millrace_engine::dataset::Context;
//! use millrace_engine::expr::{col, lit, sum, count_star};
//! let ctx = Context::new();
//! let out = ctx.read_csv("sales.csv")?
//!     .filter(col("amount").gt(lit(0)))?
//!     .group_by(vec![col("region")])
//!     .agg(vec![sum(col("amount")), count_star()])?
//!     .collect()?;
//! # Ok::<(), millrace_engine::error::EngineError>(())
//! ```

use arrow::array::RecordBatch;

use crate::error::Result;
use crate::expr::{AggExpr, Expr};
use crate::local::run_local;
use crate::physical::PlannerConfig;
use crate::plan::{JoinKind, LogicalPlan, SortKey};
use crate::source::{Source, default_partitions};
use crate::sql::{Catalog, plan_sql};
use crate::types::{Schema, Value};

/// Where datasets start: file readers, in-memory tables, SQL.
#[derive(Default)]
pub struct Context {
    pub catalog: Catalog,
    pub config: PlannerConfig,
}

impl Context {
    pub fn new() -> Context {
        Context::default()
    }

    fn file(&self, source: Source) -> Result<Dataset> {
        Ok(Dataset {
            plan: LogicalPlan::scan(source)?,
            config: self.config,
        })
    }

    pub fn read_csv(&self, path: &str) -> Result<Dataset> {
        self.file(Source::Csv {
            path: path.to_string(),
            delimiter: b',',
            partitions: default_partitions(path)?,
        })
    }
    pub fn read_json(&self, path: &str) -> Result<Dataset> {
        self.file(Source::Json {
            path: path.to_string(),
            partitions: default_partitions(path)?,
        })
    }
    pub fn read_parquet(&self, path: &str) -> Result<Dataset> {
        self.file(Source::Parquet {
            path: path.to_string(),
            partitions: default_partitions(path)?,
        })
    }
    pub fn read_text(&self, path: &str) -> Result<Dataset> {
        self.file(Source::Text {
            path: path.to_string(),
            partitions: default_partitions(path)?,
        })
    }
    /// A topic as the input of a stream query (`Dataset::stream_plan`):
    /// its values parsed as `format` (`json` or `csv`) with `schema`
    /// (`'user STRING, ts TIMESTAMP'`), beside the columns key, value,
    /// partition, offset, timestamp. Each micro-batch fixes the offsets it
    /// reads; run as a batch job it reads nothing.
    pub fn read_topic(&self, topic: &str, format: &str, schema: &str) -> Result<Dataset> {
        self.topic(topic, format, schema, false)
    }

    /// A topic read as a table (`topic_table()` in SQL): the latest record
    /// per key, to join a stream with.
    pub fn read_topic_table(&self, topic: &str, format: &str, schema: &str) -> Result<Dataset> {
        self.topic(topic, format, schema, true)
    }

    fn topic(&self, topic: &str, format: &str, schema: &str, table: bool) -> Result<Dataset> {
        let format = Some(crate::topic_format::TopicFormat::parse(format, schema)?);
        self.file(Source::Topic { topic: topic.to_string(), ranges: Vec::new(), format, table })
    }

    pub fn from_rows(
        &self,
        schema: Schema,
        rows: Vec<Vec<Value>>,
        partitions: u32,
    ) -> Result<Dataset> {
        self.file(Source::Memory {
            schema,
            rows,
            partitions,
        })
    }

    /// Names a dataset so SQL can use it.
    pub fn register(&mut self, name: &str, ds: &Dataset) {
        self.catalog.register(name, ds.plan.clone());
    }

    pub fn sql(&self, query: &str) -> Result<Dataset> {
        Ok(Dataset {
            plan: plan_sql(query, &self.catalog)?,
            config: self.config,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub plan: LogicalPlan,
    config: PlannerConfig,
}

/// A dataset waiting for its aggregates.
pub struct Grouped {
    ds: Dataset,
    keys: Vec<Expr>,
}

fn name_of(e: &Expr) -> String {
    match e {
        Expr::Column(c) => c.rsplit('.').next().unwrap_or(c).to_string(),
        other => other.to_string(),
    }
}

impl Dataset {
    fn with(&self, plan: LogicalPlan) -> Dataset {
        Dataset {
            plan,
            config: self.config,
        }
    }

    pub fn schema(&self) -> Result<Schema> {
        self.plan.schema()
    }

    pub fn filter(self, predicate: Expr) -> Result<Dataset> {
        Ok(self.with(self.plan.clone().filter(predicate)?))
    }

    /// Keeps the given expressions, named after their columns or text.
    pub fn select(self, exprs: Vec<Expr>) -> Result<Dataset> {
        let named = exprs
            .into_iter()
            .map(|e| (e.clone(), name_of(&e)))
            .collect();
        Ok(self.with(self.plan.clone().project(named)?))
    }

    pub fn select_as(self, exprs: Vec<(Expr, &str)>) -> Result<Dataset> {
        Ok(self.with(
            self.plan
                .clone()
                .project(exprs.into_iter().map(|(e, n)| (e, n.to_string())).collect())?,
        ))
    }

    /// Adds a column computed from the others.
    pub fn with_column(self, name: &str, e: Expr) -> Result<Dataset> {
        let s = self.plan.schema()?;
        let mut exprs: Vec<(Expr, String)> = s
            .fields
            .iter()
            .map(|f| (crate::expr::col(f.qualified_name()), f.name.clone()))
            .collect();
        exprs.push((e, name.to_string()));
        Ok(self.with(self.plan.clone().project(exprs)?))
    }

    /// Flat-map: one row per non-empty piece of `e` split on `separator`.
    pub fn explode_split(self, e: Expr, separator: &str, name: &str) -> Result<Dataset> {
        Ok(self.with(self.plan.clone().explode(e, separator, name)?))
    }

    /// Event-time windows of `size` every `slide` (tumbling when `None`)
    /// over the TIMESTAMP `time`, adding `window_start` and `window_end`:
    /// `ds.window(col("ts"), "10 minutes", Some("5 minutes"))?.group_by(vec![col("window_start"), col("window_end")])`.
    pub fn window(self, time: Expr, size: &str, slide: Option<&str>) -> Result<Dataset> {
        let size_ms = crate::time::parse_interval(size)?;
        let slide_ms = match slide {
            Some(s) => crate::time::parse_interval(s)?,
            None => size_ms,
        };
        Ok(self.with(self.plan.clone().time_window(time, size_ms, slide_ms)?))
    }

    pub fn group_by(self, keys: Vec<Expr>) -> Grouped {
        Grouped { ds: self, keys }
    }

    pub fn join(self, right: Dataset, kind: JoinKind, on: Vec<(Expr, Expr)>) -> Result<Dataset> {
        Ok(self.with(self.plan.clone().join(right.plan, kind, on, None)?))
    }

    pub fn sort(self, keys: Vec<SortKey>) -> Result<Dataset> {
        Ok(self.with(self.plan.clone().sort(keys)?))
    }

    pub fn limit(self, n: usize) -> Dataset {
        self.with(self.plan.clone().limit(0, Some(n)))
    }

    pub fn distinct(self) -> Dataset {
        self.with(self.plan.clone().distinct())
    }

    pub fn union(self, other: Dataset) -> Result<Dataset> {
        Ok(self.with(LogicalPlan::union(vec![self.plan.clone(), other.plan])?))
    }

    pub fn repartition(self, partitions: u32, keys: Vec<Expr>) -> Result<Dataset> {
        Ok(self.with(self.plan.clone().repartition(partitions, keys)?))
    }

    pub fn alias(self, name: &str) -> Dataset {
        self.with(self.plan.clone().alias(name))
    }

    /// This dataset as a stream query writing to topic `sink`: it must
    /// read one topic (`Context::read_topic`), plus tables; the same checks
    /// as SQL's `INSERT INTO sink SELECT ...`.
    pub fn stream_plan(&self, sink: &str, options: crate::stream::StreamOptions) -> Result<crate::stream::StreamPlan> {
        crate::stream::StreamPlan::from_plan(self.plan.clone(), sink, options)
    }

    /// Runs the plan in this thread and returns its rows.
    pub fn collect(&self) -> Result<Vec<RecordBatch>> {
        run_local(&self.plan, self.config, None)
    }
}

impl Grouped {
    /// Aggregates named like SQL's defaults (`sum(v)`, `count(*)`).
    pub fn agg(self, aggs: Vec<AggExpr>) -> Result<Dataset> {
        let group = self.keys.iter().map(|k| (k.clone(), name_of(k))).collect();
        let aggs = aggs
            .into_iter()
            .map(|a| (a.clone(), a.to_string()))
            .collect();
        Ok(self.ds.with(self.ds.plan.clone().aggregate(group, aggs)?))
    }
}
