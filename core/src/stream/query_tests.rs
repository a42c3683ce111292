use super::*;
use crate::stream::SourceRange;

fn config(trigger: Trigger) -> QueryConfig {
    QueryConfig { inputs: vec!["in".into()], trigger, ..QueryConfig::default() }
}

fn listed(hws: &[i64]) -> QueryInput {
    QueryInput::Listed {
        ends: hws
            .iter()
            .enumerate()
            .map(|(p, &hw)| PartitionEnd { topic: "in".into(), partition: p as i32, log_start: 0, high_watermark: hw })
            .collect(),
    }
}

fn logged(batch: BatchId, ranges: &[(i64, i64)], watermark: Option<i64>) -> OffsetEntry {
    OffsetEntry {
        batch,
        ranges: ranges
            .iter()
            .enumerate()
            .map(|(p, &(start, end))| SourceRange { topic: "in".into(), partition: p as i32, start, end })
            .collect(),
        tables: Vec::new(),
        watermark,
        planned_at: 0,
    }
}

fn result(max_event_time: Option<i64>, sink_next: Vec<(i32, i32)>) -> BatchResult {
    BatchResult { max_event_time, sink_next, input_rows: 1, output_records: 1 }
}

/// Steps and returns the effects.
fn step(q: &mut StreamQuery, now: Millis, input: QueryInput) -> Vec<QueryEffect> {
    let mut out = vec![];
    q.step(now, input, &mut out);
    out
}

fn only<T: std::fmt::Debug>(mut v: Vec<T>) -> T {
    assert_eq!(v.len(), 1, "{v:?}");
    v.pop().unwrap()
}

/// Logs the offsets as asked (this runner wins), returns the run effect.
fn log_and_run(q: &mut StreamQuery, now: Millis, effects: Vec<QueryEffect>) -> QueryEffect {
    let QueryEffect::LogOffsets { entry } = only(effects) else { panic!("expected LogOffsets") };
    only(step(q, now, QueryInput::OffsetsLogged { winner: entry }))
}

#[test]
fn a_fresh_latest_query_commits_an_empty_batch_0_to_fix_its_start() {
    let mut q = StreamQuery::new(config(Trigger::Interval { interval_ms: 1000 }));
    let mut out = vec![];
    q.start(&mut out);
    assert_eq!(out, vec![QueryEffect::ReadLogs]);
    assert_eq!(only(step(&mut q, 5, QueryInput::Recovered { offsets: vec![], commits: vec![] })), QueryEffect::List { topics: vec!["in".into()] });
    let effects = step(&mut q, 6, listed(&[7, 3]));
    let QueryEffect::LogCommit { entry: commit } = log_and_run(&mut q, 6, effects) else { panic!("batch 0 has nothing to run") };
    assert_eq!((commit.batch, commit.input_rows), (0, 0));
    let out = step(&mut q, 7, QueryInput::CommitLogged { batch: 0 });
    assert!(matches!(&out[..], [QueryEffect::Progress(p), QueryEffect::Timer { at: 1000 }] if p.batch == 0));
    // Next batch reads from where batch 0 fixed the start.
    assert_eq!(only(step(&mut q, 1000, QueryInput::Tick)), QueryEffect::List { topics: vec!["in".into()] });
    let effects = step(&mut q, 1001, listed(&[9, 3]));
    let QueryEffect::RunBatch { entry, state_version, sink_base } = log_and_run(&mut q, 1001, effects) else { panic!() };
    assert_eq!(entry.ranges.iter().map(|r| (r.start, r.end)).collect::<Vec<_>>(), vec![(7, 9), (3, 3)]);
    assert_eq!((entry.batch, state_version, sink_base), (1, None, vec![]));
}

#[test]
fn a_pending_batch_runs_again_as_logged_with_the_committed_state_and_sequences() {
    let mut q = StreamQuery::new(QueryConfig { stateful: true, ..config(Trigger::Interval { interval_ms: 100 }) });
    let commit0 = CommitEntry {
        batch: 0,
        max_event_time: Some(50),
        sink_next: vec![(0, 4)],
        input_rows: 3,
        output_records: 4,
        state_version: Some(0),
    };
    let pending = logged(1, &[(3, 10)], Some(40));
    let out = step(&mut q, 0, QueryInput::Recovered { offsets: vec![logged(0, &[(0, 3)], None), pending.clone()], commits: vec![commit0] });
    assert_eq!(only(out), QueryEffect::RunBatch { entry: pending, state_version: Some(0), sink_base: vec![(0, 4)] });
}

#[test]
fn another_runner_s_entry_wins_and_a_broken_one_stops_the_query() {
    let mut q = StreamQuery::new(QueryConfig { start_at: StartAt::Earliest, ..config(Trigger::Interval { interval_ms: 0 }) });
    step(&mut q, 0, QueryInput::Recovered { offsets: vec![], commits: vec![] });
    let QueryEffect::LogOffsets { entry: mine } = only(step(&mut q, 0, listed(&[10]))) else { panic!() };
    assert_eq!(mine.ranges[0].end, 10);
    let theirs = logged(0, &[(0, 8)], None);
    let QueryEffect::RunBatch { entry, .. } = only(step(&mut q, 1, QueryInput::OffsetsLogged { winner: theirs.clone() })) else { panic!() };
    assert_eq!(entry, theirs);
    step(&mut q, 2, QueryInput::BatchDone { batch: 0, result: result(None, vec![]) });
    step(&mut q, 3, QueryInput::CommitLogged { batch: 0 });
    // Batch 1 is planned from 8, but a winner starting at 9 skips input.
    let QueryEffect::LogOffsets { entry: mine } = only(step(&mut q, 4, listed(&[12]))) else { panic!() };
    assert_eq!(mine.ranges[0].start, 8);
    let out = step(&mut q, 5, QueryInput::OffsetsLogged { winner: logged(1, &[(9, 12)], None) });
    assert!(matches!(&out[..], [QueryEffect::Stopped { error: Some(StreamError::RangesNotContiguous { .. }) }]), "{out:?}");
    assert!(q.is_stopped());
}

#[test]
fn an_outrun_runner_reads_the_logs_again_and_resumes_from_the_purged_logs() {
    let mut q = StreamQuery::new(QueryConfig { start_at: StartAt::Earliest, ..config(Trigger::Interval { interval_ms: 0 }) });
    step(&mut q, 0, QueryInput::Recovered { offsets: vec![], commits: vec![] });
    let QueryEffect::LogOffsets { entry: mine } = only(step(&mut q, 0, listed(&[10]))) else { panic!() };
    // An outrun for another batch is not this one's answer.
    assert!(step(&mut q, 1, QueryInput::Outrun { batch: 7, floor: 9 }).is_empty());
    assert_eq!(only(step(&mut q, 1, QueryInput::Outrun { batch: mine.batch, floor: 5 })), QueryEffect::ReadLogs);
    // The logs now start at batch 5 (0..=4 purged by the runner that won).
    let c = |batch| CommitEntry { batch, max_event_time: None, sink_next: vec![(0, 9)], input_rows: 1, output_records: 1, state_version: None };
    let out = step(&mut q, 2, QueryInput::Recovered { offsets: vec![logged(5, &[(0, 20)], None), logged(6, &[(20, 25)], None)], commits: vec![c(5)] });
    assert_eq!(only(out), QueryEffect::RunBatch { entry: logged(6, &[(20, 25)], None), state_version: None, sink_base: vec![(0, 9)] });
}

#[test]
fn the_watermark_follows_the_largest_event_time_and_a_move_runs_a_no_data_batch() {
    let mut q = StreamQuery::new(QueryConfig {
        stateful: true,
        watermark_delay_ms: Some(10),
        start_at: StartAt::Earliest,
        ..config(Trigger::Interval { interval_ms: 0 })
    });
    step(&mut q, 0, QueryInput::Recovered { offsets: vec![], commits: vec![] });
    let effects = step(&mut q, 0, listed(&[5]));
    let QueryEffect::RunBatch { entry, .. } = log_and_run(&mut q, 0, effects) else { panic!() };
    assert_eq!(entry.watermark, None);
    step(&mut q, 1, QueryInput::BatchDone { batch: 0, result: result(Some(100), vec![(0, 1)]) });
    let out = step(&mut q, 2, QueryInput::CommitLogged { batch: 0 });
    assert!(matches!(out.last(), Some(QueryEffect::List { .. })));
    // No new input, but the watermark moves from none to 90: batch 1 runs.
    let effects = step(&mut q, 3, listed(&[5]));
    let QueryEffect::RunBatch { entry, state_version, sink_base } = log_and_run(&mut q, 3, effects) else { panic!() };
    assert_eq!((entry.watermark, entry.input_records(), state_version, sink_base), (Some(90), 0, Some(0), vec![(0, 1)]));
    // A batch whose events are older does not move it back.
    step(&mut q, 4, QueryInput::BatchDone { batch: 1, result: result(Some(20), vec![(0, 1)]) });
    step(&mut q, 5, QueryInput::CommitLogged { batch: 1 });
    let effects = step(&mut q, 6, listed(&[6]));
    let QueryEffect::RunBatch { entry, .. } = log_and_run(&mut q, 6, effects) else { panic!() };
    assert_eq!(entry.watermark, Some(90));
    // Nothing new and the watermark still: no batch, the query waits.
    step(&mut q, 7, QueryInput::BatchDone { batch: 2, result: result(None, vec![(0, 1)]) });
    step(&mut q, 8, QueryInput::CommitLogged { batch: 2 });
    let out = step(&mut q, 9, listed(&[6]));
    assert!(matches!(&out[..], [QueryEffect::List { .. }] | [QueryEffect::Timer { .. }]), "{out:?}");
    assert_eq!(q.last_committed().unwrap().0.batch, 2);
}

#[test]
fn failures_are_retried_after_a_backoff_then_stop_the_query() {
    let mut q = StreamQuery::new(QueryConfig { start_at: StartAt::Earliest, max_batch_failures: 2, ..config(Trigger::Once) });
    step(&mut q, 0, QueryInput::Recovered { offsets: vec![], commits: vec![] });
    let effects = step(&mut q, 0, listed(&[5]));
    let run = log_and_run(&mut q, 0, effects);
    let out = step(&mut q, 10, QueryInput::BatchFailed { batch: 0, reason: "worker lost".into() });
    assert_eq!(out, vec![QueryEffect::Timer { at: 510 }]);
    assert!(step(&mut q, 100, QueryInput::Tick).is_empty());
    assert_eq!(only(step(&mut q, 510, QueryInput::Tick)), run);
    let out = step(&mut q, 600, QueryInput::BatchFailed { batch: 0, reason: "disk full".into() });
    assert!(matches!(&out[..], [QueryEffect::Stopped { error: Some(StreamError::BatchFailed { attempts: 2, reason, .. }) }] if reason == "disk full"));
}

#[test]
fn a_failed_read_of_the_logs_is_retried() {
    let mut q = StreamQuery::new(config(Trigger::Once));
    assert_eq!(step(&mut q, 0, QueryInput::IoFailed { reason: "no broker".into() }), vec![QueryEffect::Timer { at: 500 }]);
    assert!(step(&mut q, 499, QueryInput::Tick).is_empty());
    assert_eq!(step(&mut q, 500, QueryInput::Tick), vec![QueryEffect::ReadLogs]);
    assert_eq!(q.status(), QueryStatus::Recovering);
}

#[test]
fn io_failures_retry_the_same_append() {
    let mut q = StreamQuery::new(QueryConfig { start_at: StartAt::Earliest, ..config(Trigger::Once) });
    step(&mut q, 0, QueryInput::Recovered { offsets: vec![], commits: vec![] });
    let log = only(step(&mut q, 0, listed(&[5])));
    assert_eq!(step(&mut q, 1, QueryInput::IoFailed { reason: "timeout".into() }), vec![QueryEffect::Timer { at: 501 }]);
    assert_eq!(only(step(&mut q, 501, QueryInput::Tick)), log);
}

#[test]
fn once_runs_one_batch_and_available_now_stops_at_the_first_listing_s_ends() {
    let mut q = StreamQuery::new(QueryConfig { start_at: StartAt::Earliest, ..config(Trigger::Once) });
    step(&mut q, 0, QueryInput::Recovered { offsets: vec![], commits: vec![] });
    let effects = step(&mut q, 0, listed(&[5]));
    log_and_run(&mut q, 0, effects);
    step(&mut q, 1, QueryInput::BatchDone { batch: 0, result: result(None, vec![]) });
    let out = step(&mut q, 2, QueryInput::CommitLogged { batch: 0 });
    assert!(matches!(out.last(), Some(QueryEffect::Stopped { error: None })), "{out:?}");

    let mut q = StreamQuery::new(QueryConfig { start_at: StartAt::Earliest, max_records_per_batch: Some(4), ..config(Trigger::AvailableNow) });
    step(&mut q, 0, QueryInput::Recovered { offsets: vec![], commits: vec![] });
    let mut ends = vec![];
    let mut hw = 10;
    let mut effects = step(&mut q, 0, listed(&[hw]));
    for batch in 0.. {
        match log_and_run(&mut q, 0, effects) {
            QueryEffect::RunBatch { entry, .. } => {
                ends.push(entry.ranges[0].end);
                step(&mut q, 1, QueryInput::BatchDone { batch, result: result(None, vec![]) });
                step(&mut q, 2, QueryInput::CommitLogged { batch });
            }
            other => panic!("{other:?}"),
        }
        hw += 3; // producers keep writing
        effects = step(&mut q, 3, listed(&[hw]));
        if matches!(effects.last(), Some(QueryEffect::Stopped { .. })) {
            break;
        }
    }
    assert_eq!(ends, vec![4, 8, 10]);
}

#[test]
fn lost_input_stops_the_query_with_its_reason() {
    let mut q = StreamQuery::new(config(Trigger::Interval { interval_ms: 0 }));
    let commit = CommitEntry { batch: 0, max_event_time: None, sink_next: vec![], input_rows: 0, output_records: 0, state_version: None };
    step(&mut q, 0, QueryInput::Recovered { offsets: vec![logged(0, &[(0, 4)], None)], commits: vec![commit] });
    let out = step(&mut q, 1, QueryInput::Listed {
        ends: vec![PartitionEnd { topic: "in".into(), partition: 0, log_start: 6, high_watermark: 9 }],
    });
    let [QueryEffect::Stopped { error: Some(e) }] = &out[..] else { panic!("{out:?}") };
    assert!(e.to_string().contains("records 4..6 were deleted"), "{e}");
    assert!(matches!(q.status(), QueryStatus::Stopped { error: Some(_) }));
}

#[test]
fn each_batch_fixes_a_snapshot_of_its_tables_and_a_re_run_reads_that_one() {
    let mut q = StreamQuery::new(QueryConfig { tables: vec!["users".into()], start_at: StartAt::Earliest, ..config(Trigger::Interval { interval_ms: 0 }) });
    // The listing asks for the table's partitions too.
    let out = step(&mut q, 0, QueryInput::Recovered { offsets: vec![], commits: vec![] });
    assert_eq!(only(out), QueryEffect::List { topics: vec!["in".into(), "users".into()] });
    let table = |p: i32, log_start: i64, hw: i64| PartitionEnd { topic: "users".into(), partition: p, log_start, high_watermark: hw };
    let QueryInput::Listed { mut ends } = listed(&[4]) else { panic!() };
    ends.extend([table(1, 0, 3), table(0, 2, 7)]);
    let effects = step(&mut q, 2, QueryInput::Listed { ends });
    let QueryEffect::RunBatch { entry, .. } = log_and_run(&mut q, 2, effects) else { panic!() };
    // Input ranges are only the stream's; the table is log start to high
    // watermark, per partition in order.
    assert_eq!(entry.ranges.iter().map(|r| (r.topic.as_str(), r.start, r.end)).collect::<Vec<_>>(), vec![("in", 0, 4)]);
    assert_eq!(
        entry.tables.iter().map(|r| (r.topic.as_str(), r.partition, r.start, r.end)).collect::<Vec<_>>(),
        vec![("users", 0, 2, 7), ("users", 1, 0, 3)]
    );
    // The entry round-trips through the log's JSON, and an entry written
    // before tables existed reads as one without tables.
    let json = serde_json::to_string(&entry).unwrap();
    assert_eq!(serde_json::from_str::<OffsetEntry>(&json).unwrap(), entry);
    let old = serde_json::to_string(&logged(0, &[(0, 4)], None)).unwrap();
    assert!(!old.contains("tables"), "{old}");
    assert!(serde_json::from_str::<OffsetEntry>(&old).unwrap().tables.is_empty());
    // Crash before the commit: the restarted query re-runs the entry as
    // logged, whatever the table holds now.
    let mut again = StreamQuery::new(QueryConfig { tables: vec!["users".into()], ..config(Trigger::Interval { interval_ms: 0 }) });
    let out = step(&mut again, 9, QueryInput::Recovered { offsets: vec![entry.clone()], commits: vec![] });
    assert_eq!(only(out), QueryEffect::RunBatch { entry: entry.clone(), state_version: None, sink_base: vec![] });
    // Table records alone do not start a batch.
    step(&mut q, 3, QueryInput::BatchDone { batch: 0, result: result(None, vec![]) });
    step(&mut q, 4, QueryInput::CommitLogged { batch: 0 });
    let QueryInput::Listed { mut ends } = listed(&[4]) else { panic!() };
    ends.extend([table(1, 0, 9), table(0, 2, 9)]);
    let out = step(&mut q, 5, QueryInput::Listed { ends });
    assert!(matches!(&out[..], [QueryEffect::List { .. }] | [QueryEffect::Timer { .. }]), "{out:?}");
    assert!(!matches!(q.status(), QueryStatus::LoggingOffsets { .. }));
}

#[test]
fn a_missing_table_topic_stops_the_query_with_its_name() {
    let mut q = StreamQuery::new(QueryConfig { tables: vec!["users".into()], start_at: StartAt::Earliest, ..config(Trigger::Interval { interval_ms: 0 }) });
    step(&mut q, 0, QueryInput::Recovered { offsets: vec![], commits: vec![] });
    let out = step(&mut q, 1, listed(&[4]));
    assert!(matches!(&out[..], [QueryEffect::Stopped { error: Some(StreamError::TableGone { topic }) }] if topic == "users"), "{out:?}");
}
