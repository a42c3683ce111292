//! Random tables and plans for property tests and the batch chaos suite
//! (feature `testing`): a table of four columns with NULLs, and plans of
//! one to three steps over it — filters, projections, aggregates, joins of
//! every kind, sorts with limits, distinct, union, explode, repartition —
//! each step keeping the table's schema so steps compose (an aggregate
//! ends the plan). They are proptest strategies, so a failing case
//! shrinks; [`sample`] draws one from a seed, for harnesses that are not
//! proptests.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use crate::expr::{AggExpr, AggFunc, BinaryOp, Expr, ScalarFunc, col, lit};
use crate::plan::{JoinKind, LogicalPlan, SortKey};
use crate::reference::{Row, same_rows};
use crate::source::Source;
use crate::types::{DataType, Field, Schema, Value};

/// The random tables' columns: k (small ints), v, f (quarters), s (a few words).
pub fn schema() -> Schema {
    Schema::new(vec![
        Field::new("k", DataType::Int64),
        Field::new("v", DataType::Int64),
        Field::new("f", DataType::Float64),
        Field::new("s", DataType::Utf8),
    ])
}

fn value_int(range: i64) -> impl Strategy<Value = Value> {
    prop_oneof![1 => Just(Value::Null), 6 => (-range..range).prop_map(Value::Int)]
}

fn value_str() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        6 => prop::sample::select(vec!["a", "b b", "Cat dog", "", "a c", "éte x", "dog"]).prop_map(|s| Value::Str(s.to_string())),
    ]
}

/// Up to `max` rows of [`schema`], with NULLs.
pub fn rows(max: usize) -> impl Strategy<Value = Vec<Vec<Value>>> {
    prop::collection::vec(
        (value_int(5), value_int(100), prop_oneof![1 => Just(Value::Null), 6 => (-50i32..50).prop_map(|x| Value::Float(x as f64 / 4.0))], value_str())
            .prop_map(|(a, b, c, d)| vec![a, b, c, d]),
        0..max,
    )
}

/// An in-memory table of [`schema`] split into `partitions`.
pub fn table(rows: Vec<Vec<Value>>, partitions: u32) -> LogicalPlan {
    LogicalPlan::scan(Source::Memory {
        schema: schema(),
        rows,
        partitions,
    })
    .unwrap()
}

/// A numeric expression over k, v, f.
pub fn num_expr() -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        Just(col("k")),
        Just(col("v")),
        Just(col("f")),
        (-3i64..4).prop_map(lit)
    ];
    leaf.prop_recursive(2, 8, 2, |inner| {
        prop_oneof![
            (
                inner.clone(),
                inner.clone(),
                prop::sample::select(vec![
                    BinaryOp::Plus,
                    BinaryOp::Minus,
                    BinaryOp::Multiply,
                    BinaryOp::Divide,
                    BinaryOp::Modulo
                ])
            )
                .prop_map(|(l, r, op)| Expr::Binary {
                    op,
                    left: Box::new(l),
                    right: Box::new(r)
                }),
            inner.clone().prop_map(|e| Expr::Negate(Box::new(e))),
            inner
                .clone()
                .prop_map(|e| Expr::call(ScalarFunc::Abs, vec![e])),
            (inner.clone(), inner).prop_map(|(a, b)| Expr::call(ScalarFunc::Coalesce, vec![a, b])),
        ]
    })
}

/// A string expression over the columns.
pub fn str_expr() -> impl Strategy<Value = Expr> {
    prop_oneof![
        Just(col("s")),
        Just(Expr::call(ScalarFunc::Upper, vec![col("s")])),
        Just(Expr::call(
            ScalarFunc::Substring,
            vec![col("s"), lit(2), lit(2)]
        )),
        Just(Expr::call(
            ScalarFunc::Concat,
            vec![col("s"), lit("-"), col("k").cast(DataType::Utf8)]
        )),
        Just(Expr::Binary {
            op: BinaryOp::Concat,
            left: Box::new(col("s")),
            right: Box::new(lit("!"))
        }),
        Just(Expr::Case {
            operand: None,
            branches: vec![
                (col("k").gt(lit(0)), lit("pos")),
                (col("k").lt(lit(0)), col("s"))
            ],
            otherwise: None
        }),
    ]
}

/// A boolean expression over the columns.
pub fn predicate() -> impl Strategy<Value = Expr> {
    let atom = prop_oneof![
        (
            num_expr(),
            num_expr(),
            prop::sample::select(vec![
                BinaryOp::Eq,
                BinaryOp::NotEq,
                BinaryOp::Lt,
                BinaryOp::LtEq,
                BinaryOp::Gt,
                BinaryOp::GtEq
            ])
        )
            .prop_map(|(l, r, op)| Expr::Binary {
                op,
                left: Box::new(l),
                right: Box::new(r)
            }),
        Just(col("s").like("%a%")),
        Just(Expr::Like {
            expr: Box::new(col("s")),
            pattern: "c_T%".into(),
            negated: true,
            case_insensitive: true
        }),
        Just(col("v").is_null()),
        Just(Expr::InList {
            expr: Box::new(col("k")),
            list: vec![lit(1), lit(2), Expr::Literal(Value::Null)],
            negated: false
        }),
        Just(Expr::InList {
            expr: Box::new(col("k")),
            list: vec![lit(1), lit(-2)],
            negated: true
        }),
        Just(Expr::call(ScalarFunc::Length, vec![col("s")]).gt_eq(lit(3))),
    ];
    atom.prop_recursive(2, 6, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| a.and(b)),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| a.or(b)),
            inner.prop_map(|a| a.not()),
        ]
    })
}

/// An aggregate over the columns.
pub fn agg() -> impl Strategy<Value = AggExpr> {
    prop_oneof![
        Just(AggExpr {
            func: AggFunc::CountStar,
            arg: None
        }),
        num_expr().prop_map(|e| AggExpr {
            func: AggFunc::Count,
            arg: Some(e)
        }),
        Just(AggExpr {
            func: AggFunc::Sum,
            arg: Some(col("v"))
        }),
        Just(AggExpr {
            func: AggFunc::Sum,
            arg: Some(col("f"))
        }),
        Just(AggExpr {
            func: AggFunc::Min,
            arg: Some(col("s"))
        }),
        Just(AggExpr {
            func: AggFunc::Max,
            arg: Some(col("f"))
        }),
        Just(AggExpr {
            func: AggFunc::Min,
            arg: Some(col("v"))
        }),
        Just(AggExpr {
            func: AggFunc::Avg,
            arg: Some(col("v"))
        }),
        Just(AggExpr {
            func: AggFunc::CountDistinct,
            arg: Some(col("s"))
        }),
    ]
}

/// One step of a random plan.
#[derive(Debug, Clone)]
pub enum Shape {
    Filter(Expr),
    Project(Expr, Expr),
    Aggregate(Vec<Expr>, Vec<AggExpr>),
    Join(JoinKind, Vec<Vec<Value>>, u32, Option<Expr>),
    SortLimit(bool, Option<usize>, usize),
    Distinct,
    Union(Vec<Vec<Value>>),
    Explode,
    Repartition(u32, bool),
}

/// A random step.
pub fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        predicate().prop_map(Shape::Filter),
        (num_expr(), str_expr()).prop_map(|(a, b)| Shape::Project(a, b)),
        (
            prop::sample::subsequence(vec![col("k"), col("s"), col("v").modulo(lit(3))], 0..=2),
            prop::collection::vec(agg(), 1..4)
        )
            .prop_map(|(g, a)| Shape::Aggregate(g, a)),
        (
            prop::sample::select(vec![
                JoinKind::Inner,
                JoinKind::Left,
                JoinKind::Right,
                JoinKind::Full
            ]),
            rows(12),
            1u32..3,
            prop::option::of(Just(col("r.v").lt(col("l.v"))))
        )
            .prop_map(|(k, r, p, f)| Shape::Join(k, r, p, f)),
        (any::<bool>(), prop::option::of(0usize..8), 0usize..3)
            .prop_map(|(d, l, s)| Shape::SortLimit(d, l, s)),
        Just(Shape::Distinct),
        rows(10).prop_map(Shape::Union),
        Just(Shape::Explode),
        (1u32..5, any::<bool>()).prop_map(|(p, k)| Shape::Repartition(p, k)),
    ]
}

/// Applies a shape to a plan whose schema is (k, v, f, s); returns a
/// plan of the same schema so shapes compose, or a final aggregate.
pub fn apply(plan: LogicalPlan, s: &Shape) -> (LogicalPlan, bool) {
    let keep = |p: LogicalPlan| p;
    match s {
        Shape::Filter(e) => (plan.filter(e.clone()).unwrap(), false),
        Shape::Project(n, st) => {
            let p = plan
                .project(vec![
                    (n.clone().cast(DataType::Int64), "k".into()),
                    (col("v"), "v".into()),
                    (col("f") + col("k").cast(DataType::Float64), "f".into()),
                    (st.clone(), "s".into()),
                ])
                .unwrap();
            (p, false)
        }
        Shape::Aggregate(g, a) => {
            let group = g
                .iter()
                .enumerate()
                .map(|(i, e)| (e.clone(), format!("g{i}")))
                .collect();
            let aggs = a
                .iter()
                .enumerate()
                .map(|(i, e)| (e.clone(), format!("a{i}")))
                .collect();
            (plan.aggregate(group, aggs).unwrap(), true)
        }
        Shape::Join(kind, r, parts, filter) => {
            let right = table(r.clone(), *parts).alias("r");
            let j = plan
                .alias("l")
                .join(right, *kind, vec![(col("l.k"), col("r.k"))], filter.clone())
                .unwrap();
            let p = j
                .project(vec![
                    (
                        Expr::call(ScalarFunc::Coalesce, vec![col("l.k"), col("r.k")]),
                        "k".into(),
                    ),
                    (col("r.v"), "v".into()),
                    (col("l.f"), "f".into()),
                    (
                        Expr::call(ScalarFunc::Concat, vec![col("l.s"), col("r.s")]),
                        "s".into(),
                    ),
                ])
                .unwrap();
            (keep(p), false)
        }
        Shape::SortLimit(desc, limit, skip) => {
            let key = |e: Expr| {
                if *desc {
                    SortKey::desc(e)
                } else {
                    SortKey::asc(e)
                }
            };
            // Sort on every column so ties cannot reorder rows.
            let p = plan
                .sort(vec![
                    key(col("k")),
                    key(col("v")),
                    key(col("f")),
                    key(col("s")),
                ])
                .unwrap();
            match limit {
                Some(l) => (p.limit(*skip, Some(*l)), false),
                None => (p, false),
            }
        }
        Shape::Distinct => (plan.distinct(), false),
        Shape::Union(r) => (
            LogicalPlan::union(vec![plan, table(r.clone(), 2)]).unwrap(),
            false,
        ),
        Shape::Explode => {
            let p = plan
                .explode(col("s"), " ", "w")
                .unwrap()
                .project(vec![
                    (col("k"), "k".into()),
                    (col("v"), "v".into()),
                    (col("f"), "f".into()),
                    (col("w"), "s".into()),
                ])
                .unwrap();
            (p, false)
        }
        Shape::Repartition(n, by_key) => (
            plan.repartition(*n, if *by_key { vec![col("s")] } else { vec![] })
                .unwrap(),
            false,
        ),
    }
}

/// A random plan and what its result may be compared on.
#[derive(Debug, Clone)]
pub struct RandomPlan {
    pub plan: LogicalPlan,
    /// The steps applied, in order.
    pub shapes: Vec<Shape>,
    /// The planner's reduce partitions for it.
    pub shuffle_partitions: u32,
}

impl RandomPlan {
    /// Whether the result's row order is defined: the last step is a sort
    /// on every column.
    pub fn ordered(&self) -> bool {
        matches!(self.shapes.last(), Some(Shape::SortLimit(..)))
    }

    /// Whether a limit is followed by more steps: which rows it keeps is
    /// then not defined, so only the row count can be compared.
    pub fn limit_unordered(&self) -> bool {
        self.shapes
            .iter()
            .enumerate()
            .any(|(i, s)| matches!(s, Shape::SortLimit(_, Some(_), _)) && i + 1 < self.shapes.len())
    }

    /// Compares a result with the reference evaluator's rows: the same
    /// rows (in order when [`RandomPlan::ordered`]), or only as many when
    /// [`RandomPlan::limit_unordered`].
    pub fn compare(&self, actual: &[Row], expected: &[Row]) -> Result<(), String> {
        if self.limit_unordered() {
            if actual.len() != expected.len() {
                return Err(format!(
                    "{} rows, expected {}",
                    actual.len(),
                    expected.len()
                ));
            }
            return Ok(());
        }
        same_rows(actual, expected, self.ordered())
    }
}

/// A random plan over a random table: 0–39 rows in 1–4 partitions, one to
/// three steps (stopping after an aggregate), 1–3 reduce partitions.
pub fn random_plan() -> impl Strategy<Value = RandomPlan> {
    (
        rows(40),
        1u32..5,
        prop::collection::vec(shape(), 1..4),
        1u32..4,
    )
        .prop_map(|(data, parts, shapes, shuffle_partitions)| {
            let mut plan = table(data, parts);
            let mut used = Vec::new();
            for s in &shapes {
                let (p, is_agg) = apply(plan, s);
                plan = p;
                used.push(s.clone());
                if is_agg {
                    break;
                }
            }
            RandomPlan {
                plan,
                shapes: used,
                shuffle_partitions,
            }
        })
}

/// One value of `strategy`, drawn deterministically from `seed` (the same
/// seed gives the same value with the same proptest version).
pub fn sample<S: Strategy>(strategy: &S, seed: u64) -> S::Value {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&(!seed).to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    match strategy.new_tree(&mut runner) {
        Ok(tree) => tree.current(),
        // The strategies here never reject; a filter that did would be a
        // bug in the generator.
        Err(e) => panic!("strategy rejected every value: {e}"),
    }
}
