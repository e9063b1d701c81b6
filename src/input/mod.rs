//! Reading plan input: CSV, a JSON array, or JSON Lines -> [`InputRow`]s, streamed.
//!
//! One pass over the bytes does three things: it hashes them (SHA-256, the run's
//! identity), checks that they are UTF-8 (with the exact line and column of the
//! first bad byte), and parses rows, handing each to a callback as soon as it is
//! read. Memory stays flat whatever the file's size: CSV and JSON Lines hold one
//! record at a time, and a JSON array is split into its elements, each parsed on
//! its own, so only the current element is ever in memory.
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

use sha2::{Digest, Sha256};

mod csv_rows;
mod json_rows;

use csv_rows::read_csv;
use json_rows::{read_json, read_jsonl};

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
        /// The account the row's instance is in (a name of the accounts file); `None`
        /// when the input has no `account` column or the cell is empty: the run's own.
        account: Option<Field>,
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
        /// As a pair's: every instance of the set is in this account.
        account: Option<Field>,
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

// ---------------------------------------------------------------- the tap

/// Moves a 1-based `line` and a `column` (the characters already on that line) over
/// `text`: UTF-8 continuation bytes (10xxxxxx) are no characters. Loops the compiler
/// vectorises; the tap's positions and the CSV quote watch's alike.
fn advance_line_column(line: &mut u64, column: &mut u64, text: &[u8]) {
    let characters = |bytes: &[u8]| bytes.iter().filter(|&&b| b & 0xC0 != 0x80).count() as u64;
    match memchr::memrchr(b'\n', text) {
        Some(last) => {
            *line += text.iter().filter(|&&b| b == b'\n').count() as u64;
            *column = characters(&text[last + 1..]);
        }
        None => *column += characters(text),
    }
}

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
        advance_line_column(&mut self.line, &mut self.column, text);
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
    use serde::de::DeserializeSeed;
    use serde_json::Value;

    use super::json_rows::{RowSeed, row_from_value};
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
            account: None,
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
    fn escaped_field_names_and_bytes_that_are_not_utf8_read_as_before() {
        // A name with an escape cannot be borrowed from the input; it is read all the same.
        let text = b"{\"instance\\u005fid\":\"ins-00000001\",\"key_id\":\"skey-00000001\"}\n";
        let rows = read(text, Some(Format::Jsonl)).unwrap();
        assert_eq!(rows[0].content, pair("ins-00000001", "skey-00000001", None));
        let text = b"[{\"key_id\":\"skey-00000001\",\"instance\\u005Fid\":\"ins-00000001\"}]";
        let rows = read(text, Some(Format::Json)).unwrap();
        assert_eq!(rows[0].content, pair("ins-00000001", "skey-00000001", None));
        // A line that is not UTF-8 is parsed as bytes, and its bad byte is placed.
        let err = read(
            b"{\"instance_id\":\"ins-00000001\",\"key_id\":\"skey-0000000\xff\"}\n",
            Some(Format::Jsonl),
        )
        .unwrap_err();
        assert_eq!(err.location().map(|l| l.0), Some(1), "{err}");
    }

    #[test]
    fn a_name_given_twice_keeps_its_last_value_in_order_or_not() {
        for text in [
            &b"{\"instance_id\":\"ins-00000001\",\"key_id\":\"skey-00000001\",\"key_id\":\"skey-00000002\"}\n"[..],
            &b"{\"key_id\":\"skey-00000001\",\"instance_id\":\"ins-00000001\",\"key_id\":\"skey-00000002\"}\n"[..],
        ] {
            let rows = read(text, Some(Format::Jsonl)).unwrap();
            assert_eq!(rows[0].content, pair("ins-00000001", "skey-00000002", None));
        }
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
