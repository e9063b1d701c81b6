//! Reading plan input: CSV, a JSON array, or JSON Lines -> [`InputRow`]s, streamed.
//!
//! One pass over the bytes does three things: it hashes them (SHA-256, the run's
//! identity), checks that they are UTF-8 (with the exact line and column of the
//! first bad byte), and parses rows, handing each to a callback as soon as it is
//! read. Memory stays flat whatever the file's size: CSV and JSON Lines hold one
//! record at a time, and a JSON array is walked element by element with a
//! `SeqAccess` visitor, so only the current element is ever in memory.
//!
//! Two kinds of problems, kept apart on purpose:
//! - input that cannot be read at all (not UTF-8, malformed JSON, a header without
//!   the required columns, nothing in it) is an [`InputError`] naming the file, line
//!   and column; the caller writes nothing;
//! - a row that can be read but is wrong (a field of the wrong JSON type, an element
//!   that is not an object, a short CSV row) is data: it comes out as a row whose
//!   fields carry the reason, and the planner keeps it as `rejected`.

use std::cell::Cell;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;
use std::str::FromStr;

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Bytes read from the input per system call; also the size of the parse buffer.
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// The UTF-8 byte order mark that spreadsheet exports like to put first.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
/// The path that means "read standard input".
pub const STDIN_PATH: &str = "-";

/// An input format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Jsonl,
}

impl Format {
    /// The format a file name implies: `.csv`, `.json`, `.jsonl`/`.ndjson`.
    pub fn from_extension(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "json" => Some(Format::Json),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            _ => None,
        }
    }

    /// The name used on the command line and in `runs.options`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Jsonl => "jsonl",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            "jsonl" | "ndjson" => Ok(Format::Jsonl),
            other => Err(format!(
                "unknown input format {other:?}: expected csv, json or jsonl"
            )),
        }
    }
}

/// Where a row stands in its input, as a person would look for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Lines for CSV and JSON Lines, indexes for a JSON array.
    pub kind: PositionKind,
    /// Physical line (1-based, the CSV header is line 1) or array index (0-based, like jq's `.[3]`).
    pub row: u64,
    /// For a set row: which pair of its cross product (1-based, instance-major); 0 for the row itself.
    pub pair: u32,
}

/// Whether a [`Position`] counts lines or array indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionKind {
    Line,
    Index,
}

impl Position {
    /// The same row, one pair of its cross product.
    pub fn with_pair(self, pair: u32) -> Position {
        Position { pair, ..self }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PositionKind::Line => write!(f, "line {}", self.row)?,
            PositionKind::Index => write!(f, "index {}", self.row)?,
        }
        if self.pair > 0 {
            write!(f, ", pair {}", self.pair)?;
        }
        Ok(())
    }
}

/// One field as read: its text, or why it could not be read as text
/// (e.g. `instance_id is a number, not a string`).
pub type Field = Result<String, String>;

/// One row of input, before any validation of ids or regions.
#[derive(Debug, Clone, PartialEq)]
pub struct InputRow {
    pub position: Position,
    pub content: RowContent,
}

/// What a row asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum RowContent {
    /// One instance, one key.
    Pair {
        instance_id: Field,
        key_id: Field,
        region: Option<Field>,
        /// A rotation: the key(s) to bind first (empty: a plain unbind).
        new_key_ids: Vec<Field>,
        /// `keys_after` as `discover` writes it (keys the instance keeps), when the
        /// input carries it: informational, so a value that is not a number is ignored.
        keys_after: Option<u64>,
        /// `instance_state` as `discover` writes it (`RUNNING`, `STOPPED`, ...), when
        /// the input carries it: informational (`plan` counts the RUNNING instances).
        state: Option<String>,
        /// The value of the column `--max-down-per COLUMN` names (its budget group);
        /// `None` when no such column was asked for, or the row lacks it.
        group: Option<String>,
    },
    /// Every listed key from every listed instance (the cross product).
    Set {
        instance_ids: Vec<Field>,
        key_ids: Vec<Field>,
        region: Option<Field>,
        /// A rotation: the key(s) to bind on every instance first.
        new_key_ids: Vec<Field>,
        /// As a pair's: every instance of the set is in this budget group.
        group: Option<String>,
    },
    /// A row that asks for nothing intelligible; the reason is for a person.
    Invalid { reason: String },
}

/// Input that cannot be read at all. Every message names the file and where in it.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be opened.
    // The I/O error is in the message, so it is not also a `source`: `{:#}` would print it twice.
    #[error("cannot open {file}: {error}")]
    Open { file: String, error: io::Error },
    /// Reading failed part way (a disk or pipe error, not the content).
    #[error("cannot read {file} at byte {offset}: {error}")]
    Read {
        file: String,
        offset: u64,
        error: io::Error,
    },
    /// A byte sequence that is not UTF-8.
    #[error(
        "{file}: line {line}, column {column} (byte {offset}): not valid UTF-8; save the file as UTF-8"
    )]
    NotUtf8 {
        file: String,
        line: u64,
        column: u64,
        offset: u64,
    },
    /// The content does not parse (malformed JSON or CSV, a missing column, no rows).
    #[error("{file}: line {line}, column {column}: {message}")]
    Unreadable {
        file: String,
        line: u64,
        column: u64,
        message: String,
    },
}

impl InputError {
    /// Line and column the error points at, when it points at one.
    pub fn location(&self) -> Option<(u64, u64)> {
        match self {
            InputError::NotUtf8 { line, column, .. }
            | InputError::Unreadable { line, column, .. } => Some((*line, *column)),
            _ => None,
        }
    }
}

/// What reading the whole input produced besides the rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputDigest {
    /// Lowercase hex SHA-256 of every byte of the input, BOM included.
    pub sha256: String,
    /// Rows handed to the callback.
    pub rows: u64,
    /// The format the input was read as.
    pub format: Format,
}

/// The name an input is shown by in messages: its path, or `<stdin>`.
pub fn display_name(path: &Path) -> String {
    if path.as_os_str() == STDIN_PATH {
        "<stdin>".to_string()
    } else {
        path.display().to_string()
    }
}

/// Reads `path` (`-` for standard input), calling `on_row` for every row in order.
///
/// The format is `format`, else the extension's, else guessed from the first
/// character (`[` JSON, `{` JSON Lines, anything else CSV).
///
/// `group_column` names an extra column (`--max-down-per COLUMN`) whose value each
/// row carries in `group`; a CSV header without it is an error naming it.
pub fn read_input(
    path: &Path,
    format: Option<Format>,
    group_column: Option<&str>,
    on_row: impl FnMut(InputRow),
) -> Result<InputDigest, InputError> {
    let file = display_name(path);
    let source: Box<dyn Read> = if path.as_os_str() == STDIN_PATH {
        Box::new(io::stdin().lock())
    } else {
        Box::new(File::open(path).map_err(|error| InputError::Open {
            file: file.clone(),
            error,
        })?)
    };
    read_from_with(
        source,
        &file,
        format.or_else(|| Format::from_extension(path)),
        group_column,
        on_row,
    )
}

/// Reads rows from any reader; `file` names it in messages. See [`read_input`].
pub fn read_from(
    source: impl Read,
    file: &str,
    format: Option<Format>,
    on_row: impl FnMut(InputRow),
) -> Result<InputDigest, InputError> {
    read_from_with(source, file, format, None, on_row)
}

/// [`read_from`] with a budget-group column (see [`read_input`]).
pub fn read_from_with(
    source: impl Read,
    file: &str,
    format: Option<Format>,
    group_column: Option<&str>,
    mut on_row: impl FnMut(InputRow),
) -> Result<InputDigest, InputError> {
    let mut tap = Tap::new(source);
    let group = group_column.map(normalize_name);
    let outcome = read_tapped(&mut tap, file, format, group.as_deref(), &mut on_row);
    let (format, rows) = match outcome {
        Ok(done) => done,
        // The tap's own diagnosis is more precise than whatever the parser made of it.
        Err(err) => return Err(tap.explain(file).unwrap_or(err)),
    };
    if let Some(err) = tap.explain(file) {
        return Err(err);
    }
    Ok(InputDigest {
        sha256: hex::encode(tap.hasher.finalize()),
        rows,
        format,
    })
}

fn read_tapped<R: Read>(
    tap: &mut Tap<R>,
    file: &str,
    format: Option<Format>,
    group: Option<&str>,
    on_row: &mut dyn FnMut(InputRow),
) -> Result<(Format, u64), InputError> {
    let last_byte = Rc::clone(&tap.last_byte);
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, tap);
    let read_err = |error: io::Error, offset: u64| InputError::Read {
        file: file.to_string(),
        offset,
        error,
    };
    let head = reader.fill_buf().map_err(|e| read_err(e, 0))?;
    if head.starts_with(UTF8_BOM) {
        reader.consume(UTF8_BOM.len());
    }
    let (first, skipped) = first_non_space(&mut reader).map_err(|e| read_err(e, 0))?;
    let Some(first) = first else {
        return Err(unreadable(file, 1, 1, "the input is empty"));
    };
    let format = format.unwrap_or(match first {
        b'[' => Format::Json,
        b'{' => Format::Jsonl,
        _ => Format::Csv,
    });
    let rows = match format {
        Format::Csv => read_csv(&mut reader, file, skipped, &last_byte, group, on_row)?,
        Format::Jsonl => read_jsonl(&mut reader, file, skipped, group, on_row)?,
        Format::Json => read_json(&mut reader, file, skipped, group, on_row)?,
    };
    // Hash every byte even if the parser stopped early (trailing blank lines).
    io::copy(&mut reader, &mut io::sink()).map_err(|e| read_err(e, 0))?;
    Ok((format, rows))
}

/// Peeks at the first non-whitespace byte (`None` when there is none) and says how
/// many lines were skipped to find it.
///
/// Normally nothing is consumed. Only a whitespace-only buffer (256 KiB of blank
/// lines) is, up to its last newline, so the parsers still start at a line start
/// and add the skipped lines to the line numbers they report.
fn first_non_space(reader: &mut impl BufRead) -> io::Result<(Option<u8>, u64)> {
    let mut skipped = 0u64;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok((None, skipped));
        }
        if let Some(i) = buf.iter().position(|b| !b.is_ascii_whitespace()) {
            return Ok((Some(buf[i]), skipped));
        }
        let n = match buf.iter().rposition(|&b| b == b'\n') {
            Some(last) => {
                skipped += buf.iter().filter(|&&b| b == b'\n').count() as u64;
                last + 1
            }
            None => buf.len(),
        };
        reader.consume(n);
    }
}

fn unreadable(file: &str, line: u64, column: u64, message: impl Into<String>) -> InputError {
    InputError::Unreadable {
        file: file.to_string(),
        line,
        column,
        message: message.into(),
    }
}

/// A column or object key reduced to what matters: `InstanceId`, `instance_id`
/// and `Instance ID` all become `instanceid`.
fn normalize_name(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '_' | '-' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

/// [`normalize_name`] without allocating for the spellings a file of a million
/// objects repeats on every row (the documented snake_case and API names).
fn normalized_key(name: &str) -> std::borrow::Cow<'_, str> {
    match name {
        "instance_id" | "InstanceId" => "instanceid".into(),
        "key_id" | "KeyId" => "keyid".into(),
        "instance_ids" | "InstanceIds" => "instanceids".into(),
        "key_ids" | "KeyIds" => "keyids".into(),
        "region" | "Region" => "region".into(),
        other => normalize_name(other).into(),
    }
}

// ---------------------------------------------------------------- CSV

fn read_csv(
    reader: &mut impl BufRead,
    file: &str,
    skipped_lines: u64,
    last_byte: &Cell<u8>,
    group: Option<&str>,
    on_row: &mut dyn FnMut(InputRow),
) -> Result<u64, InputError> {
    let mut csv = csv::ReaderBuilder::new()
        // The header is the first non-blank record, found below like any other.
        .has_headers(false)
        .terminator(csv::Terminator::Any(b'\n'))
        // A short or long row is that row's problem, not the file's.
        .flexible(true)
        .buffer_capacity(READ_BUFFER_BYTES)
        .from_reader(QuoteWatch::new(reader, 1 + skipped_lines));
    // The csv crate's record positions count from where the previous record stopped,
    // so blank lines and CRLF skew them. Instead: records end only at '\n' (or at the
    // end of input), csv's line after a record is exact, and a record's first line is
    // its last line minus the newlines inside its quoted fields. A record is handled
    // once the next one is read, which tells whether it ended with '\n'.
    let mut current = csv::StringRecord::new();
    let mut held = csv::StringRecord::new();
    let mut held_end: Option<u64> = None;
    let mut columns: Option<Columns> = None;
    let mut header_line = 1 + skipped_lines;
    let mut rows = 0u64;
    loop {
        let more = csv
            .read_record(&mut current)
            .map_err(|e| csv_error(file, e))?;
        let end = csv.position().line();
        if let Some(end) = held_end.take() {
            let ended_with_newline = more || last_byte.get() == b'\n';
            let last_line = if ended_with_newline { end - 1 } else { end };
            let embedded = held
                .iter()
                .map(|f| f.bytes().filter(|&b| b == b'\n').count() as u64)
                .sum::<u64>();
            let line = last_line.saturating_sub(embedded) + skipped_lines;
            match columns {
                None => {
                    header_line = line;
                    // An open quote in the header swallows the file: say that, not "no columns".
                    if let Some(err) = csv.get_ref().unclosed(file) {
                        return Err(err);
                    }
                    columns = Some(csv_columns(&held, file, line, group)?);
                }
                Some(columns) => {
                    rows += 1;
                    on_row(csv_row(&held, line, columns));
                }
            }
        }
        if !more {
            break;
        }
        let blank = current.len() == 1 && current.get(0).is_some_and(|f| f.trim().is_empty());
        if !blank {
            std::mem::swap(&mut current, &mut held);
            held_end = Some(end);
        }
    }
    if let Some(err) = csv.get_ref().unclosed(file) {
        return Err(err);
    }
    if columns.is_none() {
        return Err(unreadable(file, header_line, 1, "the input is empty"));
    }
    if rows == 0 {
        return Err(unreadable(
            file,
            header_line + 1,
            1,
            "the header is followed by no rows",
        ));
    }
    Ok(rows)
}

/// Finds the instance, key, (optional) region and (optional) new-key columns in the
/// header on `line`.
/// Where a CSV header puts the columns keyfleet reads.
#[derive(Debug, Clone, Copy)]
struct Columns {
    instance: usize,
    key: usize,
    region: Option<usize>,
    new_key: Option<usize>,
    keys_after: Option<usize>,
    state: Option<usize>,
    group: Option<usize>,
}

/// `group`: the normalized name of the `--max-down-per` column, which must be there.
fn csv_columns(
    headers: &csv::StringRecord,
    file: &str,
    line: u64,
    group: Option<&str>,
) -> Result<Columns, InputError> {
    if let Some(column) = headers
        .iter()
        .position(|h| h.trim_end_matches('\r').contains('\r'))
    {
        return Err(unreadable(
            file,
            line,
            1,
            format!(
                "column {} of the header holds a carriage return: the file ends its lines with CR only \
                 (old Mac style); save it with LF or CRLF line ends",
                column + 1
            ),
        ));
    }
    let mut instance_col = None;
    let mut key_col = None;
    let mut region_col = None;
    let mut new_key_col = None;
    let mut keys_after_col = None;
    let mut state_col = None;
    let group_col = match group {
        None => None,
        Some(group) => {
            let found = headers
                .iter()
                .position(|h| normalize_name(h.trim_end_matches('\r').trim()) == group);
            if found.is_none() {
                let names: Vec<String> = headers
                    .iter()
                    .map(|h| format!("{:?}", crate::ids::shorten(h.trim())))
                    .collect();
                return Err(unreadable(
                    file,
                    line,
                    1,
                    format!(
                        "--max-down-per {group}: the header has no {group} column (columns found: {})",
                        names.join(", ")
                    ),
                ));
            }
            found
        }
    };
    for (i, name) in headers.iter().enumerate() {
        let slot = match normalize_name(name.trim()).as_str() {
            "instanceid" => &mut instance_col,
            "keyid" => &mut key_col,
            "region" => &mut region_col,
            "newkeyid" | "newkeyids" => &mut new_key_col,
            "keysafter" => &mut keys_after_col,
            "instancestate" | "state" => &mut state_col,
            _ => continue,
        };
        if let Some(earlier) = *slot {
            return Err(unreadable(
                file,
                line,
                1,
                format!(
                    "columns {} and {} both name {:?}; keep one",
                    earlier + 1,
                    i + 1,
                    name.trim()
                ),
            ));
        }
        *slot = Some(i);
    }
    if let (Some(instance), Some(key)) = (instance_col, key_col) {
        return Ok(Columns {
            instance,
            key,
            region: region_col,
            new_key: new_key_col,
            keys_after: keys_after_col,
            state: state_col,
            group: group_col,
        });
    }
    let missing: Vec<&str> = [("instance_id", instance_col), ("key_id", key_col)]
        .iter()
        .filter(|(_, col)| col.is_none())
        .map(|(name, _)| *name)
        .collect();
    let found: Vec<String> = headers
        .iter()
        .map(|h| format!("{:?}", crate::ids::shorten(h.trim())))
        .collect();
    let mut message = format!(
        "the header has no {} column (columns found: {})",
        missing.join(" or "),
        found.join(", ")
    );
    if let Some(sep) = [';', '\t', '|']
        .into_iter()
        .find(|sep| headers.iter().any(|h| h.contains(*sep)))
    {
        message.push_str(&format!(
            "; the header contains {sep:?}: keyfleet reads comma-separated values"
        ));
    }
    Err(unreadable(file, line, 1, message))
}

/// One CSV record as a pair row. With '\n' as the only terminator, a CRLF line
/// leaves its '\r' at the end of the last field: it is not part of the value.
fn csv_row(record: &csv::StringRecord, line: u64, columns: Columns) -> InputRow {
    let Columns {
        instance: instance_col,
        key: key_col,
        region: region_col,
        new_key: new_key_col,
        keys_after: keys_after_col,
        state: state_col,
        group: group_col,
    } = columns;
    let last = record.len().saturating_sub(1);
    let get = |col: usize| {
        record.get(col).map(|v| {
            if col == last {
                v.strip_suffix('\r').unwrap_or(v)
            } else {
                v
            }
        })
    };
    let field = |col: usize, name: &str| -> Field {
        get(col).map(str::to_string).ok_or_else(|| {
            format!(
                "the row has {} field(s), so there is no {name} (column {})",
                record.len(),
                col + 1
            )
        })
    };
    let region = region_col.and_then(|col| match get(col) {
        Some("") | None => None,
        Some(value) => Some(Ok(value.to_string())),
    });
    InputRow {
        position: Position {
            kind: PositionKind::Line,
            row: line,
            pair: 0,
        },
        content: RowContent::Pair {
            instance_id: field(instance_col, "instance_id"),
            key_id: field(key_col, "key_id"),
            region,
            // A file with a new_key_id column is a rotation: an empty cell is a
            // missing new key, never a plain unbind (which would bind nothing).
            new_key_ids: match new_key_col {
                None => Vec::new(),
                Some(col) => match get(col) {
                    Some(v) if !v.trim().is_empty() => vec![Ok(v.to_string())],
                    _ => vec![Err(format!(
                        "new_key_id (column {}) is empty: a rotation row needs the new key; plain \
                         unbinds go in a file without the new_key_id column",
                        col + 1
                    ))],
                },
            },
            keys_after: keys_after_col
                .and_then(get)
                .and_then(|v| v.trim().parse().ok()),
            state: state_col
                .and_then(get)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty()),
            group: group_col.and_then(get).map(|v| v.trim().to_string()),
        },
    }
}

/// Follows the csv crate's quoting (RFC 4180, `""` inside quotes) over the raw bytes,
/// to catch a quote that is never closed. The csv crate reads such a field to the end
/// of the input without complaint, so one stray `"` would fold every later line into
/// a single rejected row; this points at the quote instead.
struct QuoteWatch<R> {
    inner: R,
    state: QuoteState,
    /// 1-based line of the next byte, and characters already seen on it.
    line: u64,
    column: u64,
    /// Where the quoted field being read opened.
    opened_at: (u64, u64),
    at_end: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuoteState {
    StartField,
    Unquoted,
    Quoted,
    /// A `"` inside a quoted field: either the closing quote or the first of `""`.
    QuoteInQuoted,
}

impl<R: Read> QuoteWatch<R> {
    /// `first_line`: the line `inner` starts on (blank lines may have been skipped).
    fn new(inner: R, first_line: u64) -> QuoteWatch<R> {
        QuoteWatch {
            inner,
            state: QuoteState::StartField,
            line: first_line,
            column: 0,
            opened_at: (first_line, 1),
            at_end: false,
        }
    }

    fn observe(&mut self, bytes: &[u8]) {
        use QuoteState::*;
        for &b in bytes {
            self.state = match (self.state, b) {
                (StartField, b'"') => {
                    self.opened_at = (self.line, self.column + 1);
                    Quoted
                }
                (Quoted, b'"') => QuoteInQuoted,
                (Quoted, _) => Quoted,
                (QuoteInQuoted, b'"') => Quoted,
                (StartField | Unquoted | QuoteInQuoted, b',' | b'\n') => StartField,
                (StartField | Unquoted | QuoteInQuoted, _) => Unquoted,
            };
            if b == b'\n' {
                self.line += 1;
                self.column = 0;
            } else if b & 0xC0 != 0x80 {
                self.column += 1;
            }
        }
    }

    /// The error for a quoted field still open at the end of the input.
    fn unclosed(&self, file: &str) -> Option<InputError> {
        (self.at_end && self.state == QuoteState::Quoted).then(|| {
            let (line, column) = self.opened_at;
            unreadable(
                file,
                line,
                column,
                "this quote opens a field that is never closed, so every line after it \
                 would be read as one field; close or remove the quote",
            )
        })
    }
}

impl<R: Read> Read for QuoteWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.at_end = true;
        }
        self.observe(&buf[..n]);
        Ok(n)
    }
}

fn csv_error(file: &str, err: csv::Error) -> InputError {
    let (line, message) = match err.kind() {
        csv::ErrorKind::Utf8 { pos, err } => (
            pos.as_ref().map_or(1, |p| p.line()),
            format!("field {} is not valid UTF-8", err.field() + 1),
        ),
        csv::ErrorKind::Io(e) => (1, format!("read error: {e}")),
        _ => (
            err.position().map_or(1, |p| p.line()),
            format!("malformed CSV: {err}"),
        ),
    };
    unreadable(file, line, 1, message)
}

// ---------------------------------------------------------------- JSON Lines

fn read_jsonl(
    reader: &mut impl BufRead,
    file: &str,
    skipped_lines: u64,
    group: Option<&str>,
    on_row: &mut dyn FnMut(InputRow),
) -> Result<u64, InputError> {
    let mut line = Vec::new();
    let mut line_no = skipped_lines;
    let mut offset = 0u64;
    let mut rows = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|error| InputError::Read {
                file: file.to_string(),
                offset,
                error,
            })?;
        if n == 0 {
            break;
        }
        offset += n as u64;
        line_no += 1;
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let mut de = serde_json::Deserializer::from_slice(text);
        let content = RowSeed { group }
            .deserialize(&mut de)
            .and_then(|content| de.end().map(|()| content));
        let content = content.map_err(|e| {
            let leading = line.len() - line.trim_ascii_start().len();
            let mut message = format!("malformed JSON: {}", describe_json_error(&e));
            if e.is_eof() {
                message.push_str(
                    " (JSON Lines needs each object whole on one line; \
                     a JSON array over several lines is JSON: use a .json file or --format json)",
                );
            }
            unreadable(
                file,
                line_no,
                e.column().max(1) as u64 + leading as u64,
                message,
            )
        })?;
        rows += 1;
        on_row(InputRow {
            position: Position {
                kind: PositionKind::Line,
                row: line_no,
                pair: 0,
            },
            content,
        });
    }
    if rows == 0 {
        return Err(unreadable(file, line_no.max(1), 1, "the input has no rows"));
    }
    Ok(rows)
}

/// A syntax error in words, with a hint where serde_json's own words are terse.
fn describe_json_error(err: &serde_json::Error) -> String {
    let mut text = strip_serde_position(err);
    if text.contains("recursion limit exceeded") {
        // serde_json refuses to nest deeper than 128 (bounding its stack); no row needs more than 3.
        text.push_str(" (values nested more than 128 deep)");
    }
    text
}

/// serde_json appends " at line L column C"; we print our own position.
fn strip_serde_position(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

// ---------------------------------------------------------------- JSON array

fn read_json(
    reader: &mut impl BufRead,
    file: &str,
    skipped_lines: u64,
    group: Option<&str>,
    on_row: &mut dyn FnMut(InputRow),
) -> Result<u64, InputError> {
    let mut rows = 0u64;
    // serde_json reads a reader one byte at a time through `io::Bytes`, which std
    // serves straight from the buffer only for a `BufReader` passed by value; through
    // `&mut impl BufRead` every byte is a `read` call, and a million-element array
    // took three times as long to read as the same rows in CSV. The inner buffer's
    // unread tail is dropped with it: the tap has hashed those bytes already and
    // `de.end()` has checked them.
    let mut de =
        serde_json::Deserializer::from_reader(BufReader::with_capacity(READ_BUFFER_BYTES, reader));
    let parsed = ArrayOfRows {
        on_row,
        rows: &mut rows,
        group,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if let Err(e) = parsed {
        let mut message = match e.classify() {
            serde_json::error::Category::Data => strip_serde_position(&e),
            _ => format!("malformed JSON: {}", describe_json_error(&e)),
        };
        if message.contains("trailing characters") || message.contains("invalid type: map") {
            message.push_str(
                " (one object per line is JSON Lines: use a .jsonl file or --format jsonl)",
            );
        }
        // serde_json says column 0 for the end of input after a newline; columns count from 1.
        return Err(unreadable(
            file,
            e.line().max(1) as u64 + skipped_lines,
            e.column().max(1) as u64,
            message,
        ));
    }
    if rows == 0 {
        return Err(unreadable(file, 1, 1, "the array has no rows"));
    }
    Ok(rows)
}

/// Walks a JSON array one element at a time: only the current element is in memory.
struct ArrayOfRows<'a> {
    on_row: &'a mut dyn FnMut(InputRow),
    rows: &'a mut u64,
    group: Option<&'a str>,
}

impl<'de> DeserializeSeed<'de> for ArrayOfRows<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ArrayOfRows<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0u64;
        while let Some(content) = seq.next_element_seed(RowSeed { group: self.group })? {
            (self.on_row)(InputRow {
                position: Position {
                    kind: PositionKind::Index,
                    row: index,
                    pair: 0,
                },
                content,
            });
            index += 1;
            *self.rows += 1;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- JSON objects -> rows

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn text_field(value: Value, name: &str) -> Field {
    match value {
        Value::String(s) => Ok(s),
        other => Err(format!("{name} is {}, not a string", json_type(&other))),
    }
}

fn list_field(value: Value, name: &str) -> Result<Vec<Field>, String> {
    match value {
        Value::Array(items) if items.is_empty() => Err(format!("{name} is an empty list")),
        Value::Array(items) => Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, v)| text_field(v, &format!("{name}[{i}]")))
            .collect()),
        other => Err(format!(
            "{name} is {}, not a list of ids",
            json_type(&other)
        )),
    }
}

/// One JSON element deserialized straight into a row: the row that
/// [`row_from_value`] makes of the element's `Value`, without building the
/// element's map (a million objects cost a map and its nodes each). The fields'
/// values are still `Value`s, so every number and string is checked as before.
#[derive(Clone, Copy)]
struct RowSeed<'a> {
    /// The normalized name of the `--max-down-per` field, if any.
    group: Option<&'a str>,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = RowContent;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<RowContent, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = RowContent;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<RowContent, E> {
        Ok(not_an_object("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<RowContent, E> {
        Ok(not_an_object("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<RowContent, E> {
        Ok(not_an_object("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<RowContent, E> {
        Ok(not_an_object("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<RowContent, E> {
        Ok(not_an_object("a string"))
    }

    fn visit_unit<E>(self) -> Result<RowContent, E> {
        Ok(not_an_object("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RowContent, A::Error> {
        while seq.next_element::<Value>()?.is_some() {}
        Ok(not_an_object("a list"))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RowContent, A::Error> {
        let mut fields: Vec<(String, Value)> = Vec::with_capacity(4);
        while let Some(name) = map.next_key::<String>()? {
            let value: Value = map.next_value()?;
            fields.push((name, value));
        }
        // As serde_json's `Map` (a BTreeMap) holds them: in name order, and of a
        // name repeated, the last value. The stable sort keeps repeats in document
        // order; reversed, `dedup_by` keeps the first, which is the last.
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        fields.reverse();
        fields.dedup_by(|a, b| a.0 == b.0);
        fields.reverse();
        Ok(row_from_fields(fields, self.group))
    }
}

fn not_an_object(what: &str) -> RowContent {
    RowContent::Invalid {
        reason: format!("the element is {what}, not an object with instance_id and key_id"),
    }
}

/// Turns one JSON value into a row: a pair object, a set object, or an invalid row.
#[cfg(test)]
fn row_from_value(value: Value) -> RowContent {
    match value {
        Value::Object(map) => row_from_fields(map, None),
        other => not_an_object(json_type(&other)),
    }
}

/// An object's fields (in name order, names distinct) -> a row.
///
/// `group`: the normalized name of the `--max-down-per` field, whose value (a string
/// or a number, as text) becomes the row's `group`.
fn row_from_fields(
    fields: impl IntoIterator<Item = (String, Value)>,
    group: Option<&str>,
) -> RowContent {
    let invalid = |reason: String| RowContent::Invalid { reason };
    let mut instance = None;
    let mut key = None;
    let mut instances = None;
    let mut keys = None;
    let mut region = None;
    let mut new_key = None;
    let mut keys_after = None;
    let mut state = None;
    let mut group_value = None;
    for (name, value) in fields {
        if group.is_some_and(|group| *normalized_key(&name) == *group) {
            group_value = match value {
                Value::String(s) => Some(s.trim().to_string()),
                Value::Null => None,
                other => Some(other.to_string()),
            };
            continue;
        }
        let slot = match &*normalized_key(&name) {
            "instanceid" => &mut instance,
            "keyid" => &mut key,
            "instanceids" => &mut instances,
            "keyids" => &mut keys,
            "region" => &mut region,
            "newkeyid" | "newkeyids" => &mut new_key,
            "keysafter" => {
                keys_after = value.as_u64();
                continue;
            }
            "instancestate" | "state" => {
                state = value.as_str().map(|s| s.trim().to_string());
                continue;
            }
            _ => continue,
        };
        if let Some((earlier, _)) = slot {
            return invalid(format!(
                "the object has both {earlier:?} and {name:?}; keep one"
            ));
        }
        *slot = Some((name, value));
    }
    let new_key_ids = match new_key {
        None => Vec::new(),
        // Named but empty: a missing new key, never a plain unbind.
        Some((name, Value::Null)) => vec![Err(format!(
            "{name} is null: a rotation row needs the new key"
        ))],
        Some((name, Value::String(s))) if s.trim().is_empty() => {
            vec![Err(format!(
                "{name} is empty: a rotation row needs the new key"
            ))]
        }
        Some((name, Value::Array(list))) if list.is_empty() => {
            vec![Err(format!(
                "{name} is an empty list: a rotation row needs the new key"
            ))]
        }
        Some((name, Value::Array(list))) => match list_field(Value::Array(list), &name) {
            Ok(ids) => ids,
            Err(reason) => return invalid(reason),
        },
        Some((name, value)) => vec![text_field(value, &name)],
    };
    let region = match region {
        None | Some((_, Value::Null)) => None,
        Some((_, Value::String(s))) if s.is_empty() => None,
        Some((name, value)) => Some(text_field(value, &name)),
    };
    let is_pair = instance.is_some() || key.is_some();
    let is_set = instances.is_some() || keys.is_some();
    match (is_pair, is_set) {
        (true, true) => invalid(
            "the object mixes a pair (instance_id, key_id) with a set (instance_ids, key_ids)"
                .to_string(),
        ),
        (false, false) => {
            invalid("the object has none of instance_id, key_id, instance_ids, key_ids".to_string())
        }
        (true, false) => RowContent::Pair {
            instance_id: instance.map_or_else(
                || Err("instance_id is missing".to_string()),
                |(name, v)| text_field(v, &name),
            ),
            key_id: key.map_or_else(
                || Err("key_id is missing".to_string()),
                |(name, v)| text_field(v, &name),
            ),
            region,
            new_key_ids,
            keys_after,
            state,
            group: group_value,
        },
        (false, true) => {
            let Some((instances_name, instances)) = instances else {
                return invalid("a set needs instance_ids as well as key_ids".to_string());
            };
            let Some((keys_name, keys)) = keys else {
                return invalid("a set needs key_ids as well as instance_ids".to_string());
            };
            match (
                list_field(instances, &instances_name),
                list_field(keys, &keys_name),
            ) {
                (Ok(instance_ids), Ok(key_ids)) => RowContent::Set {
                    instance_ids,
                    key_ids,
                    region,
                    new_key_ids,
                    group: group_value,
                },
                (Err(reason), _) | (_, Err(reason)) => invalid(reason),
            }
        }
    }
}

// ---------------------------------------------------------------- the tap

/// Sits between the raw source and the parsers: hashes every byte and checks UTF-8,
/// remembering the line, column and offset of the first bad byte.
struct Tap<R> {
    inner: R,
    hasher: Sha256,
    /// Bytes checked so far (the offset of the next byte).
    offset: u64,
    /// 1-based line of the next byte.
    line: u64,
    /// Characters already seen on the current line.
    column: u64,
    /// The start of a character split across two reads.
    carry: [u8; 4],
    carry_len: usize,
    bad: Option<(u64, u64, u64)>,
    /// The last byte read so far, shared with the CSV reader (see `read_csv`).
    last_byte: Rc<Cell<u8>>,
    io_error: Option<(u64, io::ErrorKind, String)>,
}

impl<R: Read> Tap<R> {
    fn new(inner: R) -> Tap<R> {
        Tap {
            inner,
            hasher: Sha256::new(),
            offset: 0,
            line: 1,
            column: 0,
            carry: [0; 4],
            carry_len: 0,
            bad: None,
            last_byte: Rc::new(Cell::new(0)),
            io_error: None,
        }
    }

    /// The precise error, if reading stopped because of bad bytes or an I/O failure.
    fn explain(&self, file: &str) -> Option<InputError> {
        if let Some((line, column, offset)) = self.bad {
            return Some(InputError::NotUtf8 {
                file: file.to_string(),
                line,
                column,
                offset,
            });
        }
        self.io_error
            .as_ref()
            .map(|(offset, kind, message)| InputError::Read {
                file: file.to_string(),
                offset: *offset,
                error: io::Error::new(*kind, message.clone()),
            })
    }

    fn mark_bad(&mut self) -> io::Error {
        self.bad = Some((self.line, self.column + 1, self.offset));
        io::Error::new(io::ErrorKind::InvalidData, "not valid UTF-8")
    }

    /// Advances line, column and offset over text already known to be valid UTF-8.
    fn count(&mut self, text: &[u8]) {
        self.offset += text.len() as u64;
        let chars = |bytes: &[u8]| bytes.iter().filter(|&&b| b & 0xC0 != 0x80).count() as u64;
        match text.iter().rposition(|&b| b == b'\n') {
            Some(last) => {
                self.line += text.iter().filter(|&&b| b == b'\n').count() as u64;
                self.column = chars(&text[last + 1..]);
            }
            None => self.column += chars(text),
        }
    }

    fn check(&mut self, mut data: &[u8]) -> io::Result<()> {
        if self.carry_len > 0 {
            let want = match self.carry[0] {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            while self.carry_len < want && !data.is_empty() {
                self.carry[self.carry_len] = data[0];
                self.carry_len += 1;
                data = &data[1..];
            }
            if self.carry_len < want {
                return Ok(());
            }
            if std::str::from_utf8(&self.carry[..want]).is_err() {
                return Err(self.mark_bad());
            }
            let carried = self.carry;
            self.count(&carried[..want]);
            self.carry_len = 0;
        }
        match std::str::from_utf8(data) {
            Ok(_) => self.count(data),
            Err(e) => {
                let valid = e.valid_up_to();
                self.count(&data[..valid]);
                if e.error_len().is_some() {
                    return Err(self.mark_bad());
                }
                let tail = &data[valid..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len();
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.bad.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not valid UTF-8",
            ));
        }
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.io_error = Some((self.offset, e.kind(), e.to_string()));
                return Err(e);
            }
        };
        if n == 0 {
            if self.carry_len > 0 {
                return Err(self.mark_bad());
            }
            return Ok(0);
        }
        self.hasher.update(&buf[..n]);
        self.last_byte.set(buf[n - 1]);
        self.check(&buf[..n])?;
        Ok(n)
    }
}

/// SHA-256 (lowercase hex) of a file's current bytes, to tell whether an input changed.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &[u8], format: Option<Format>) -> Result<Vec<InputRow>, InputError> {
        let mut rows = Vec::new();
        read_from(text, "in", format, |r| rows.push(r))?;
        Ok(rows)
    }

    fn pair(instance: &str, key: &str, region: Option<&str>) -> RowContent {
        RowContent::Pair {
            instance_id: Ok(instance.into()),
            key_id: Ok(key.into()),
            region: region.map(|r| Ok(r.into())),
            new_key_ids: Vec::new(),
            keys_after: None,
            state: None,
            group: None,
        }
    }

    #[test]
    fn csv_with_bom_crlf_and_extra_columns() {
        let text = b"\xEF\xBB\xBFName,InstanceId,KEYID,Region\r\nweb,ins-00000001,skey-00000001,ap-guangzhou\r\ndb,ins-00000002,skey-00000002,\r\n";
        let rows = read(text, None).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].position.to_string(), "line 2");
        assert_eq!(
            rows[0].content,
            pair("ins-00000001", "skey-00000001", Some("ap-guangzhou"))
        );
        assert_eq!(rows[1].position.to_string(), "line 3");
        assert_eq!(rows[1].content, pair("ins-00000002", "skey-00000002", None));
    }

    #[test]
    fn csv_lines_count_physical_lines() {
        let text = b"instance_id,key_id,note\nins-00000001,skey-00000001,\"two\nlines\"\nins-00000002,skey-00000002,x\n";
        let rows = read(text, Some(Format::Csv)).unwrap();
        assert_eq!(rows[1].position.row, 4);
        let lines = |text: &[u8]| -> Vec<u64> {
            read(text, Some(Format::Csv))
                .unwrap()
                .iter()
                .map(|r| r.position.row)
                .collect()
        };
        assert_eq!(lines(b"h,instance_id,key_id\r\n\r\na,b,c\r\nc,d,e"), [3, 4]);
        assert_eq!(
            lines(b"instance_id,key_id\n\n\na,b\n\"c\nx\",d\ne,f"),
            [4, 5, 7]
        );
        assert_eq!(lines(b"instance_id,key_id\na,b\n\n"), [2]);
    }

    #[test]
    fn leading_blank_lines_count() {
        let err = read(b"\n\ninstance;key\n", Some(Format::Csv)).unwrap_err();
        assert_eq!(err.location(), Some((3, 1)), "{err}");
        let rows = read(b"\r\n\r\ninstance_id,key_id\r\na,b\r\n", None).unwrap();
        assert_eq!(rows[0].position.row, 4);
        let blank = vec![b'\n'; READ_BUFFER_BYTES + 10];
        let mut text = blank.clone();
        text.extend_from_slice(b"[{\"instance_id\": }]");
        let err = read(&text, None).unwrap_err();
        assert_eq!(
            err.location().map(|l| l.0),
            Some(blank.len() as u64 + 1),
            "{err}"
        );
        let mut text = blank.clone();
        text.extend_from_slice(b"instance_id,key_id\na,b\n");
        let rows = read(&text, None).unwrap();
        assert_eq!(rows[0].position.row, blank.len() as u64 + 2);
    }

    #[test]
    fn csv_short_row_is_a_row_problem() {
        let rows = read(b"instance_id,key_id\nins-00000001\n", Some(Format::Csv)).unwrap();
        match &rows[0].content {
            RowContent::Pair {
                key_id: Err(why), ..
            } => assert!(why.contains("no key_id"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn csv_missing_column_and_wrong_delimiter() {
        let err = read(
            b"instance_id;key_id\nins-00000001;skey-00000001\n",
            Some(Format::Csv),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("in: line 1, column 1:"), "{err}");
        assert!(err.contains("no instance_id or key_id column"), "{err}");
        assert!(err.contains("';'"), "{err}");
    }

    #[test]
    fn csv_quote_left_open_is_located() {
        let text = b"instance_id,key_id\nins-00000001,skey-00000001\nins-00000002,\"skey-00000001\nins-00000003,skey-00000001\n";
        let err = read(text, Some(Format::Csv)).unwrap_err();
        assert_eq!(err.location(), Some((3, 14)), "{err}");
        assert!(err.to_string().contains("never closed"), "{err}");
        // In the header, the quote swallows the whole file into column names.
        let err = read(b"\"instance_id,key_id\na,b\n", Some(Format::Csv)).unwrap_err();
        assert_eq!(err.location(), Some((1, 1)), "{err}");
        // Closed quotes, doubled quotes and quotes inside unquoted fields are fine.
        let rows = read(
            b"instance_id,key_id\n\"ins-00000001\",\"a\"\"b\"\nins-00000002,x\"y\n\"\"\"\",\"\n\"\n",
            Some(Format::Csv),
        )
        .unwrap();
        assert_eq!(rows.len(), 3);
    }

    #[test]
    fn csv_with_bare_carriage_returns_is_explained() {
        let err = read(
            b"instance_id,key_id,region\rins-00000001,skey-00000001,ap-guangzhou\r",
            Some(Format::Csv),
        )
        .unwrap_err();
        assert!(err.to_string().contains("CR only"), "{err}");
        assert_eq!(err.location(), Some((1, 1)));
    }

    #[test]
    fn open_error_names_the_cause_once() {
        let err = read_input(Path::new("/nonexistent/in.csv"), None, None, |_| {}).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("cannot open /nonexistent/in.csv: "),
            "{text}"
        );
        assert!(std::error::Error::source(&err).is_none());
    }

    #[test]
    fn not_utf8_is_located() {
        let err = read(
            b"instance_id,key_id\nins-00000001,sk\xffey\n",
            Some(Format::Csv),
        )
        .unwrap_err();
        assert_eq!(err.location(), Some((2, 16)));
        assert!(err.to_string().contains("byte 34"), "{err}");
        // A multi-byte character split across reads is fine; a truncated one at the end is not.
        let err = read(b"instance_id,key_id\n\xC3\xA9\xC3", Some(Format::Csv)).unwrap_err();
        assert!(
            matches!(
                err,
                InputError::NotUtf8 {
                    line: 2,
                    column: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn tap_handles_characters_split_across_reads() {
        struct OneByte<'a>(&'a [u8]);
        impl Read for OneByte<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let text = "instance_id,key_id,note\nins-00000001,skey-00000001,ключ 🔑\n";
        let mut rows = Vec::new();
        let digest = read_from(OneByte(text.as_bytes()), "in", None, |r| rows.push(r)).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(digest.sha256, crate::sign::sha256_hex(text.as_bytes()));
    }

    #[test]
    fn empty_inputs() {
        for text in [
            &b""[..],
            b"\xEF\xBB\xBF",
            b"  \n\n",
            b"instance_id,key_id\n",
            b"[]",
            b"\n\n",
        ] {
            let err = read(text, None);
            assert!(
                matches!(err, Err(InputError::Unreadable { .. })),
                "{text:?}: {err:?}"
            );
        }
    }

    #[test]
    fn rows_read_straight_from_json_match_rows_made_from_values() {
        let elements = [
            r#"{"instance_id": "ins-00000001", "key_id": "skey-00000001", "region": "ap-guangzhou"}"#,
            r#"{"KeyId": "skey-00000001", "InstanceId": "ins-00000001", "other": [1, {"a": null}]}"#,
            r#"{"instance_id": "ins-00000001", "instance_id": "ins-00000002", "key_id": "k"}"#,
            r#"{"key_id": "skey-1", "KeyId": "skey-2", "instance_id": "ins-00000001"}"#,
            r#"{"Instance ID": "ins-00000001", "key-id": "skey-00000001", "region": null}"#,
            r#"{"instance_ids": ["ins-00000001", 2], "key_ids": [], "region": ""}"#,
            r#"{"InstanceIds": ["ins-00000001"], "KeyIds": ["skey-00000001"], "instance_id": "x"}"#,
            r#"{"region": 5, "key_ids": ["skey-00000001"]}"#,
            r#"{}"#,
            r#"[1, 2, {"instance_id": "ins-00000001"}]"#,
            r#""ins-00000001""#,
            "42",
            "-1.5",
            "true",
            "null",
        ];
        for text in elements {
            let value: Value = serde_json::from_str(text).unwrap();
            let mut de = serde_json::Deserializer::from_str(text);
            let direct = RowSeed { group: None }.deserialize(&mut de).unwrap();
            assert_eq!(direct, row_from_value(value), "{text}");
        }
        // Numbers out of range are refused the same way, wherever they sit.
        for text in [
            r#"{"other": 1e999}"#,
            "[1e999]",
            r#"{"instance_id": -1e999}"#,
        ] {
            let as_value = serde_json::from_str::<Value>(text).unwrap_err().to_string();
            let mut de = serde_json::Deserializer::from_str(text);
            let direct = RowSeed { group: None }
                .deserialize(&mut de)
                .unwrap_err()
                .to_string();
            assert_eq!(direct, as_value, "{text}");
        }
    }

    #[test]
    fn json_pairs_sets_and_bad_elements() {
        let text = br#"[
            {"instance_id": "ins-00000001", "key_id": "skey-00000001", "region": "ap-guangzhou"},
            {"InstanceIds": ["ins-00000002", 7], "KeyIds": ["skey-00000002"]},
            42,
            {"instance_id": 5, "key_id": "skey-00000001"},
            {"instance_ids": "ins-00000001", "key_ids": ["skey-00000001"]}
        ]"#;
        let rows = read(text, None).unwrap();
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[2].position.to_string(), "index 2");
        assert!(
            matches!(&rows[1].content, RowContent::Set { instance_ids, .. }
            if instance_ids[1] == Err("InstanceIds[1] is a number, not a string".into()))
        );
        assert!(
            matches!(&rows[2].content, RowContent::Invalid { reason } if reason.contains("a number"))
        );
        assert!(
            matches!(&rows[3].content, RowContent::Pair { instance_id: Err(r), .. } if r.contains("number"))
        );
        assert!(
            matches!(&rows[4].content, RowContent::Invalid { reason } if reason.contains("not a list"))
        );
    }

    #[test]
    fn malformed_json_is_located() {
        let err = read(
            b"[\n {\"instance_id\": \"ins-00000001\",\n  \"key_id\" \"x\"}]",
            None,
        )
        .unwrap_err();
        assert_eq!(err.location().map(|l| l.0), Some(3));
        assert!(err.to_string().contains("malformed JSON"), "{err}");
        let err = read(b"{\"a\":1}\n{\"a\":2}\n", Some(Format::Json)).unwrap_err();
        assert!(err.to_string().contains("JSON Lines"), "{err}");
        let err = read(b"{\"a\":1}", Some(Format::Json)).unwrap_err();
        assert!(err.to_string().contains("expected a JSON array"), "{err}");
        let err = read(b"[\n{\"instance_id\": \"ins-00000001\"},\n", None).unwrap_err();
        assert_eq!(err.location(), Some((3, 1)), "{err}");
        let err = read(b"[\n  {\"instance_id\": 1}\n]\n", Some(Format::Jsonl)).unwrap_err();
        assert!(err.to_string().contains("--format json"), "{err}");
        let deep = "[".repeat(100_000);
        let err = read(deep.as_bytes(), None).unwrap_err();
        assert!(err.to_string().contains("nested more than 128"), "{err}");
        assert_eq!(err.location().map(|l| l.0), Some(1));
    }

    #[test]
    fn jsonl_lines_blank_lines_and_errors() {
        let text =
            b"{\"instance_id\":\"ins-00000001\",\"key_id\":\"skey-00000001\"}\r\n\r\n[1]\r\n";
        let rows = read(text, Some(Format::Jsonl)).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].position.to_string(), "line 3");
        assert_eq!(rows[0].content, pair("ins-00000001", "skey-00000001", None));
        let err = read(b"{\"instance_id\":1}\n  {oops}\n", Some(Format::Jsonl)).unwrap_err();
        assert_eq!(err.location(), Some((2, 4)));
    }

    #[test]
    fn format_is_sniffed_when_the_extension_says_nothing() {
        let rows = read(
            br#"[{"instance_id":"ins-00000001","key_id":"skey-00000001"}]"#,
            None,
        )
        .unwrap();
        assert_eq!(rows[0].position.kind, PositionKind::Index);
        let rows = read(
            br#"{"instance_id":"ins-00000001","key_id":"skey-00000001"}"#,
            None,
        )
        .unwrap();
        assert_eq!(rows[0].position.kind, PositionKind::Line);
    }

    #[test]
    fn rotation_rows_carry_their_new_keys_and_an_empty_one_is_an_error() {
        let new_keys = |value: serde_json::Value| match row_from_value(value) {
            RowContent::Pair { new_key_ids, .. } | RowContent::Set { new_key_ids, .. } => {
                new_key_ids
            }
            RowContent::Invalid { reason } => panic!("invalid: {reason}"),
        };
        let pair = |extra: serde_json::Value| {
            let mut row =
                serde_json::json!({"instance_id": "ins-00000001", "key_id": "skey-00000001"});
            row.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            row
        };
        assert!(new_keys(pair(serde_json::json!({}))).is_empty());
        assert_eq!(
            new_keys(pair(serde_json::json!({"new_key_id": "skey-00000002"}))),
            [Ok("skey-00000002".to_string())]
        );
        assert_eq!(
            new_keys(serde_json::json!({
                "InstanceIds": ["ins-00000001"], "KeyIds": ["skey-00000001"],
                "NewKeyIds": ["skey-00000002", "skey-00000003"]
            })),
            [
                Ok("skey-00000002".to_string()),
                Ok("skey-00000003".to_string())
            ]
        );
        for empty in [
            serde_json::json!({"new_key_id": ""}),
            serde_json::json!({"new_key_id": null}),
            serde_json::json!({"NewKeyIds": []}),
        ] {
            let keys = new_keys(pair(empty.clone()));
            assert!(
                matches!(keys.as_slice(), [Err(reason)] if reason.contains("needs the new key")),
                "{empty}: {keys:?}"
            );
        }
        let csv = read(
            b"instance_id,key_id,new_key_id\nins-00000001,skey-00000001,skey-00000002\nins-00000002,skey-00000001,\n",
            None,
        )
        .unwrap();
        let keys: Vec<_> = csv
            .iter()
            .map(|row| match &row.content {
                RowContent::Pair { new_key_ids, .. } => new_key_ids.clone(),
                _ => panic!("a pair"),
            })
            .collect();
        assert_eq!(keys[0], [Ok("skey-00000002".to_string())]);
        assert!(matches!(keys[1].as_slice(), [Err(reason)] if reason.contains("is empty")));
    }
}
