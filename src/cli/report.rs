//! `keyfleet report [RUN]`: one row per input pair, in input order, as CSV or JSON.
//!
//! Streamed: rows go out as they are read. A named output file is written to a
//! temporary file beside it (mode 0600) and renamed into place when complete, so
//! nobody ever reads a half-written report.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use keyfleet::display;
use keyfleet::store::Store;
use keyfleet::store::plan::ItemStatus;
use keyfleet::store::report::ReportRow;

use crate::GlobalArgs;

/// The report's columns, in order (CSV header; JSON keys).
///
/// Columns are only ever appended: scripts read them by position too.
pub(crate) const COLUMNS: [&str; 21] = [
    "position",
    "region",
    "instance_id",
    "key_id",
    "status",
    "request_id",
    "error_code",
    "error_message",
    "attempts",
    "job_id",
    "verified",
    "new_key_id",
    "associate_status",
    "associate_request_id",
    "associate_verified",
    "power_before",
    "stopped_at",
    "started_at",
    "downtime_s",
    "power_after",
    "account",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ReportFormat {
    Csv,
    Json,
    /// Markdown (`--incident` only).
    Md,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run id; the newest run when omitted. `--incident` takes several.
    #[arg(value_name = "RUN")]
    runs: Vec<i64>,
    /// The incident report of the runs (the key, what was found and done, the
    /// verification, the templates, the key's retirement, requests by API, every
    /// RequestId): Markdown (default) or JSON; see docs/incident.md.
    #[arg(long)]
    incident: bool,
    /// csv (default) or json (a JSON array of objects); with `--incident`, md (default)
    /// or json.
    #[arg(long, value_enum)]
    format: Option<ReportFormat>,
    /// Write to FILE (mode 0600, replaced atomically) instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Only rows with this status: succeeded, failed, rejected, duplicate, pending.
    #[arg(long, value_parser = clap::value_parser!(StatusArg))]
    only: Option<StatusArg>,
    /// CSV: write every cell byte for byte. By default control characters are escaped
    /// and a cell starting with `=`, `+`, `-`, `@`, tab or CR gets a leading `'`, so a
    /// spreadsheet shows it as text (README, "Security"). JSON is always exact.
    #[arg(long)]
    raw: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct StatusArg(ItemStatus);

impl std::str::FromStr for StatusArg {
    type Err = String;
    fn from_str(s: &str) -> Result<StatusArg, String> {
        s.parse().map(StatusArg)
    }
}

pub(crate) async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    if args.incident {
        return incident(global, &args).await;
    }
    if args.runs.len() > 1 {
        anyhow::bail!("a pair report is of one run; `--incident` reports several");
    }
    if args.format == Some(ReportFormat::Md) {
        anyhow::bail!("--format md is the incident report's (`--incident`); pairs are csv or json");
    }
    let store = super::common::open_store(&global.db).await?;
    let result = write_report(&store, &args).await;
    store.close().await;
    let rows = match result {
        Ok(rows) => rows,
        // `keyfleet report | head`: the reader has what it wanted.
        Err(err) if is_broken_pipe(&err) => return Ok(crate::exit::OK),
        Err(err) => return Err(err),
    };
    if let Some(path) = &args.output {
        crate::note!("wrote {rows} rows to {}", path.display());
    }
    Ok(crate::exit::OK)
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

async fn write_report(store: &Store, args: &Args) -> anyhow::Result<u64> {
    let run_id = store.resolve_run(args.runs.first().copied()).await?;
    match &args.output {
        None => {
            let stdout = io::stdout().lock();
            let (rows, out) = emit(store, run_id, args, BufWriter::new(stdout)).await?;
            out.into_inner().map_err(|e| e.into_error())?.flush()?;
            Ok(rows)
        }
        Some(path) => {
            let (tmp, file) = create_private_temp(path)?;
            let written = emit(store, run_id, args, BufWriter::new(file)).await;
            let finish = written.and_then(|(rows, out)| {
                let file = out.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                std::fs::rename(&tmp, path)
                    .with_context(|| format!("cannot move the report into {}", path.display()))?;
                Ok(rows)
            });
            if finish.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            finish
        }
    }
}

/// Writes `bytes` to `path` as a report is written: a private temporary file beside
/// it, synced, then renamed into place (nothing half-written is ever at `path`).
pub(crate) fn write_private_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let (tmp, mut file) = create_private_temp(path)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("cannot move the output into {}", path.display()))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A new file beside `path`, readable by the owner only, that nobody else created.
fn create_private_temp(path: &Path) -> anyhow::Result<(PathBuf, std::fs::File)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".into());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    Ok((tmp, file))
}

async fn emit<W: Write>(
    store: &Store,
    run_id: i64,
    args: &Args,
    out: W,
) -> anyhow::Result<(u64, W)> {
    let mut rows = 0u64;
    let only = args.only.map(|s| s.0);
    match args.format.unwrap_or(ReportFormat::Csv) {
        ReportFormat::Csv | ReportFormat::Md => {
            let mut out = out;
            write_csv_record(&mut out, COLUMNS)?;
            let mut numbers = NumberCells::default();
            store
                .for_each_report_row(run_id, only, |row| {
                    rows += 1;
                    let cells = csv_cells(row, &mut numbers);
                    if args.raw {
                        write_csv_record(&mut out, cells)
                    } else {
                        // Borrowed unless the cell needs escaping or a guard.
                        write_csv_record(&mut out, cells.iter().map(|c| display::csv_cell(c)))
                    }
                })
                .await??;
            Ok((rows, out))
        }
        ReportFormat::Json => {
            let mut out = out;
            out.write_all(b"[")?;
            store
                .for_each_report_row(run_id, only, |row| -> anyhow::Result<()> {
                    if rows > 0 {
                        out.write_all(b",")?;
                    }
                    out.write_all(b"\n")?;
                    serde_json::to_writer(&mut out, row)?;
                    rows += 1;
                    Ok(())
                })
                .await??;
            out.write_all(b"\n]\n")?;
            Ok((rows, out))
        }
    }
}

/// Writes one CSV record as the csv crate's default writer does: cells separated by
/// commas, a cell holding a comma, a quote, CR or LF quoted (its quotes doubled), LF
/// at the end. Straight into the buffered output: the csv crate's writer goes through
/// its own buffer a byte at a time, a third of a large report's time.
fn write_csv_record<W: Write, T: AsRef<str>>(
    out: &mut W,
    cells: impl IntoIterator<Item = T>,
) -> io::Result<()> {
    for (n, cell) in cells.into_iter().enumerate() {
        if n > 0 {
            out.write_all(b",")?;
        }
        let cell = cell.as_ref().as_bytes();
        if cell
            .iter()
            .any(|&b| matches!(b, b',' | b'"' | b'\r' | b'\n'))
        {
            out.write_all(b"\"")?;
            for (n, part) in cell.split(|&b| b == b'"').enumerate() {
                if n > 0 {
                    out.write_all(b"\"\"")?;
                }
                out.write_all(part)?;
            }
            out.write_all(b"\"")?;
        } else {
            out.write_all(cell)?;
        }
    }
    out.write_all(b"\n")
}

/// The two number columns of a CSV row as text, written into buffers reused from row
/// to row.
#[derive(Debug, Default)]
struct NumberCells {
    attempts: String,
    job_id: String,
}

/// A row's CSV cells in [`COLUMNS`] order: empty for `None`.
fn csv_cells<'a>(row: &ReportRow<'a>, numbers: &'a mut NumberCells) -> [&'a str; 21] {
    use std::fmt::Write as _;
    numbers.attempts.clear();
    numbers.job_id.clear();
    // Writing into a String cannot fail.
    let _ = write!(numbers.attempts, "{}", row.attempts);
    if let Some(job_id) = row.job_id {
        let _ = write!(numbers.job_id, "{job_id}");
    }
    let text = |v: Option<&'a str>| v.unwrap_or_default();
    [
        row.position,
        text(row.region),
        text(row.instance_id),
        text(row.key_id),
        row.status,
        text(row.request_id),
        text(row.error_code),
        text(row.error_message),
        &numbers.attempts,
        &numbers.job_id,
        text(row.verified),
        text(row.new_key_id),
        text(row.associate_status),
        text(row.associate_request_id),
        text(row.associate_verified),
        text(row.power_before),
        text(row.stopped_at),
        text(row.started_at),
        text(row.downtime_s),
        text(row.power_after),
        text(row.account),
    ]
}

/// A JSON document as written to a file: pretty, ending in a newline.
pub(crate) fn json_bytes(value: &impl serde::Serialize) -> anyhow::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Writes run `run_id`'s full CSV report to `path` (as `report RUN --output PATH` does).
pub(crate) async fn write_csv_file(store: &Store, run_id: i64, path: &Path) -> anyhow::Result<u64> {
    let args = Args {
        runs: vec![run_id],
        incident: false,
        format: Some(ReportFormat::Csv),
        output: Some(path.to_path_buf()),
        only: None,
        raw: false,
    };
    write_report(store, &args).await
}

/// `report --incident`: Markdown (with the RequestIds in `FILE.requests.csv` beside an
/// `--output FILE`) or JSON, to stdout or the file.
async fn incident(global: &GlobalArgs, args: &Args) -> anyhow::Result<u8> {
    use super::incident_report;
    let format = match args.format {
        None | Some(ReportFormat::Md) => ReportFormat::Md,
        Some(ReportFormat::Json) => ReportFormat::Json,
        Some(ReportFormat::Csv) => {
            anyhow::bail!(
                "the incident report is md or json (its RequestIds come as CSV beside --output)"
            )
        }
    };
    if args.only.is_some() || args.raw {
        anyhow::bail!("--only and --raw are the pair report's, not the incident report's");
    }
    let store = super::common::open_store(&global.db).await?;
    let report = incident_report::gather(&store, &args.runs).await;
    store.close().await;
    let report = report?;
    let bytes = match format {
        ReportFormat::Json => json_bytes(&report)?,
        _ => {
            let beside = args.output.as_deref().map(incident_report::csv_beside);
            if let Some(path) = &beside {
                write_private_file(path, &incident_report::requests_csv(&report)?)?;
            }
            let name = beside
                .as_ref()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned());
            incident_report::markdown(&report, name.as_deref()).into_bytes()
        }
    };
    match &args.output {
        Some(path) => {
            write_private_file(path, &bytes)?;
            crate::note!("wrote the incident report to {}", path.display());
        }
        None => {
            use std::io::Write;
            let mut out = io::stdout().lock();
            if let Err(err) = out.write_all(&bytes).and_then(|()| out.flush())
                && err.kind() != io::ErrorKind::BrokenPipe
            {
                return Err(err.into());
            }
        }
    }
    Ok(crate::exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report's CSV writer quotes and terminates as the csv crate's default
    /// writer, which wrote the report before: the same bytes for every kind of cell.
    #[test]
    fn csv_records_are_what_the_csv_crate_writes() {
        let records: [&[&str]; 5] = [
            &["", "", ""],
            &["plain", "a,b", "say \"hi\"", "\"", ""],
            &["line\nbreak", "cr\ronly", "crlf\r\n", "tab\there", "'=1+1"],
            &["région", "\u{202e}x", ",", "\"\"", " spaced "],
            &["only"],
        ];
        let mut ours = Vec::new();
        let mut theirs = csv::WriterBuilder::new()
            .flexible(true)
            .from_writer(Vec::new());
        for record in records {
            write_csv_record(&mut ours, record).unwrap();
            theirs.write_record(record).unwrap();
        }
        let theirs = theirs.into_inner().unwrap();
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            String::from_utf8(theirs).unwrap()
        );
    }
}
