//! JSON input: JSON Lines one object per line, a JSON array walked element by element,
//! each element read straight into a row.

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::io::{self, BufRead, Read};

use serde::Deserialize;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::Value;

use super::*;

pub(super) fn read_jsonl(
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
        let content = parse_row(text, group).map_err(|e| {
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

/// One row's JSON, whole: an object (or any value, an invalid row) and nothing after it.
pub(super) fn parse_row(text: &[u8], group: Option<&str>) -> serde_json::Result<RowContent> {
    match parse_value(text, group)? {
        (content, None) => Ok(content),
        (_, Some(trailing)) => Err(trailing),
    }
}

/// One JSON value as a row, and the error for what follows it unless that is only
/// whitespace.
///
/// Text that is UTF-8 (the tap reports a file's first bad byte on its own) is parsed as
/// a `str`, so serde_json does not check each string in it again; other text as bytes,
/// where serde_json finds and places the bad byte.
fn parse_value(
    text: &[u8],
    group: Option<&str>,
) -> serde_json::Result<(RowContent, Option<serde_json::Error>)> {
    fn value<'de, R: serde_json::de::Read<'de>>(
        mut de: serde_json::Deserializer<R>,
        group: Option<&str>,
    ) -> serde_json::Result<(RowContent, Option<serde_json::Error>)> {
        let content = RowSeed { group }.deserialize(&mut de)?;
        Ok((content, de.end().err()))
    }
    match std::str::from_utf8(text) {
        Ok(text) => {
            // With a budget-group column every row is read for it: not the commonest row.
            if group.is_none()
                && let Some(pair) = plain_pair(text)
            {
                return Ok((pair, None));
            }
            match plain_object(text) {
                Some(fields) => Ok((row_from_fields(in_name_order(fields), group), None)),
                None => value(serde_json::Deserializer::from_str(text), group),
            }
        }
        Err(_) => value(serde_json::Deserializer::from_slice(text), group),
    }
}

/// The bytes that end a plain string's text: its closing quote, or what rules it out
/// (an escape, a control character).
const ENDS_A_PLAIN_STRING: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// An object of a few plain strings and nothing after it (`{"instance_id": "ins-…",
/// "key_id": "skey-…", "region": "ap-guangzhou"}`), read without serde_json's general
/// machinery: each field's name and value, in document order, go to `on_field`. `None`
/// for anything else (an escape or a control character in a string, a value that is
/// not a string, an empty object, a syntax error) or when `on_field` says `None`;
/// serde_json then reads the text. Where both read a text, they read the same fields
/// (a test holds them to it).
fn plain_fields<'a>(
    text: &'a str,
    mut on_field: impl FnMut(&'a str, &'a str) -> Option<()>,
) -> Option<()> {
    let bytes = text.as_bytes();
    let mut at = 0;
    let skip_whitespace = |at: &mut usize| {
        while bytes.get(*at).is_some_and(|&b| is_json_whitespace(b)) {
            *at += 1;
        }
    };
    // A string with no escape and no control character: the text between its quotes.
    // One pass stops at the first byte that ends it or rules it out (a table look-up
    // a byte). The strings of a row are short (ids, a region), where a plain loop
    // beats memchr's set-up.
    let string = |at: &mut usize| -> Option<&'a str> {
        if bytes.get(*at) != Some(&b'"') {
            return None;
        }
        let start = *at + 1;
        let len = bytes[start..]
            .iter()
            .position(|&b| ENDS_A_PLAIN_STRING[b as usize])?;
        let end = start + len;
        if bytes[end] != b'"' {
            return None;
        }
        *at = end + 1;
        text.get(start..end)
    };
    let expect = |at: &mut usize, byte: u8| -> Option<()> {
        skip_whitespace(at);
        (bytes.get(*at) == Some(&byte)).then(|| *at += 1)
    };
    expect(&mut at, b'{')?;
    loop {
        skip_whitespace(&mut at);
        let name = string(&mut at)?;
        expect(&mut at, b':')?;
        skip_whitespace(&mut at);
        on_field(name, string(&mut at)?)?;
        skip_whitespace(&mut at);
        match bytes.get(at) {
            Some(b',') => at += 1,
            Some(b'}') => break,
            _ => return None,
        }
    }
    at += 1;
    skip_whitespace(&mut at);
    (at == bytes.len()).then_some(())
}

/// [`plain_fields`] as an object's fields, for [`row_from_fields`].
fn plain_object(text: &str) -> Option<Vec<(Cow<'_, str>, Value)>> {
    let mut fields = Vec::with_capacity(4);
    plain_fields(text, |name, value| {
        fields.push((Cow::Borrowed(name), Value::String(value.to_string())));
        Some(())
    })?;
    Some(fields)
}

/// The commonest row of all, an instance and a key with at most a region, each named
/// once in its documented spelling: the pair [`row_from_fields`] would make of
/// [`plain_object`]'s fields, made without them. `None` for any other object.
fn plain_pair(text: &str) -> Option<RowContent> {
    let (mut instance, mut key, mut region) = (None, None, None);
    plain_fields(text, |name, value| {
        let slot = match name {
            "instance_id" | "InstanceId" => &mut instance,
            "key_id" | "KeyId" => &mut key,
            "region" | "Region" => &mut region,
            _ => return None,
        };
        slot.is_none().then(|| *slot = Some(value))
    })?;
    Some(RowContent::Pair {
        instance_id: Ok(instance?.to_string()),
        key_id: Ok(key?.to_string()),
        region: region.filter(|r| !r.is_empty()).map(|r| Ok(r.to_string())),
        account: None,
        new_key_ids: Vec::new(),
        keys_after: None,
        state: None,
        group: None,
    })
}

/// An object's fields as serde_json's `Map` (a BTreeMap) holds them: in name order,
/// and of a name repeated, the last value.
fn in_name_order<'a>(mut fields: Vec<(Cow<'a, str>, Value)>) -> Vec<(Cow<'a, str>, Value)> {
    // Most objects come with their names in order already, each once. Otherwise the
    // stable sort keeps repeats in document order; reversed, `dedup_by` keeps the
    // first, which is the last.
    if !fields.is_sorted_by(|a, b| a.0 < b.0) {
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        fields.reverse();
        fields.dedup_by(|a, b| a.0 == b.0);
        fields.reverse();
    }
    fields
}

/// A syntax error in words, with a hint where serde_json's own words are terse.
pub(super) fn describe_json_error(err: &serde_json::Error) -> String {
    let mut text = strip_serde_position(err);
    if text.contains("recursion limit exceeded") {
        // serde_json refuses to nest deeper than 128 (bounding its stack); no row needs more than 3.
        text.push_str(" (values nested more than 128 deep)");
    }
    text
}

/// serde_json appends " at line L column C"; we print our own position.
pub(super) fn strip_serde_position(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

// ---------------------------------------------------------------- JSON array

/// The most bytes one array element may take. A row needs well under 1 KiB; the cap
/// keeps an element that never closes (an open string, a `{` without its `}`) from
/// pulling the rest of the file into memory in search of its end.
const MAX_ELEMENT_BYTES: usize = 1024 * 1024;

/// The level of nesting inside an element at which its copy stops: serde_json
/// refuses a 128th level, and the array itself is the first.
const MAX_ELEMENT_DEPTH: u32 = 127;

pub(super) fn read_json(
    reader: &mut impl BufRead,
    file: &str,
    skipped_lines: u64,
    group: Option<&str>,
    on_row: &mut dyn FnMut(InputRow),
) -> Result<u64, InputError> {
    if !opens_an_array(reader, file)? {
        return Err(not_an_array(reader, file, skipped_lines));
    }
    let mut elements = ArrayElements {
        reader,
        file,
        skipped_lines,
        group,
        at: Location {
            offset: 0,
            line: 1,
            line_start: 0,
        },
        element: Vec::new(),
        index: 0,
        pending: None,
    };
    elements.open()?;
    while let Some(row) = elements.next_row()? {
        on_row(row);
    }
    if elements.index == 0 {
        return Err(unreadable(file, 1, 1, "the array has no rows"));
    }
    Ok(elements.index)
}

/// Whether the input's first value is an array. Only peeks, so that anything else
/// goes to serde_json whole and keeps its words and position (`read_tapped` has
/// made sure the buffer holds a byte that is not whitespace).
fn opens_an_array(reader: &mut impl BufRead, file: &str) -> Result<bool, InputError> {
    let buf = fill_buf(reader, file, 0)?;
    Ok(buf.iter().find(|&&b| !is_json_whitespace(b)) == Some(&b'['))
}

/// serde_json's error for a first value that is not an array: `invalid type: map,
/// expected a JSON array of objects`, or the syntax error it runs into first.
fn not_an_array(reader: &mut impl BufRead, file: &str, skipped_lines: u64) -> InputError {
    let mut de = serde_json::Deserializer::from_reader(reader);
    let e = match serde::Deserializer::deserialize_seq(&mut de, ExpectArray) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    array_error(
        file,
        skipped_lines,
        LineColumn {
            line: e.line() as u64,
            column: e.column() as u64,
        },
        json_message(&e),
    )
}

/// Refuses every value: it is only asked about one that is not an array.
struct ExpectArray;

impl<'de> Visitor<'de> for ExpectArray {
    type Value = Infallible;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of objects")
    }
}

/// The first element of an array, as a row; the rest are not read.
struct OneElement<'a>(Option<&'a str>);

impl<'de> Visitor<'de> for OneElement<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        seq.next_element_seed(RowSeed { group: self.0 })?;
        Ok(())
    }
}

/// serde_json's error in a message: a data error (`invalid type: ...`) in its own
/// words, anything else as malformed JSON.
fn json_message(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Data => strip_serde_position(e),
        _ => format!("malformed JSON: {}", describe_json_error(e)),
    }
}

/// An error at a position serde_json's way, with a hint when the file reads as
/// JSON Lines.
fn array_error(file: &str, skipped_lines: u64, at: LineColumn, mut message: String) -> InputError {
    if message.contains("trailing characters") || message.contains("invalid type: map") {
        message
            .push_str(" (one object per line is JSON Lines: use a .jsonl file or --format jsonl)");
    }
    // serde_json says column 0 for the end of input after a newline; columns count from 1.
    unreadable(
        file,
        at.line.max(1) + skipped_lines,
        at.column.max(1),
        message,
    )
}

/// serde_json's whitespace (not `is_ascii_whitespace`, which has form feed too).
fn is_json_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\n' | b'\t' | b'\r')
}

/// `fill_buf`, tried again after an interruption as serde_json's reader did.
fn fill_buf<'r>(
    reader: &'r mut impl BufRead,
    file: &str,
    offset: u64,
) -> Result<&'r [u8], InputError> {
    let read_error = |error| InputError::Read {
        file: file.to_string(),
        offset,
        error,
    };
    loop {
        match reader.fill_buf() {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_error(e)),
        }
    }
    // Hands back what the call above buffered (returning that borrow from inside
    // the loop is beyond the borrow checker).
    reader.fill_buf().map_err(read_error)
}

/// A position as serde_json gives it: lines from 1, columns in bytes, column 0 being
/// just after a newline.
#[derive(Debug, Clone, Copy)]
struct LineColumn {
    line: u64,
    column: u64,
}

impl LineColumn {
    /// The position of `byte`, read after this position.
    fn after(self, byte: u8) -> LineColumn {
        match byte {
            b'\n' => LineColumn {
                line: self.line + 1,
                column: 0,
            },
            _ => LineColumn {
                column: self.column + 1,
                ..self
            },
        }
    }

    /// A position serde_json gave inside an element that starts after this one
    /// (the element's first line continues this position's line).
    fn within(self, line: usize, column: usize) -> LineColumn {
        match line {
            0 | 1 => LineColumn {
                column: self.column + column as u64,
                ..self
            },
            _ => LineColumn {
                line: self.line + line as u64 - 1,
                column: column as u64,
            },
        }
    }
}

/// How far into the input the array reader is.
struct Location {
    /// Bytes consumed.
    offset: u64,
    /// The line of the next byte.
    line: u64,
    /// The offset of that line's first byte.
    line_start: u64,
}

impl Location {
    fn advance(&mut self, bytes: &[u8]) {
        // `contains` looks with memchr; most elements are on one line.
        if bytes.contains(&b'\n') {
            self.line += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
            let last = bytes.iter().rposition(|&b| b == b'\n').unwrap_or_default();
            self.line_start = self.offset + last as u64 + 1;
        }
        self.offset += bytes.len() as u64;
    }

    /// The position of the last byte consumed, where serde_json's reader stands.
    fn here(&self) -> LineColumn {
        LineColumn {
            line: self.line,
            column: self.offset - self.line_start,
        }
    }
}

/// Whether serde_json's error in `bytes` (parsed from a slice) is at their last byte.
fn at_end(bytes: &[u8], e: &serde_json::Error) -> bool {
    let last_line_start = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines = 1 + bytes.iter().filter(|&&b| b == b'\n').count();
    (e.line(), e.column()) == (lines, bytes.len() - last_line_start)
}

/// Why the copy of an element stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// At [`MAX_ELEMENT_BYTES`]: serde_json finding only the end of the bytes, the
    /// error is ours.
    TooLarge,
    /// Just after a bracket that opens level [`MAX_ELEMENT_DEPTH`], which serde_json
    /// refuses.
    TooDeep,
}

/// Where the copy of an object, a list or a string stands between two reads.
#[derive(Default)]
struct Nesting {
    /// Brackets open; outside strings at least 1, the element's first byte being
    /// a bracket or the quote that ends a string element.
    depth: u32,
    in_string: bool,
    after_backslash: bool,
    /// Bytes of a `\u` escape still to come: serde_json reads four whatever they
    /// are, a quote included (`"\u12"]` is an invalid escape at the `]`).
    hex_left: usize,
}

impl Nesting {
    /// Scans the next bytes of the element: the index of its last byte, if it is
    /// among them, and whether the copy is cut there.
    fn scan(&mut self, bytes: &[u8]) -> Option<(usize, Option<Cut>)> {
        let mut i = 0;
        while i < bytes.len() {
            if self.hex_left > 0 {
                let hex = self.hex_left.min(bytes.len() - i);
                self.hex_left -= hex;
                i += hex;
                continue;
            }
            if self.after_backslash {
                self.after_backslash = false;
                if bytes[i] == b'u' {
                    self.hex_left = 4;
                }
                i += 1;
                continue;
            }
            // Most bytes are the text of strings: runs of them are skipped whole.
            i += match self.in_string {
                true => bytes[i..].iter().position(|&b| b == b'"' || b == b'\\'),
                false => bytes[i..]
                    .iter()
                    .position(|&b| matches!(b, b'"' | b'{' | b'[' | b'}' | b']')),
            }?;
            match (self.in_string, bytes[i]) {
                (true, b'\\') => self.after_backslash = true,
                (true, _) => {
                    self.in_string = false;
                    if self.depth == 0 {
                        return Some((i, None));
                    }
                }
                (false, b'"') => self.in_string = true,
                (false, b'{' | b'[') => {
                    self.depth += 1;
                    if self.depth == MAX_ELEMENT_DEPTH {
                        return Some((i, Some(Cut::TooDeep)));
                    }
                }
                (false, _) => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return Some((i, None));
                    }
                }
            }
            i += 1;
        }
        None
    }
}

/// A JSON array read element by element, each element parsed by serde_json from a
/// slice: the reader's buffer where it holds a plain object whole, else a copy.
///
/// serde_json's reader-based parser goes through its input a byte at a time: planning
/// 200,000 rows took 4.19 G instructions from one JSON array, 3.66 G from JSON Lines
/// and 3.82 G this way. The array's own syntax (`[`, `,`, `]`, the end of input) is
/// checked here, in serde_json's words and at its positions; an element's error comes
/// from its streaming parser itself (`element_error`), so every error reads as before.
struct ArrayElements<'a, R> {
    reader: &'a mut R,
    file: &'a str,
    skipped_lines: u64,
    group: Option<&'a str>,
    at: Location,
    /// The current element's bytes; one buffer for the whole array.
    element: Vec<u8>,
    /// How many elements have become rows.
    index: u64,
    /// The error after a row that serde_json reported only once it had handed that
    /// row over (a scalar running on past its value, see `parse_element`).
    pending: Option<InputError>,
}

impl<R: BufRead> ArrayElements<'_, R> {
    /// Consumes the `[` that `opens_an_array` saw, and the whitespace before it.
    fn open(&mut self) -> Result<(), InputError> {
        self.skip_whitespace()?;
        self.consume_byte(b'[');
        Ok(())
    }

    /// The next element as a row; `None` after the closing `]`, with nothing but
    /// whitespace after it.
    fn next_row(&mut self) -> Result<Option<InputRow>, InputError> {
        if let Some(error) = self.pending.take() {
            return Err(error);
        }
        let first_element = self.index == 0;
        let first_byte = match self.separator_in_buffer(first_element)? {
            Some(byte) => byte,
            None => match self.element_start(first_element)? {
                Some(byte) => byte,
                None => return Ok(None),
            },
        };
        let content = self.read_element(first_byte)?;
        let position = Position {
            kind: PositionKind::Index,
            row: self.index,
            pair: 0,
        };
        self.index += 1;
        Ok(Some(InputRow { position, content }))
    }

    /// The first byte of the next element, read past the `,` before it (unless
    /// `first_element`), a byte at a time; `None` after the closing `]`, with nothing
    /// but whitespace after it.
    fn element_start(&mut self, first_element: bool) -> Result<Option<u8>, InputError> {
        match self.skip_whitespace()? {
            None => Err(self.end_of_input("EOF while parsing a list")),
            Some(b']') => {
                self.consume_byte(b']');
                match self.skip_whitespace()? {
                    None => Ok(None),
                    Some(byte) => Err(self.syntax_error(byte, "trailing characters")),
                }
            }
            Some(b',') if !first_element => {
                self.consume_byte(b',');
                match self.skip_whitespace()? {
                    None => Err(self.end_of_input("EOF while parsing a value")),
                    Some(b']') => Err(self.syntax_error(b']', "trailing comma")),
                    Some(byte) => Ok(Some(byte)),
                }
            }
            Some(byte) if !first_element => Err(self.syntax_error(byte, "expected `,` or `]`")),
            Some(byte) => Ok(Some(byte)),
        }
    }

    /// The element that starts with `first_byte`, as a row.
    fn read_element(&mut self, first_byte: u8) -> Result<RowContent, InputError> {
        if first_byte == b'{'
            && let Some(content) = self.flat_object()?
        {
            return Ok(content);
        }
        let origin = self.at.here();
        self.element.clear();
        let cut = match first_byte {
            b'{' | b'[' | b'"' => self.copy_nested()?,
            _ => self.copy_scalar()?,
        };
        self.parse_element(origin, cut)
    }

    /// Copies an object, a list or a string into `element`, through its closing byte.
    fn copy_nested(&mut self) -> Result<Option<Cut>, InputError> {
        let mut nesting = Nesting::default();
        self.copy_element(|buf| nesting.scan(buf).map(|(last, cut)| (last + 1, cut)))
    }

    /// Copies a number, a literal or stray bytes into `element`, up to the first
    /// byte that cannot continue them. That byte is left unread: where a number's
    /// error is about it (`1.]`), serde_json's streaming parser reads it from the input
    /// (see `element_error`).
    fn copy_scalar(&mut self) -> Result<Option<Cut>, InputError> {
        self.copy_element(|buf| {
            let stop = buf.iter().position(|&b| {
                is_json_whitespace(b) || matches!(b, b',' | b']' | b'}' | b'[' | b'{' | b'"' | b':')
            });
            stop.map(|stop| (stop, None))
        })
    }

    /// Copies the element into `element` a buffer at a time, until `ends` says how
    /// many of a buffer's bytes end it (and whether the copy is cut there), serde_json
    /// stops inside what is copied, the input ends, or the copy passes 1 MiB.
    fn copy_element(
        &mut self,
        mut ends: impl FnMut(&[u8]) -> Option<(usize, Option<Cut>)>,
    ) -> Result<Option<Cut>, InputError> {
        loop {
            if !self.element.is_empty() && self.parser_stops_inside() {
                return Ok(None);
            }
            let buf = fill_buf(self.reader, self.file, self.at.offset)?;
            if buf.is_empty() {
                return Ok(None);
            }
            let end = ends(buf);
            let taken = end.map_or(buf.len(), |(taken, _)| taken);
            self.element.extend_from_slice(&buf[..taken]);
            self.at.advance(&buf[..taken]);
            self.reader.consume(taken);
            if let Some((_, cut)) = end {
                return Ok(cut);
            }
            if self.element.len() > MAX_ELEMENT_BYTES {
                return Ok(Some(Cut::TooLarge));
            }
        }
    }

    /// The usual element, an object with no object inside it, read from the buffer in
    /// place when the buffer holds it whole: the bytes through the first `}`, if
    /// serde_json reads them as one object and nothing more, are the element as its
    /// streaming parser read it. `None`, with nothing consumed, for any other element.
    fn flat_object(&mut self) -> Result<Option<RowContent>, InputError> {
        let buf = fill_buf(self.reader, self.file, self.at.offset)?;
        let through_brace = memchr::memchr(b'}', buf).map_or(buf.len(), |at| at + 1);
        let object = &buf[..through_brace];
        // Parsed alone an element may nest one level deeper than in the array: one
        // that could reach the array's limit is left to `copy_nested`.
        let limit = MAX_ELEMENT_DEPTH as usize - 1;
        let deep = object.len() > limit && object.iter().filter(|&&b| b == b'[').count() >= limit;
        if object.last() != Some(&b'}') || deep {
            return Ok(None);
        }
        let Ok((content, None)) = parse_value(object, self.group) else {
            return Ok(None);
        };
        self.at.advance(object);
        self.reader.consume(through_brace);
        Ok(Some(content))
    }

    /// Whether serde_json, reading the bytes of an element copied so far, stops
    /// before their end: at an error, or after a scalar followed by a stray byte.
    /// Its streaming parser read no further then, and neither may we: the next
    /// bytes may not be readable (not UTF-8), which would change the error.
    fn parser_stops_inside(&self) -> bool {
        match parse_value(&self.element, self.group) {
            Ok((_, trailing)) => trailing.is_some(),
            Err(e) if e.is_eof() => false,
            // A number that runs to the end of the bytes so far may go on.
            Err(e) => {
                !(e.to_string().starts_with("number out of range") && at_end(&self.element, &e))
            }
        }
    }

    /// Parses the element copied after `origin` into a row.
    fn parse_element(
        &mut self,
        origin: LineColumn,
        cut: Option<Cut>,
    ) -> Result<RowContent, InputError> {
        let (content, trailing) = match parse_value(&self.element, self.group) {
            Ok(_) if cut == Some(Cut::TooLarge) => return Err(self.too_large(origin)),
            Ok(parsed) => parsed,
            Err(e) => return Err(self.element_error(origin, cut, e)),
        };
        // A scalar's bytes can run on past its value (`1x`, `truex`): serde_json
        // handed over the row, then wanted `,` or `]` where the value ended.
        if let Some(trailing) = trailing {
            let at = origin.within(trailing.line(), trailing.column());
            self.pending = Some(self.error(at, "malformed JSON: expected `,` or `]`".into()));
        }
        Ok(content)
    }

    /// The error serde_json gave for the element copied after `origin`.
    fn element_error(
        &mut self,
        origin: LineColumn,
        cut: Option<Cut>,
        from_slice: serde_json::Error,
    ) -> InputError {
        if cut == Some(Cut::TooLarge) && from_slice.is_eof() {
            return self.too_large(origin);
        }
        // serde_json's streaming parser is handed the element again, and then the
        // input where the copy stopped, behind a `[` that takes the array's level
        // of nesting: it fails as it did over the whole array, at the same position
        // and having read as far (on its way out of an error it still looks for
        // each enclosing list's `,` or `]`, which can take it past the element).
        let element = self.element.as_slice();
        let mut de =
            serde_json::Deserializer::from_reader(b"[".chain(element).chain(&mut *self.reader));
        let e = match serde::Deserializer::deserialize_seq(&mut de, OneElement(self.group)) {
            Err(e) => e,
            Ok(()) => from_slice,
        };
        let column = match e.line() {
            1 => e.column().saturating_sub(1),
            _ => e.column(),
        };
        self.error(origin.within(e.line(), column), json_message(&e))
    }

    fn too_large(&self, origin: LineColumn) -> InputError {
        let row = Position {
            kind: PositionKind::Index,
            row: self.index,
            pair: 0,
        };
        self.error(
            origin.within(1, 1),
            format!("row {row} is larger than 1 MiB"),
        )
    }

    /// Consumes whitespace; the byte after it, not consumed (`None`: end of input).
    fn skip_whitespace(&mut self) -> Result<Option<u8>, InputError> {
        loop {
            let buf = fill_buf(self.reader, self.file, self.at.offset)?;
            match buf.first() {
                None => return Ok(None),
                Some(&byte) if !is_json_whitespace(byte) => return Ok(Some(byte)),
                Some(_) => {}
            }
            let found = buf.iter().position(|&b| !is_json_whitespace(b));
            let skipped = found.unwrap_or(buf.len());
            let next = found.map(|i| buf[i]);
            self.at.advance(&buf[..skipped]);
            self.reader.consume(skipped);
            if next.is_some() {
                return Ok(next);
            }
        }
    }

    /// The usual way from one element to the next, all in the buffer: whitespace, a
    /// `,`, whitespace, and the first byte of an element, which is returned, all
    /// before it consumed. `None`, with nothing consumed, before the first element
    /// and for anything else (the end of the array, a trailing comma, a missing one,
    /// the buffer running out), which [`Self::element_start`] reads a byte at a time.
    fn separator_in_buffer(&mut self, first_element: bool) -> Result<Option<u8>, InputError> {
        if first_element {
            return Ok(None);
        }
        let buf = fill_buf(self.reader, self.file, self.at.offset)?;
        let not_whitespace = |from: usize| {
            buf[from..]
                .iter()
                .position(|&b| !is_json_whitespace(b))
                .map(|at| from + at)
        };
        let Some(comma) = not_whitespace(0).filter(|&at| buf[at] == b',') else {
            return Ok(None);
        };
        let Some(first) = not_whitespace(comma + 1).filter(|&at| buf[at] != b']') else {
            return Ok(None);
        };
        let byte = buf[first];
        self.at.advance(&buf[..first]);
        self.reader.consume(first);
        Ok(Some(byte))
    }

    /// Consumes `byte`, the next byte.
    fn consume_byte(&mut self, byte: u8) {
        self.at.advance(&[byte]);
        self.reader.consume(1);
    }

    fn end_of_input(&self, words: &str) -> InputError {
        self.error(self.at.here(), format!("malformed JSON: {words}"))
    }

    /// A syntax error about `byte`, the next byte, in serde_json's `words`.
    fn syntax_error(&self, byte: u8, words: &str) -> InputError {
        self.error(
            self.at.here().after(byte),
            format!("malformed JSON: {words}"),
        )
    }

    fn error(&self, at: LineColumn, message: String) -> InputError {
        array_error(self.file, self.skipped_lines, at, message)
    }
}

// ---------------------------------------------------------------- JSON objects -> rows

pub(super) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

pub(super) fn text_field(value: Value, name: &str) -> Field {
    match value {
        Value::String(s) => Ok(s),
        other => Err(format!("{name} is {}, not a string", json_type(&other))),
    }
}

pub(super) fn list_field(value: Value, name: &str) -> Result<Vec<Field>, String> {
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
pub(super) struct RowSeed<'a> {
    /// The normalized name of the `--max-down-per` field, if any.
    pub(super) group: Option<&'a str>,
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
        let mut fields: Vec<(Cow<'de, str>, Value)> = Vec::with_capacity(4);
        while let Some(FieldName(name)) = map.next_key()? {
            let value: Value = map.next_value()?;
            fields.push((name, value));
        }
        Ok(row_from_fields(in_name_order(fields), self.group))
    }
}

/// An object's field name, borrowed from the input where it can be (a slice, no
/// escapes in the name): the three names a million rows repeat cost no allocation.
struct FieldName<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for FieldName<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FieldNameVisitor)
    }
}

struct FieldNameVisitor;

impl<'de> Visitor<'de> for FieldNameVisitor {
    type Value = FieldName<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E>(self, name: &'de str) -> Result<FieldName<'de>, E> {
        Ok(FieldName(Cow::Borrowed(name)))
    }

    fn visit_str<E>(self, name: &str) -> Result<FieldName<'de>, E> {
        Ok(FieldName(Cow::Owned(name.to_string())))
    }

    fn visit_string<E>(self, name: String) -> Result<FieldName<'de>, E> {
        Ok(FieldName(Cow::Owned(name)))
    }
}

pub(super) fn not_an_object(what: &str) -> RowContent {
    RowContent::Invalid {
        reason: format!("the element is {what}, not an object with instance_id and key_id"),
    }
}

/// Turns one JSON value into a row: a pair object, a set object, or an invalid row.
#[cfg(test)]
pub(super) fn row_from_value(value: Value) -> RowContent {
    match value {
        Value::Object(map) => row_from_fields(map.into_iter().map(|(k, v)| (k.into(), v)), None),
        other => not_an_object(json_type(&other)),
    }
}

/// An object's fields (in name order, names distinct) -> a row.
///
/// `group`: the normalized name of the `--max-down-per` field, whose value (a string
/// or a number, as text) becomes the row's `group`.
pub(super) fn row_from_fields<'a>(
    fields: impl IntoIterator<Item = (Cow<'a, str>, Value)>,
    group: Option<&str>,
) -> RowContent {
    let invalid = |reason: String| RowContent::Invalid { reason };
    let mut instance = None;
    let mut key = None;
    let mut instances = None;
    let mut keys = None;
    let mut region = None;
    let mut account = None;
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
            "account" => &mut account,
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
    let account = match account {
        None | Some((_, Value::Null)) => None,
        Some((_, Value::String(s))) if s.trim().is_empty() => None,
        Some((_, Value::String(s))) => Some(Ok(s.trim().to_string())),
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
            account,
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
                    account,
                    new_key_ids,
                    group: group_value,
                },
                (Err(reason), _) | (_, Err(reason)) => invalid(reason),
            }
        }
    }
}

#[cfg(test)]
mod tests;
