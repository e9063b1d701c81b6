//! The hostile input corpus: every file under `tests/data/hostile/` (and a few
//! generated too big to commit) goes through `keyfleet plan`, bounded in time. Each
//! either plans its valid rows with every bad one rejected at its position, or is
//! refused with exit 2, a message naming the file and the place, and nothing in the
//! database. Nothing may panic or hang.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::SqliteConnectOptions;

use crate::support::{Cmd, TempDb};

/// Exit code for unreadable input (README, "Exit codes").
const EXIT_USAGE: i32 = 2;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hostile")
}

/// What a file must come to.
#[derive(Debug)]
enum Expect {
    /// Exit 0; the summary's counts; and the rejected rows, all of them, in input
    /// order, as (position, a piece of the reason).
    Planned {
        rows: i64,
        pairs: i64,
        duplicates: i64,
        jobs: i64,
        rejected: &'static [(&'static str, &'static str)],
    },
    /// Exit 2, nothing written; the message names the file and holds each piece.
    Refused(&'static [&'static str]),
}

use Expect::{Planned, Refused};

/// (file, extra arguments, expectation). Every file in the corpus has exactly one line.
const CORPUS: &[(&str, &[&str], Expect)] = &[
    // ---- unreadable as a whole
    ("empty.csv", &[], Refused(&["line 1, column 1", "empty"])),
    (
        "whitespace_only.csv",
        &[],
        Refused(&["line 1, column 1", "empty"]),
    ),
    ("bom_only.csv", &[], Refused(&["line 1, column 1", "empty"])),
    (
        "header_only.csv",
        &[],
        Refused(&["line 2, column 1", "no rows"]),
    ),
    (
        "missing_key_column.csv",
        &[],
        Refused(&["line 1, column 1", "no key_id column", "\"owner\""]),
    ),
    (
        "semicolon_delimiter.csv",
        &[],
        Refused(&["line 1, column 1", "';'", "comma-separated"]),
    ),
    (
        "tab_delimiter.csv",
        &[],
        Refused(&["line 1, column 1", "'\\t'", "comma-separated"]),
    ),
    (
        "quote_left_open.csv",
        &[],
        Refused(&["line 3, column 14", "never closed"]),
    ),
    (
        "invalid_utf8_mid.csv",
        &[],
        Refused(&["line 3, column 16 (byte 81)", "not valid UTF-8"]),
    ),
    (
        "invalid_utf8_first_byte.csv",
        &[],
        Refused(&["line 1, column 1 (byte 0)", "not valid UTF-8"]),
    ),
    (
        "invalid_utf8_latin1.csv",
        &[],
        Refused(&["line 3, column 44", "save the file as UTF-8"]),
    ),
    (
        "cr_only_line_ends.csv",
        &[],
        Refused(&["line 1, column 1", "CR only", "LF or CRLF"]),
    ),
    (
        "duplicate_columns.csv",
        &[],
        Refused(&["line 1, column 1", "columns 1 and 3", "keep one"]),
    ),
    (
        "comment_lines.csv",
        &[],
        Refused(&["line 1, column 1", "no instance_id or key_id column"]),
    ),
    (
        "top_level_object.json",
        &[],
        Refused(&[
            "line 1, column 1",
            "expected a JSON array",
            "--format jsonl",
        ]),
    ),
    (
        "top_level_string.json",
        &[],
        Refused(&["line 1, column 14", "expected a JSON array"]),
    ),
    (
        "trailing_garbage.json",
        &[],
        Refused(&["line 2, column 1", "trailing characters"]),
    ),
    (
        "array_left_open.json",
        &[],
        Refused(&["line 3, column 1", "EOF while parsing"]),
    ),
    (
        "string_left_open.json",
        &[],
        Refused(&["line 2, column 56", "malformed JSON"]),
    ),
    (
        "raw_nul_in_string.json",
        &[],
        Refused(&["line 1, column 26", "control character"]),
    ),
    (
        "empty_array.json",
        &[],
        Refused(&["line 1, column 1", "no rows"]),
    ),
    (
        "huge_number.json",
        &[],
        Refused(&["line 1, column 25", "number out of range"]),
    ),
    (
        "bad_line_middle.jsonl",
        &[],
        Refused(&["line 3, column 43", "malformed JSON"]),
    ),
    (
        "two_objects_on_a_line.jsonl",
        &[],
        Refused(&["line 1, column 86", "trailing characters"]),
    ),
    (
        "pretty_printed.jsonl",
        &[],
        Refused(&["line 1, column 1", "--format json"]),
    ),
    (
        "nul_line.jsonl",
        &[],
        Refused(&["line 2, column 1", "malformed JSON"]),
    ),
    // ---- readable, with bad rows kept as rejected and the rest planned
    (
        "nul_bytes.csv",
        &[],
        Planned {
            rows: 4,
            pairs: 2,
            duplicates: 0,
            jobs: 1,
            rejected: &[
                ("line 3", "instance id \"ins-0000\\00002\" must be"),
                ("line 4", "instance id \"\\0\\0\\0\" does not start with"),
            ],
        },
    ),
    (
        "bom_crlf_extra_columns.csv",
        &[],
        Planned {
            rows: 3,
            pairs: 3,
            duplicates: 0,
            jobs: 3,
            rejected: &[],
        },
    ),
    (
        "uppercase_ids.csv",
        &[],
        Planned {
            rows: 4,
            pairs: 1,
            duplicates: 0,
            jobs: 1,
            rejected: &[
                (
                    "line 2",
                    "\"INS-0000000A\" does not start with \"ins-\": ids are lowercase, like \"ins-0000000a\"",
                ),
                (
                    "line 3",
                    "key id \"SKEY-0000000B\" does not start with \"skey-\": ids are lowercase",
                ),
                ("line 4", "region \"AP-GUANGZHOU\" is not a region name"),
            ],
        },
    ),
    (
        "spaces_in_ids.csv",
        &[],
        Planned {
            rows: 6,
            pairs: 1,
            duplicates: 0,
            jobs: 1,
            rejected: &[
                ("line 2", "\" ins-00000001\" has leading or trailing spaces"),
                ("line 3", "\"ins-00000001 \" has leading or trailing spaces"),
                ("line 4", "\"ins-0000 001\" must be \"ins-\" followed by 8"),
                (
                    "line 5",
                    "\"ins-00000001\\t\" has leading or trailing spaces",
                ),
                ("line 6", "region \" ap-guangzhou\" is not a region name"),
            ],
        },
    ),
    (
        "wrong_prefixes.csv",
        &[],
        Planned {
            rows: 5,
            pairs: 1,
            duplicates: 0,
            jobs: 1,
            rejected: &[
                ("line 2", "\"i-00000001\" does not start with \"ins-\""),
                ("line 3", "\"key-00000001\" does not start with \"skey-\""),
                ("line 4", "\"ins_00000001\" does not start with \"ins-\""),
                (
                    "line 5",
                    "instance id \"skey-00000001\" does not start with \"ins-\"",
                ),
            ],
        },
    ),
    (
        "wrong_lengths.csv",
        &[],
        Planned {
            rows: 6,
            pairs: 1,
            duplicates: 0,
            jobs: 1,
            rejected: &[
                ("line 2", "\"ins-0000001\" must be \"ins-\" followed by 8"),
                ("line 3", "\"ins-000000001\" must be \"ins-\" followed by 8"),
                ("line 4", "\"skey-0000001\" must be \"skey-\" followed by 8"),
                ("line 5", "\"ins-\" must be"),
                ("line 6", "instance id is empty; key id is empty"),
            ],
        },
    ),
    (
        "duplicates.csv",
        &[],
        Planned {
            rows: 5,
            pairs: 3,
            duplicates: 2,
            jobs: 2,
            rejected: &[],
        },
    ),
    (
        "short_and_long_rows.csv",
        &[],
        Planned {
            rows: 3,
            pairs: 1,
            duplicates: 0,
            jobs: 1,
            rejected: &[
                (
                    "line 2",
                    "the row has 1 field(s), so there is no key_id (column 2)",
                ),
                ("line 4", "no region"),
            ],
        },
    ),
    (
        "comment_rows.csv",
        &[],
        Planned {
            rows: 2,
            pairs: 1,
            duplicates: 0,
            jobs: 1,
            rejected: &[(
                "line 2",
                "\"# the first batch\" does not start with \"ins-\"",
            )],
        },
    ),
    (
        "bad_regions.csv",
        &[],
        Planned {
            rows: 4,
            pairs: 1,
            duplicates: 0,
            jobs: 1,
            rejected: &[
                (
                    "line 2",
                    "no region: the row has none and --region was not given",
                ),
                ("line 3", "region \"guangzhou\" is not a region name"),
                ("line 4", "region \"ap guangzhou\" is not a region name"),
            ],
        },
    ),
    (
        // OSC title, ANSI clear/colour, C1 CSI, bidi override, formulas: README, "Security".
        "terminal_escapes.csv",
        &[],
        Planned {
            rows: 7,
            pairs: 1,
            duplicates: 0,
            jobs: 1,
            rejected: &[
                ("line 2", "instance id \"\\u{1b}]0;owned"),
                ("line 3", "key id \"\\u{1b}[2J"),
                ("line 4", "instance id \"=HYPERLINK("),
                ("line 5", "region \"\\u{9b}31m"),
                ("line 6", "key id \"-2+3\""),
                ("line 7", "region \"ap-gu\\u{202e}angzhou\""),
            ],
        },
    ),
    (
        "formula_cells.csv",
        &[],
        Planned {
            rows: 3,
            pairs: 1,
            duplicates: 0,
            jobs: 1,
            rejected: &[
                ("line 2", "instance id \"=HYPERLINK("),
                ("line 3", "instance id \"+ins-00000001\" does not start"),
            ],
        },
    ),
    (
        "unknown_extension.txt",
        &[],
        Planned {
            rows: 1,
            pairs: 1,
            duplicates: 0,
            jobs: 1,
            rejected: &[],
        },
    ),
    (
        "json_without_extension",
        &[],
        Planned {
            rows: 1,
            pairs: 1,
            duplicates: 0,
            jobs: 1,
            rejected: &[],
        },
    ),
    (
        "wrong_types.json",
        &[],
        Planned {
            rows: 5,
            pairs: 1,
            duplicates: 0,
            jobs: 1,
            rejected: &[
                ("index 0", "instance_id is a number, not a string"),
                (
                    "index 1",
                    "instance_id is null, not a string; key_id is null",
                ),
                (
                    "index 2",
                    "instance_id is an object, not a string; key_id is a list",
                ),
                (
                    "index 3",
                    "instance_id is a boolean, not a string; region is a number",
                ),
            ],
        },
    ),
    (
        "array_of_arrays.json",
        &[],
        Planned {
            rows: 3,
            pairs: 0,
            duplicates: 0,
            jobs: 0,
            rejected: &[
                ("index 0", "the element is a list, not an object"),
                ("index 1", "the element is a list, not an object"),
                ("index 2", "the element is a list, not an object"),
            ],
        },
    ),
    (
        "escaped_nul_in_string.json",
        &[],
        Planned {
            rows: 2,
            pairs: 1,
            duplicates: 0,
            jobs: 1,
            rejected: &[("index 0", "instance id \"ins-0000\\00001\" must be")],
        },
    ),
    (
        "mixed_shapes.json",
        &[],
        Planned {
            rows: 7,
            pairs: 6,
            duplicates: 0,
            jobs: 2,
            rejected: &[
                ("index 2", "mixes a pair (instance_id, key_id) with a set"),
                ("index 3", "a set needs key_ids as well as instance_ids"),
                ("index 4", "instance_ids is a string, not a list of ids"),
                (
                    "index 5, pair 2",
                    "InstanceIds[1] is a number, not a string",
                ),
                (
                    "index 6",
                    "none of instance_id, key_id, instance_ids, key_ids",
                ),
            ],
        },
    ),
    (
        "empty_sets.json",
        &[],
        Planned {
            rows: 4,
            pairs: 1,
            duplicates: 0,
            jobs: 1,
            rejected: &[
                ("index 0", "instance_ids is an empty list"),
                ("index 1", "key_ids is an empty list"),
                ("index 2", "instance_ids is an empty list"),
            ],
        },
    ),
    // 150 x 120 in one group (2 x 2 jobs) plus 251 x 3 (3 jobs): chunked, never merged.
    (
        "set_over_100_ids.json",
        &[],
        Planned {
            rows: 2,
            pairs: 150 * 120 + 251 * 3,
            duplicates: 0,
            jobs: 4 + 3,
            rejected: &[],
        },
    ),
    (
        "conflicting_names.json",
        &[],
        Planned {
            rows: 2,
            pairs: 1,
            duplicates: 0,
            jobs: 1,
            rejected: &[(
                "index 0",
                "has both \"InstanceId\" and \"instance_id\"; keep one",
            )],
        },
    ),
    (
        "bom_api_names.json",
        &[],
        Planned {
            rows: 2,
            pairs: 3,
            duplicates: 0,
            jobs: 2,
            rejected: &[],
        },
    ),
    (
        "bom_crlf_blank_lines.jsonl",
        &[],
        Planned {
            rows: 2,
            pairs: 2,
            duplicates: 0,
            jobs: 1,
            rejected: &[],
        },
    ),
    (
        "non_objects.jsonl",
        &[],
        Planned {
            rows: 6,
            pairs: 2,
            duplicates: 0,
            jobs: 1,
            rejected: &[
                ("line 2", "the element is a list"),
                ("line 3", "the element is a string"),
                ("line 4", "the element is null"),
                ("line 5", "the element is a number"),
            ],
        },
    ),
];

// ---------------------------------------------------------------- checks

/// `keyfleet --db DB plan INPUT --json ARGS...`.
fn plan(db: &Path, input: &Path, args: &[&str]) -> Cmd {
    let mut all = vec![
        "--db".as_ref(),
        db.as_os_str(),
        "plan".as_ref(),
        input.as_os_str(),
        "--json".as_ref(),
    ];
    all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
    Cmd::new(all)
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// Rows in runs, jobs and items; zeros when the database was never created.
fn db_counts(db: &Path) -> (i64, i64, i64) {
    if !db.exists() {
        return (0, 0, 0);
    }
    block_on(async {
        let options = SqliteConnectOptions::new().filename(db).read_only(true);
        let pool = sqlx::SqlitePool::connect_with(options)
            .await
            .expect("open db");
        let mut counts = [0i64; 3];
        for (slot, query) in counts.iter_mut().zip([
            "SELECT count(*) FROM runs",
            "SELECT count(*) FROM jobs",
            "SELECT count(*) FROM items",
        ]) {
            *slot = sqlx::query_scalar(query)
                .fetch_one(&pool)
                .await
                .expect("count");
        }
        pool.close().await;
        (counts[0], counts[1], counts[2])
    })
}

/// The plan's own invariant, read back from the database: every job is at most
/// 100 x 100 sorted distinct ids, the union of the jobs' cross products is exactly
/// the set of pending pairs, each pending pair's job covers it, and each duplicate
/// points at a pending item with the same pair.
fn assert_plan_invariant(db: &Path) {
    block_on(async {
        let options = SqliteConnectOptions::new().filename(db).read_only(true);
        let pool = sqlx::SqlitePool::connect_with(options)
            .await
            .expect("open db");
        let mut covered: BTreeSet<(String, String, String)> = BTreeSet::new();
        let mut job_pairs: BTreeMap<i64, BTreeSet<(String, String, String)>> = BTreeMap::new();
        for job in sqlx::query("SELECT id, region, instance_ids, key_ids FROM jobs")
            .fetch_all(&pool)
            .await
            .expect("jobs")
        {
            let region: String = job.get("region");
            let ids = |column: &str| -> Vec<String> {
                serde_json::from_str(job.get::<&str, _>(column)).expect("id list")
            };
            let (instances, keys) = (ids("instance_ids"), ids("key_ids"));
            for list in [&instances, &keys] {
                assert!(
                    !list.is_empty() && list.len() <= 100,
                    "job size {}",
                    list.len()
                );
                assert!(list.windows(2).all(|w| w[0] < w[1]), "not sorted distinct");
            }
            let pairs = job_pairs.entry(job.get("id")).or_default();
            for i in &instances {
                for k in &keys {
                    let pair = (region.clone(), i.clone(), k.clone());
                    assert!(covered.insert(pair.clone()), "pair in two jobs: {pair:?}");
                    pairs.insert(pair);
                }
            }
        }
        let mut pending = BTreeSet::new();
        let mut by_item = BTreeMap::new();
        for item in sqlx::query(
            "SELECT id, region, instance_id, key_id, status, job_id, duplicate_of FROM items",
        )
        .fetch_all(&pool)
        .await
        .expect("items")
        {
            let pair: (Option<String>, Option<String>, Option<String>) = (
                item.get("region"),
                item.get("instance_id"),
                item.get("key_id"),
            );
            let status: String = item.get("status");
            by_item.insert(item.get::<i64, _>("id"), (pair.clone(), status.clone()));
            if status == "pending" {
                let pair = (pair.0.unwrap(), pair.1.unwrap(), pair.2.unwrap());
                let job: i64 = item.get("job_id");
                assert!(job_pairs[&job].contains(&pair), "job {job} misses {pair:?}");
                assert!(pending.insert(pair), "a pending pair twice");
            } else if status == "duplicate" {
                let first: i64 = item.get("duplicate_of");
                assert_eq!(by_item[&first], (pair, "pending".to_string()));
            }
        }
        assert_eq!(covered, pending, "jobs cover exactly the valid pairs");
        pool.close().await;
    });
}

/// Runs one input through `plan` and checks it against `expect`.
fn check(input: &Path, args: &[&str], expect: &Expect) -> Result<(), String> {
    let db = TempDb::new();
    let out = plan(&db.path, input, args).run();
    let name = input.display().to_string();
    let stderr = out.stderr_text();
    match expect {
        Refused(pieces) => {
            if out.code != Some(EXIT_USAGE) {
                return Err(format!("exit {:?}, not 2; stderr: {stderr}", out.code));
            }
            if !stderr.contains(&name) {
                return Err(format!("the message does not name the file: {stderr}"));
            }
            for piece in *pieces {
                if !stderr.contains(piece) {
                    return Err(format!("the message lacks {piece:?}: {stderr}"));
                }
            }
            if stderr.len() > 2000 {
                return Err(format!("a {} byte message", stderr.len()));
            }
            if !out.stdout.is_empty() {
                return Err(format!("stdout is not empty: {}", out.stdout_text()));
            }
            let counts = db_counts(&db.path);
            if counts != (0, 0, 0) {
                return Err(format!(
                    "written after a refusal (runs, jobs, items): {counts:?}"
                ));
            }
        }
        Planned {
            rows,
            pairs,
            duplicates,
            jobs,
            rejected,
        } => {
            if out.code != Some(0) {
                return Err(format!("exit {:?}; stderr: {stderr}", out.code));
            }
            let summary = out.json();
            let got = |key: &str| summary[key].as_i64().unwrap_or(-1);
            for (key, want) in [
                ("rows", *rows),
                ("pairs", *pairs),
                ("duplicates", *duplicates),
                ("jobs", *jobs),
                ("rejected", rejected.len() as i64),
            ] {
                if got(key) != want {
                    return Err(format!("{key} is {}, not {want}: {summary}", got(key)));
                }
            }
            let report = report_rows(&db.path, &[]);
            if report.len() as i64 != pairs + duplicates + rejected.len() as i64 {
                return Err(format!(
                    "{} report rows for {pairs} pairs + {duplicates} duplicates + {} rejected",
                    report.len(),
                    rejected.len()
                ));
            }
            let got_rejected: Vec<(String, String)> = report
                .iter()
                .filter(|r| r["status"] == "rejected")
                .map(|r| {
                    let text = |k: &str| r[k].as_str().unwrap_or("").to_string();
                    (text("position"), text("error_message"))
                })
                .collect();
            let matches = got_rejected.len() == rejected.len()
                && got_rejected.iter().zip(rejected.iter()).all(
                    |((pos, why), (want_pos, want_why))| pos == want_pos && why.contains(want_why),
                );
            if !matches {
                return Err(format!(
                    "rejections {got_rejected:?}, expected {rejected:?}"
                ));
            }
            assert_plan_invariant(&db.path);
        }
    }
    Ok(())
}

/// `keyfleet report --format json` of the newest run, parsed.
fn report_rows(db: &Path, args: &[&str]) -> Vec<Value> {
    let mut all = vec![
        "--db".as_ref(),
        db.as_os_str(),
        "report".as_ref(),
        "--format".as_ref(),
        "json".as_ref(),
    ];
    all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
    let out = Cmd::new(all).run();
    assert_eq!(out.code, Some(0), "report: {}", out.stderr_text());
    match out.json() {
        Value::Array(rows) => rows,
        other => panic!("report is not a list: {other}"),
    }
}

/// Checks every corpus entry whose file name ends with one of `suffixes`; all failures at once.
fn check_corpus(filter: impl Fn(&str) -> bool) {
    let failures: Vec<String> = CORPUS
        .iter()
        .filter(|(file, ..)| filter(file))
        .filter_map(|(file, args, expect)| {
            check(&corpus_dir().join(file), args, expect)
                .err()
                .map(|why| format!("{file}: {why}"))
        })
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------- the corpus

#[test]
fn every_corpus_file_has_one_expectation() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(corpus_dir())
        .expect("corpus dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let listed: Vec<&str> = CORPUS.iter().map(|(file, ..)| *file).collect();
    let listed_set: BTreeSet<String> = listed.iter().map(|f| f.to_string()).collect();
    assert_eq!(listed.len(), listed_set.len(), "a file listed twice");
    assert_eq!(on_disk, listed_set, "corpus files and the table differ");
    assert!(on_disk.len() >= 30);
}

#[test]
fn hostile_csv_corpus() {
    check_corpus(|f| f.ends_with(".csv"));
}

#[test]
fn hostile_json_corpus() {
    check_corpus(|f| f.ends_with(".json"));
}

#[test]
fn hostile_jsonl_and_unknown_extension_corpus() {
    check_corpus(|f| !f.ends_with(".csv") && !f.ends_with(".json"));
}

// ---------------------------------------------------------------- generated

const HEADER: &str = "instance_id,key_id,region\n";
const TEN_MB: usize = 10 * 1024 * 1024;

fn generated(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write input");
    (dir, path)
}

fn assert_ok(input: &Path, args: &[&str], expect: Expect) {
    if let Err(why) = check(input, args, &expect) {
        panic!("{}: {why}", input.display());
    }
}

#[test]
fn a_ten_megabyte_cell_is_one_rejected_row_with_a_short_reason() {
    let mut text = String::from(HEADER);
    text.push_str("ins-00000001,skey-00000001,ap-guangzhou\n");
    text.push_str("ins-00000002,");
    text.push_str(&"k".repeat(TEN_MB));
    text.push_str(",ap-guangzhou\nins-00000003,skey-00000001,ap-guangzhou\n");
    let (_dir, input) = generated("ten_mb_line.csv", text.as_bytes());
    assert_ok(
        &input,
        &[],
        Planned {
            rows: 3,
            pairs: 2,
            duplicates: 0,
            jobs: 1,
            rejected: &[("line 3", "key id \"kkkkkkkkkk")],
        },
    );
}

#[test]
fn a_ten_megabyte_line_without_an_end() {
    // The header itself is 10 MB with no newline: refused, and the message stays short.
    let mut header = "x".repeat(TEN_MB);
    header.push_str(",instance_id");
    let (_dir, input) = generated("ten_mb_header.csv", header.as_bytes());
    assert_ok(
        &input,
        &[],
        Refused(&["line 1, column 1", "no key_id column", "..."]),
    );
    // A 10 MB JSON Lines line: one rejected row.
    let mut text = format!(
        "{{\"instance_id\":\"ins-00000001\",\"key_id\":\"{}\"}}\n",
        "k".repeat(TEN_MB)
    );
    text.push_str("{\"instance_id\":\"ins-00000002\",\"key_id\":\"skey-00000001\"}");
    let (_dir, input) = generated("ten_mb_line.jsonl", text.as_bytes());
    assert_ok(
        &input,
        &["--region", "ap-guangzhou"],
        Planned {
            rows: 2,
            pairs: 1,
            duplicates: 0,
            jobs: 1,
            rejected: &[("line 1", "key id \"kkkk")],
        },
    );
}

#[test]
fn a_huge_array_is_streamed_and_counted() {
    const ELEMENTS: usize = 60_000;
    let mut text = String::from("[");
    for i in 0..ELEMENTS {
        if i > 0 {
            text.push(',');
        }
        // Every third element is not an object; the rest are 40,000 distinct pairs.
        if i % 3 == 2 {
            text.push('0');
        } else {
            text.push_str(&format!(
                "{{\"instance_id\":\"ins-{:08}\",\"key_id\":\"skey-0000000{}\"}}",
                i / 3,
                i % 3
            ));
        }
    }
    text.push(']');
    let (_dir, input) = generated("huge_array.json", text.as_bytes());
    let db = TempDb::new();
    let out = plan(&db.path, &input, &["--region", "ap-guangzhou"]).run();
    assert_eq!(out.code, Some(0), "{}", out.stderr_text());
    let summary = out.json();
    assert_eq!(summary["rows"], ELEMENTS as i64);
    assert_eq!(summary["pairs"], (ELEMENTS / 3 * 2) as i64);
    assert_eq!(summary["rejected"], (ELEMENTS / 3) as i64);
    // 20,000 instances that all need keys 0 and 1 removed: one group, 200 x 1 jobs.
    assert_eq!(summary["jobs"], 200);
    assert_eq!(summary["rejections"][0]["position"], "index 2");
    assert_plan_invariant(&db.path);
}

#[test]
fn deep_nesting_is_refused_at_the_limit_not_a_stack_overflow() {
    for (name, text) in [
        ("deep_lists.json", "[".repeat(100_000)),
        (
            "deep_objects.json",
            format!("[{}", "{\"a\":".repeat(100_000)),
        ),
        ("deep_lists.jsonl", format!("{}\n", "[".repeat(100_000))),
        (
            "deep_closed.json",
            format!("[{}{}]", "[".repeat(50_000), "]".repeat(50_000)),
        ),
    ] {
        let (_dir, input) = generated(name, text.as_bytes());
        assert_ok(
            &input,
            &[],
            Refused(&["line 1, column", "nested more than 128 deep"]),
        );
    }
}

#[test]
fn stdin_is_read_and_named() {
    let db = TempDb::new();
    let csv = format!(
        "{HEADER}ins-00000001,skey-00000001,ap-guangzhou\nins-0000000X,skey-00000001,ap-guangzhou\n"
    );
    let out = plan(&db.path, Path::new("-"), &[]).stdin(csv).run();
    assert_eq!(out.code, Some(0), "{}", out.stderr_text());
    let summary = out.json();
    assert_eq!(
        (summary["pairs"].as_i64(), summary["rejected"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(summary["input_path"], "-");
    assert_eq!(summary["rejections"][0]["position"], "line 3");

    // JSON on stdin is recognised by its first character, or named with --format.
    let json =
        r#"[{"instance_id":"ins-00000001","key_id":"skey-00000002","region":"ap-guangzhou"}]"#;
    for args in [&[][..], &["--format", "json"][..]] {
        let out = plan(&db.path, Path::new("-"), args).stdin(json).run();
        assert_eq!(out.code, Some(0), "{}", out.stderr_text());
        assert_eq!(out.json()["pairs"], 1);
    }

    let db = TempDb::new();
    for bad in [&b""[..], b"\xef\xbb\xbf\n", b"[1,", b"instance_id;key_id\n"] {
        let out = plan(&db.path, Path::new("-"), &[]).stdin(bad).run();
        assert_eq!(out.code, Some(EXIT_USAGE), "{}", out.stderr_text());
        assert!(
            out.stderr_text().contains("<stdin>: line "),
            "{}",
            out.stderr_text()
        );
    }
    assert_eq!(db_counts(&db.path), (0, 0, 0));
}

#[test]
fn unopenable_inputs_and_strict_refusals_write_nothing() {
    let db = TempDb::new();
    let missing = db.dir.path().join("no_such_file.csv");
    let out = plan(&db.path, &missing, &[]).run();
    assert_eq!(out.code, Some(EXIT_USAGE));
    let stderr = out.stderr_text();
    assert!(
        stderr.contains(&format!("cannot open {}", missing.display())),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("No such file").count(),
        1,
        "the cause once: {stderr}"
    );

    let out = plan(&db.path, db.dir.path(), &["--format", "csv"]).run();
    assert_eq!(out.code, Some(EXIT_USAGE));
    assert!(
        out.stderr_text().contains("cannot read"),
        "{}",
        out.stderr_text()
    );

    let out = plan(
        &db.path,
        &corpus_dir().join("wrong_prefixes.csv"),
        &["--strict"],
    )
    .run();
    assert_eq!(out.code, Some(EXIT_USAGE));
    let stderr = out.stderr_text();
    assert!(
        stderr.contains("--strict: 4 input pair(s) rejected"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 2: instance id \"i-00000001\""),
        "{stderr}"
    );
    assert_eq!(db_counts(&db.path), (0, 0, 0));
}
