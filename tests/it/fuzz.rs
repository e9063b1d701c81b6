//! Fuzzing the input readers and the planner with proptest: random bytes, and valid
//! CSV, JSON and JSON Lines documents with bytes cut, inserted, repeated or swapped.
//!
//! Whatever the bytes, reading never panics and ends one of two ways: rows, every one
//! at a position inside the input and in input order; or an error that names the
//! file, a line and a column. Planning then accounts for every row: valid pairs,
//! duplicates and rejected pairs add up to the pairs the rows expand to, one item each.
//!
//! Bounded for CI: `PROPTEST_CASES` (default 256) cases for the readers and a quarter
//! of that for the planner, which writes a database. `PROPTEST_CASES=100000` fuzzes longer.

use std::path::Path;

use keyfleet::input::{Format, InputError, InputRow, PositionKind, RowContent, read_from};
use keyfleet::plan::{self, PlanError, PlanOptions};
use keyfleet::store::Store;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;

const FILE: &str = "fuzzed-input";

// ---------------------------------------------------------------- generators

/// Ids that are mostly valid, drawn from a small pool so duplicates happen, with the
/// usual ways real ids go wrong mixed in.
fn id(prefix: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (0u8..6).prop_map(move |n| format!("{prefix}0000000{n}")),
        1 => "[0-9a-z]{8}".prop_map(move |s| format!("{prefix}{s}")),
        1 => (0u8..6).prop_map(move |n| format!("{prefix}0000000{n}").to_uppercase()),
        1 => (0u8..6).prop_map(move |n| format!(" {prefix}0000000{n}")),
        1 => Just(String::new()),
        1 => "[ -~]{0,12}",
        1 => "\\PC{0,6}",
        1 => prop::sample::select(vec!["\"", ",", "\n", "\r\n", "\\", "\u{0}", "\u{feff}"])
            .prop_map(str::to_string),
    ]
}

fn region() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        4 => Just(Some("ap-guangzhou".to_string())),
        2 => Just(Some("ap-shanghai".to_string())),
        1 => Just(None),
        1 => Just(Some(String::new())),
        1 => Just(Some("Guangzhou".to_string())),
    ]
}

#[derive(Debug, Clone)]
enum Row {
    Pair(String, String, Option<String>),
    Set(Vec<String>, Vec<String>, Option<String>),
}

fn row() -> impl Strategy<Value = Row> {
    prop_oneof![
        4 => (id("ins-"), id("skey-"), region()).prop_map(|(i, k, r)| Row::Pair(i, k, r)),
        1 => (
            prop::collection::vec(id("ins-"), 0..4),
            prop::collection::vec(id("skey-"), 0..4),
            region()
        )
            .prop_map(|(i, k, r)| Row::Set(i, k, r)),
    ]
}

fn csv_doc(rows: &[Row], crlf: bool, bom: bool) -> Vec<u8> {
    let mut w = csv::WriterBuilder::new()
        .terminator(if crlf {
            csv::Terminator::CRLF
        } else {
            csv::Terminator::Any(b'\n')
        })
        .from_writer(Vec::new());
    let _ = w.write_record(["InstanceId", "KeyId", "Region", "note"]);
    for row in rows {
        // CSV has no sets: a set row becomes its first pair.
        let (i, k, r) = match row {
            Row::Pair(i, k, r) => (i.clone(), k.clone(), r.clone()),
            Row::Set(i, k, r) => (
                i.first().cloned().unwrap_or_default(),
                k.first().cloned().unwrap_or_default(),
                r.clone(),
            ),
        };
        let _ = w.write_record([i, k, r.unwrap_or_default(), "x, \"y\"".to_string()]);
    }
    let mut bytes = if bom {
        b"\xEF\xBB\xBF".to_vec()
    } else {
        Vec::new()
    };
    bytes.extend(w.into_inner().unwrap_or_default());
    bytes
}

fn json_value(row: &Row) -> serde_json::Value {
    match row {
        Row::Pair(i, k, r) => json!({"instance_id": i, "key_id": k, "region": r}),
        Row::Set(i, k, r) => json!({"InstanceIds": i, "KeyIds": k, "Region": r}),
    }
}

/// A valid document in one of the three formats, before mutation.
fn document() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(row(), 0..12),
        0u8..3,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(rows, format, crlf, bom)| match format {
            0 => csv_doc(&rows, crlf, bom),
            1 => {
                let values: Vec<_> = rows.iter().map(json_value).collect();
                let text = if crlf {
                    serde_json::to_string_pretty(&values)
                } else {
                    serde_json::to_string(&values)
                };
                text.unwrap_or_default().into_bytes()
            }
            _ => {
                let end = if crlf { "\r\n" } else { "\n" };
                rows.iter()
                    .map(|r| format!("{}{end}", json_value(r)))
                    .collect::<String>()
                    .into_bytes()
            }
        })
}

/// One edit, at a place given as a fraction of the document's length.
#[derive(Debug, Clone)]
enum Mutation {
    Delete(f64, usize),
    Insert(f64, Vec<u8>),
    Repeat(f64, usize),
    Truncate(f64),
}

/// Bytes that matter to one of the parsers, and some that matter to none.
fn interesting_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            &b"\""[..],
            b",",
            b"\n",
            b"\r",
            b"[",
            b"]",
            b"{",
            b"}",
            b":",
            b"\\",
            b"\0",
            b"\xff",
            b"\xc3",
            b"\xEF\xBB\xBF",
            b";",
            b"\t",
            b"null",
            b"1e999",
        ])
        .prop_map(<[u8]>::to_vec),
        prop::collection::vec(any::<u8>(), 1..8),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0.0..1.0, 1usize..6).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (0.0..1.0, interesting_bytes()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        (0.0..1.0, 1usize..40).prop_map(|(at, n)| Mutation::Repeat(at, n)),
        (0.0..1.0).prop_map(Mutation::Truncate),
    ]
}

fn apply(mut doc: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let at = |f: f64| ((doc.len() as f64) * f) as usize;
        match m {
            Mutation::Delete(f, n) => {
                let start = at(*f).min(doc.len());
                let end = (start + n).min(doc.len());
                doc.drain(start..end);
            }
            Mutation::Insert(f, bytes) => {
                let start = at(*f).min(doc.len());
                doc.splice(start..start, bytes.iter().copied());
            }
            Mutation::Repeat(f, n) => {
                let start = at(*f).min(doc.len());
                let end = (start + n).min(doc.len());
                let slice = doc[start..end].to_vec();
                doc.splice(end..end, slice);
            }
            Mutation::Truncate(f) => doc.truncate(at(*f)),
        }
    }
    doc
}

/// Random bytes, or a valid document with a few edits.
fn input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..200),
        1 => prop::collection::vec(
            prop::sample::select(b"[]{}\",:\n\r ab0-\\".to_vec()),
            0..200
        ),
        6 => (document(), prop::collection::vec(mutation(), 0..4))
            .prop_map(|(doc, mutations)| apply(doc, &mutations)),
    ]
}

fn format() -> impl Strategy<Value = Option<Format>> {
    prop::sample::select(vec![
        None,
        Some(Format::Csv),
        Some(Format::Json),
        Some(Format::Jsonl),
    ])
}

// ---------------------------------------------------------------- properties

/// Pairs a row stands for: a set's cross product, one for anything else.
fn expanded(row: &InputRow) -> u64 {
    match &row.content {
        RowContent::Set {
            instance_ids,
            key_ids,
            ..
        } => (instance_ids.len() * key_ids.len()) as u64,
        RowContent::Pair { .. } | RowContent::Invalid { .. } => 1,
    }
}

/// An error points inside the input: the file's name, line >= 1 and at most one past
/// the last line, column >= 1.
fn check_located(err: &InputError, bytes: &[u8]) -> Result<(), TestCaseError> {
    let text = err.to_string();
    prop_assert!(text.starts_with(FILE), "unnamed: {text}");
    let Some((line, column)) = err.location() else {
        return Err(TestCaseError::fail(format!("no location: {text}")));
    };
    let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    prop_assert!(
        line >= 1 && line <= lines + 1,
        "line {line} of {lines}: {text}"
    );
    prop_assert!(column >= 1, "column {column}: {text}");
    Ok(())
}

/// Reads and checks; returns the pairs the rows expand to, `None` for a refusal.
fn read_checked(bytes: &[u8], format: Option<Format>) -> Result<Option<u64>, TestCaseError> {
    let mut rows = Vec::new();
    match read_from(bytes, FILE, format, |r| rows.push(r)) {
        Ok(digest) => {
            prop_assert_eq!(digest.rows, rows.len() as u64);
            prop_assert!(!rows.is_empty(), "Ok with no rows");
            prop_assert_eq!(digest.sha256, keyfleet::sign::sha256_hex(bytes));
            let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
            let mut previous = None;
            for row in &rows {
                let p = row.position;
                if p.kind == PositionKind::Line {
                    prop_assert!(p.row >= 1 && p.row <= lines, "{p} of {lines} lines");
                }
                prop_assert!(previous < Some(p.row), "{p} after {previous:?}");
                previous = Some(p.row);
            }
            Ok(Some(rows.iter().map(expanded).sum()))
        }
        Err(err) => {
            check_located(&err, bytes)?;
            Ok(None)
        }
    }
}

fn config(cases_divisor: u32) -> Config {
    let base = Config::default();
    Config {
        cases: (base.cases / cases_divisor).max(8),
        // Shrinking a failure found here is worth a few seconds; a pass costs nothing extra.
        max_shrink_iters: 2000,
        failure_persistence: None,
        ..base
    }
}

#[test]
fn fuzz_readers_never_panic_and_locate_every_error() {
    let mut runner = TestRunner::new(config(1));
    runner
        .run(&(input(), format()), |(bytes, format)| {
            read_checked(&bytes, format).map(drop)
        })
        .unwrap();
}

#[test]
fn fuzz_planner_accounts_for_every_row() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = runtime
        .block_on(Store::open(&dir.path().join("fuzz.db")))
        .expect("store");
    let input_path = dir.path().join("input");
    let mut runner = TestRunner::new(config(4));
    runner
        .run(&(input(), format()), |(bytes, format)| {
            let read = read_checked(&bytes, format)?;
            std::fs::write(&input_path, &bytes).expect("write input");
            let options = PlanOptions {
                default_region: Some("ap-beijing".to_string()),
                format,
                ..PlanOptions::default()
            };
            runtime.block_on(async {
                let runs_before = count(&store, "SELECT count(*) FROM runs").await;
                let planned = plan::plan_input(&store, Path::new(&input_path), &options).await;
                match (planned, read) {
                    (Ok(outcome), Some(pairs)) => {
                        let s = &outcome.summary;
                        prop_assert_eq!((s.pairs + s.duplicates + s.rejected) as u64, pairs);
                        let items: i64 =
                            sqlx::query_scalar("SELECT count(*) FROM items WHERE run_id = ?")
                                .bind(s.run_id)
                                .fetch_one(store.pool_for_tests())
                                .await
                                .expect("items");
                        prop_assert_eq!(items as u64, pairs);
                        prop_assert!(s.jobs as u64 >= plan::lower_bound(s.pairs as u64));
                    }
                    (Err(PlanError::Input(_)), None) => {
                        let runs_after = count(&store, "SELECT count(*) FROM runs").await;
                        prop_assert_eq!(runs_before, runs_after, "a refused input wrote a run");
                    }
                    (planned, read) => {
                        return Err(TestCaseError::fail(format!(
                            "reader and planner disagree: {read:?} vs {:?}",
                            planned.map(|o| o.summary.run_id)
                        )));
                    }
                }
                Ok(())
            })
        })
        .unwrap();
    runtime.block_on(store.close());
}

async fn count(store: &Store, query: &'static str) -> i64 {
    sqlx::query_scalar(query)
        .fetch_one(store.pool_for_tests())
        .await
        .expect("count")
}
