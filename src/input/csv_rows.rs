//! CSV input: the header's columns found by name, each record read into a row, a
//! quote left open reported where it opened.

use std::cell::Cell;
use std::io::{self, BufRead, Read};

use super::*;

pub(super) fn read_csv(
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
            let embedded = memchr::memchr_iter(b'\n', held.as_slice().as_bytes()).count() as u64;
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
pub(super) struct Columns {
    instance: usize,
    key: usize,
    region: Option<usize>,
    account: Option<usize>,
    new_key: Option<usize>,
    keys_after: Option<usize>,
    state: Option<usize>,
    group: Option<usize>,
}

/// `group`: the normalized name of the `--max-down-per` column, which must be there.
pub(super) fn csv_columns(
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
    let mut account_col = None;
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
            "account" => &mut account_col,
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
            account: account_col,
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
pub(super) fn csv_row(record: &csv::StringRecord, line: u64, columns: Columns) -> InputRow {
    let Columns {
        instance: instance_col,
        key: key_col,
        region: region_col,
        account: account_col,
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
    let account = account_col.and_then(|col| match get(col).map(str::trim) {
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
            account,
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
pub(super) struct QuoteWatch<R> {
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
pub(super) enum QuoteState {
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

    /// Follows `bytes` a stretch at a time: between two quotes nothing but the last
    /// byte decides the state, and the line and column are counted over the stretch
    /// (loops the compiler vectorises), so CSV without quotes costs a few instructions
    /// a kilobyte here instead of a `match` per byte.
    fn observe(&mut self, mut bytes: &[u8]) {
        while let Some(at) = memchr::memchr(b'"', bytes) {
            self.pass(&bytes[..at]);
            self.quote();
            bytes = &bytes[at + 1..];
        }
        self.pass(bytes);
    }

    /// A stretch with no `"` in it.
    fn pass(&mut self, stretch: &[u8]) {
        let Some(&last) = stretch.last() else {
            return;
        };
        if self.state != QuoteState::Quoted {
            self.state = if matches!(last, b',' | b'\n') {
                QuoteState::StartField
            } else {
                QuoteState::Unquoted
            };
        }
        advance_line_column(&mut self.line, &mut self.column, stretch);
    }

    fn quote(&mut self) {
        use QuoteState::*;
        self.state = match self.state {
            StartField => {
                self.opened_at = (self.line, self.column + 1);
                Quoted
            }
            Quoted => QuoteInQuoted,
            QuoteInQuoted => Quoted,
            Unquoted => Unquoted,
        };
        self.column += 1;
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

pub(super) fn csv_error(file: &str, err: csv::Error) -> InputError {
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

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    /// What `observe` must agree with: the quoting rules a byte at a time.
    fn byte_at_a_time(watch: &mut QuoteWatch<&[u8]>, bytes: &[u8]) {
        use QuoteState::*;
        for &b in bytes {
            watch.state = match (watch.state, b) {
                (StartField, b'"') => {
                    watch.opened_at = (watch.line, watch.column + 1);
                    Quoted
                }
                (Quoted, b'"') => QuoteInQuoted,
                (Quoted, _) => Quoted,
                (QuoteInQuoted, b'"') => Quoted,
                (StartField | Unquoted | QuoteInQuoted, b',' | b'\n') => StartField,
                (StartField | Unquoted | QuoteInQuoted, _) => Unquoted,
            };
            if b == b'\n' {
                watch.line += 1;
                watch.column = 0;
            } else if b & 0xC0 != 0x80 {
                watch.column += 1;
            }
        }
    }

    #[test]
    fn observing_a_stretch_at_a_time_agrees_with_a_byte_at_a_time() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(25);
        let pieces: [&[u8]; 7] = [b"\"", b",", b"\n", b"a", b"\xc3\xa9", b"\"\"", b"ins-1"];
        for _ in 0..2_000 {
            let mut input = Vec::new();
            for _ in 0..rng.random_range(0..60) {
                input.extend_from_slice(pieces[rng.random_range(0..pieces.len())]);
            }
            let mut fast = QuoteWatch::new(&input[..], 3);
            let mut slow = QuoteWatch::new(&input[..], 3);
            // Chunks of any size, as `read` hands them out.
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = rng.random_range(1..=rest.len());
                fast.observe(&rest[..n]);
                byte_at_a_time(&mut slow, &rest[..n]);
                rest = &rest[n..];
                let seen = |w: &QuoteWatch<&[u8]>| (w.state, w.line, w.column, w.opened_at);
                assert_eq!(
                    seen(&fast),
                    seen(&slow),
                    "{:?}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }
}
