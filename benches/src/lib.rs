//! Benchmarks live in `benches/` (criterion) and in scripts beside this crate.
