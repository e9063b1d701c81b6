//! The JSON array reader against the one it replaced: serde_json's streaming parser
//! over the whole array (`reference::read_json`, kept here only as the reference).
//! Every input of a seeded corpus of well-formed and broken arrays must come out the
//! same from both: the same rows, or the same error at the same line and column.
//!
//! The one place they part, on purpose: an element over 1 MiB is refused (the
//! reference read any element whole, a string left open to the end of the file),
//! see `an_element_over_one_mebibyte_is_refused_without_reading_on`.

use std::io::{self, BufRead, BufReader, Read};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use super::super::{
    Format, InputDigest, InputError, InputRow, READ_BUFFER_BYTES, Tap, UTF8_BOM, first_non_space,
    read_from_with, unreadable,
};

/// The reader before issue 25's fourth pass, verbatim but for its name.
mod reference {
    use std::fmt;
    use std::io::{BufRead, BufReader};

    use serde::de::{DeserializeSeed, SeqAccess, Visitor};

    use super::super::super::{
        InputError, InputRow, Position, PositionKind, READ_BUFFER_BYTES, unreadable,
    };
    use super::super::{RowSeed, describe_json_error, strip_serde_position};

    pub(super) fn read_json(
        reader: &mut impl BufRead,
        file: &str,
        skipped_lines: u64,
        group: Option<&str>,
        on_row: &mut dyn FnMut(InputRow),
    ) -> Result<u64, InputError> {
        let mut rows = 0u64;
        let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(
            READ_BUFFER_BYTES,
            reader,
        ));
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
}

const FILE: &str = "in.json";

/// `read_from_with(.., Some(Format::Json), ..)` with the reference reader in the
/// place of `read_json` (the rest as `read_from_with` and `read_tapped` do it).
fn read_with_reference(
    source: impl Read,
    group: Option<&str>,
    on_row: &mut dyn FnMut(InputRow),
) -> Result<InputDigest, InputError> {
    use sha2::Digest;
    let mut tap = Tap::new(source);
    let read_err = |error: io::Error| InputError::Read {
        file: FILE.to_string(),
        offset: 0,
        error,
    };
    let outcome = (|| {
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, &mut tap);
        let head = reader.fill_buf().map_err(read_err)?;
        if head.starts_with(UTF8_BOM) {
            reader.consume(UTF8_BOM.len());
        }
        let (first, skipped) = first_non_space(&mut reader).map_err(read_err)?;
        if first.is_none() {
            return Err(unreadable(FILE, 1, 1, "the input is empty"));
        }
        let rows = reference::read_json(&mut reader, FILE, skipped, group, on_row)?;
        io::copy(&mut reader, &mut io::sink()).map_err(read_err)?;
        Ok(rows)
    })();
    let rows = match outcome {
        Ok(rows) => rows,
        Err(err) => return Err(tap.explain(FILE).unwrap_or(err)),
    };
    if let Some(err) = tap.explain(FILE) {
        return Err(err);
    }
    Ok(InputDigest {
        sha256: hex::encode(tap.hasher.finalize()),
        rows,
        format: Format::Json,
    })
}

/// A source that hands out at most `chunk` bytes per read, so that elements,
/// strings, escapes and multi-byte characters straddle the reader's buffer refills.
struct Trickle<'a> {
    rest: &'a [u8],
    chunk: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.chunk.min(buf.len()).min(self.rest.len());
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Ok(n)
    }
}

/// Everything a read of `text` produces: the rows handed over, in order, then the
/// digest or the error as a person sees it.
fn outcome(text: &[u8], chunk: usize, group: Option<&str>, reference: bool) -> String {
    let mut rows = Vec::new();
    let source = Trickle { rest: text, chunk };
    let result = if reference {
        read_with_reference(source, group, &mut |row| rows.push(row))
    } else {
        read_from_with(source, FILE, Some(Format::Json), group, |row| {
            rows.push(row)
        })
    };
    let ending = match result {
        Ok(digest) => format!("{digest:?}"),
        Err(err) => format!("error: {err}"),
    };
    let mut text = String::new();
    for row in rows {
        text.push_str(&format!("{row:?}\n"));
    }
    text + &ending
}

fn assert_same(case: &str, text: &[u8], chunk: usize, group: Option<&str>) {
    let new = outcome(text, chunk, group, false);
    let old = outcome(text, chunk, group, true);
    assert_eq!(
        new,
        old,
        "{case} (reads of {chunk} bytes): {:?}",
        String::from_utf8_lossy(text)
    );
}

// ---------------------------------------------------------------- the corpus

/// Whitespace between tokens, as people and tools write it.
const SPACES: &[&str] = &["", "", " ", "  ", "\n", "\n    ", "\r\n  ", "\t", " \n\n "];

/// Bytes inserted or swapped in: structure, the starts of values, escapes, control
/// characters and the bytes of multi-byte characters.
const BYTES: &[u8] = b"{}[],:\"\\ \n\r\t0123456789-+.eEtrufalsnx/\x00\x01\x1f\x7f\xc3\xa9\xe2\x80";

/// Fragments inserted whole: nesting that does not close, numbers serde_json refuses,
/// broken literals and escapes.
const JUNK: &[&str] = &[
    "[[[",
    "{{",
    "]]",
    "}}",
    "{\"a\":",
    "[{",
    "\"",
    "\\",
    ",,",
    ":",
    "1e999",
    "-1e999",
    "-",
    "01",
    "1.",
    "1e",
    "1e+",
    ".5",
    "tru",
    "nul",
    "fals",
    "NaN",
    "\\u12",
    "\"\\ud800\"",
    "\"\\uZZZZ\"",
    "\"\\x\"",
    "\u{0}",
    "\u{1}",
    "é",
    "🔑",
    "/*x*/",
    "\"a\nb\"",
    "true false",
    "1 2",
    "[]",
    "{}",
    "\u{feff}",
    "123456789012345678901234567890",
    "1e99999999999",
];

/// Text after the array: nothing, whitespace, or what makes it not one array.
const TRAILERS: &[&str] = &[
    "",
    "\n",
    "\r\n\r\n",
    "   \n  ",
    "x",
    ",",
    "]",
    "[]",
    "{}",
    "\n{\"a\":1}\n",
    "\n\n  garbage",
    "\u{0}",
    ", ]",
    "//",
];

fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
    from.choose(rng).copied().unwrap_or_default()
}

/// A JSON string: ids, and text with every kind of escape and raw multi-byte characters.
fn string(rng: &mut StdRng) -> String {
    let n = rng.random_range(0..100);
    let text = match rng.random_range(0..9) {
        0 => format!("ins-{n:08}"),
        1 => format!("skey-{n:08}"),
        2 => "ap-guangzhou".to_string(),
        3 => r#"a \"quoted\" \\ back\/slash\n\t\r\b\f"#.to_string(),
        4 => r"\u00e9\u4E2D \ud83d\udd11 \u0000".to_string(),
        5 => "é 中 🔑 ключ".to_string(),
        6 => String::new(),
        7 => "} { ] [ ,".to_string(),
        _ => format!("{n}"),
    };
    format!("\"{text}\"")
}

/// Any JSON value a row's field might hold, nested up to `depth`.
fn value(rng: &mut StdRng, depth: u32) -> String {
    let s = pick(rng, SPACES);
    match rng.random_range(0..if depth == 0 { 6 } else { 8 }) {
        0 | 1 => string(rng),
        2 => pick(
            rng,
            &[
                "0",
                "-1",
                "42",
                "-1.5e3",
                "3.25",
                "1E2",
                "0.0001",
                "18446744073709551616",
            ],
        )
        .to_string(),
        3 => pick(rng, &["true", "false", "null"]).to_string(),
        4 => format!("[{s}{}{s}]", string(rng)),
        5 => format!("[{s}{},{s}{}]", string(rng), string(rng)),
        6 => format!(
            "[{s}{},{s}{}{s}]",
            value(rng, depth - 1),
            value(rng, depth - 1)
        ),
        _ => format!("{{{s}\"a\":{s}{}{s}}}", value(rng, depth - 1)),
    }
}

/// One element of the array: a pair or a set row (snake_case or API names, with extra
/// fields), an object of odd fields, or a value that is not an object at all.
fn element(rng: &mut StdRng) -> String {
    let s = pick(rng, SPACES);
    let field = |name: &str, value: String| format!("{s}\"{name}\"{s}:{s}{value}");
    let mut fields = Vec::new();
    match rng.random_range(0..6) {
        0 | 1 => {
            let n = rng.random_range(1..9);
            fields.push(field("instance_id", format!("\"ins-{n:08}\"")));
            fields.push(field("key_id", format!("\"skey-{n:08}\"")));
        }
        2 => {
            fields.push(field("InstanceId", string(rng)));
            fields.push(field("KeyId", string(rng)));
        }
        3 => {
            let ids = format!("[{s}{},{s}{}]", string(rng), string(rng));
            fields.push(field("instance_ids", ids));
            fields.push(field("key_ids", format!("[{}]", string(rng))));
        }
        4 => fields.push(field("other", value(rng, 2))),
        _ => return value(rng, 2),
    }
    for _ in 0..rng.random_range(0..3) {
        let name = pick(
            rng,
            &[
                "region",
                "zone",
                "note",
                "new_key_id",
                "keys_after",
                "state",
            ],
        );
        let v = value(rng, 1);
        fields.push(field(name, v));
    }
    format!("{{{}{s}}}", fields.join(","))
}

/// A well-formed array of 3 to 5 elements over several lines, maybe after a byte
/// order mark or blank lines.
fn array(rng: &mut StdRng) -> Vec<u8> {
    let mut text = pick(rng, &["", "", "\u{feff}", "\n\n", "  ", "\r\n", "\t\n "]).to_string();
    text.push('[');
    let n = rng.random_range(3..=5);
    for i in 0..n {
        text.push_str(pick(rng, &["\n  ", " ", "\r\n", "", "\n"]));
        text.push_str(&element(rng));
        if i + 1 < n {
            text.push(',');
        }
    }
    text.push_str(pick(rng, &["\n]", "]", "]\n", " ]\n\n", "\r\n]\r\n"]));
    text.into_bytes()
}

/// One random change to `text`.
fn mutate(rng: &mut StdRng, text: &mut Vec<u8>) {
    let at = rng.random_range(0..=text.len());
    match rng.random_range(0..8) {
        0 if at < text.len() => {
            text.remove(at);
        }
        1 => text.insert(at, *BYTES.choose(rng).unwrap_or(&b'x')),
        2 if at < text.len() => text[at] = *BYTES.choose(rng).unwrap_or(&b'x'),
        3 => text.truncate(at),
        4 => text.extend_from_slice(pick(rng, TRAILERS).as_bytes()),
        5 => {
            let junk = pick(rng, JUNK).as_bytes();
            text.splice(at..at, junk.iter().copied());
        }
        6 => {
            let end = rng.random_range(at..=text.len().min(at + 12));
            let copy = text[at..end].to_vec();
            text.splice(at..at, copy);
        }
        _ => {
            // The first byte of a value replaced: a wrong top level, a broken element.
            let starts: Vec<usize> = (0..text.len())
                .filter(|&i| matches!(text[i], b'[' | b'{' | b'"'))
                .collect();
            if let Some(&i) = starts.choose(rng) {
                text[i] = *b"{[\"x0-n".choose(rng).unwrap_or(&b'x');
            }
        }
    }
}

/// Inputs written by hand: wrong top levels, JSON Lines given as JSON, empty and
/// open arrays, and nesting on either side of serde_json's limit.
fn fixed_cases() -> Vec<Vec<u8>> {
    let mut cases: Vec<Vec<u8>> = [
        "{\"a\":1}",
        "{\"a\":1}\n{\"a\":2}\n",
        "\"text\"",
        "\"trailing characters\"",
        "\"open",
        "123",
        "-",
        "1e999",
        "null",
        "nul",
        "true",
        "x",
        ",",
        "]",
        "}",
        "\u{c}[1]",
        "[",
        "[\n",
        "[]",
        "[] ",
        "[]x",
        "[],",
        "[\n]\n\n",
        "[,]",
        "[,1]",
        "[1,]",
        "[1 2]",
        "[1,,2]",
        "[1x]",
        "[1.]",
        "[1.",
        "[1e]",
        "[-]",
        "[01]",
        "[truex]",
        "[tru]",
        "[tru",
        "[nul\n]",
        "[1\n",
        "[1,\n",
        "[1e999]",
        "[1e999\n]",
        "[{\"a\":1e999}]",
        "[{\"a\":1e999\n}]",
        "[1e9999999999]",
        "[{\"a\":1}x]",
        "[{\"a\":1}}]",
        "[{\"a\":1]",
        "[{\"a\" 1}]",
        "[\"a\"\"b\"]",
        "[\"a\\\"]",
        "[\"\\u12\"]",
        "[\"\\ud800\"]",
        "[\"a\nb\"]",
        "[{\"k\":\"v\"}]\n{\"k\":\"v\"}\n",
        "[{\"a\":\"x}y\"}]",
        "[{\"a\":\"x\\\"}\"}]",
        "[{\"a\":\"\\\\\"}]",
        "[{\"a\":\"\\\\\"}x]",
        "[{\"a\":1}{\"b\":2}]",
        "[{\"instance_id\":\"ins-00000001\",\"key_id\":\"skey-00000001\"}]",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    // serde_json allows 128 levels and the array is one: an element may nest 126 deep.
    for depth in [1, 124, 125, 126, 127, 128, 129, 1000] {
        let open = |s: &str| s.repeat(depth);
        cases.push(format!("[{}{}]", open("["), open("]")).into_bytes());
        cases.push(format!("[{}1{}]", open("[\n"), open("]")).into_bytes());
        cases.push(format!("[{}", open("[")).into_bytes());
        cases.push(format!("[{}1{}]", open("{\"a\":"), open("}")).into_bytes());
        cases.push(format!("[{}", open("{\"a\":")).into_bytes());
        cases.push(format!("[{}{{{{}}", open("[")).into_bytes());
        cases.push(format!("[{}{{{{", open("{\"a\":")).into_bytes());
        cases.push(format!("[1,{}x{}]", open("["), open("]")).into_bytes());
        cases.push(format!("[{{\"a\":{}1{}}}]", open("["), open("]")).into_bytes());
    }
    cases.push("[".repeat(100_000).into_bytes());
    cases.push(format!("[{}", "{\"a\":".repeat(100_000)).into_bytes());
    cases
}

#[test]
fn the_array_reader_says_what_serde_json_said_over_the_whole_array() {
    let mut rng = StdRng::seed_from_u64(25);
    let chunks = [1, 2, 3, 7, 64, READ_BUFFER_BYTES];
    for (i, text) in fixed_cases().iter().enumerate() {
        for chunk in [1, 5, READ_BUFFER_BYTES] {
            assert_same(&format!("fixed case {i}"), text, chunk, None);
        }
    }
    for i in 0..3000 {
        let mut text = array(&mut rng);
        // One in five is left whole; the rest get one to three changes.
        if rng.random_range(0..5) > 0 {
            for _ in 0..rng.random_range(1..=3) {
                mutate(&mut rng, &mut text);
            }
        }
        let chunk = *chunks.choose(&mut rng).unwrap_or(&1);
        let group = rng.random_bool(0.2).then_some("zone");
        assert_same(&format!("case {i}"), &text, chunk, group);
    }
}

/// Which error a file with two problems gets, a JSON error and then a byte that is
/// not UTF-8, depends on how far the reader read before giving up: the tap refuses a
/// bad byte as soon as a read brings it in. serde_json stops at an error but still
/// looks, for each list around it, for a `,` or `]` after it. At every read size
/// the reader must read exactly as far.
#[test]
fn the_array_reader_reads_as_far_as_serde_json_did_after_an_error() {
    let errors: &[&str] = &[
        "[1e999",
        "[{\"a\":1e999",
        "[1e9999999999",
        "[1, 1e9999999999",
        "[{\"a\":[1e9999999999",
        "[{\"a\" 1",
        "[{\"a\":1}x",
        "[1x",
        "[tru",
        "[nul",
        "[1.",
        "[-",
        "[{\"a\":\"\\u12",
        "[\"\\ud800",
        "[{\"a\":[1,2]]",
        "[{\"a\":[1,2}",
        "[[[[1 2",
        "[1,,",
        "[,",
    ];
    let after: &[&[u8]] = &[
        b"\xff]", b" \xff", b"\n\xff", b"1\xff]", b"]\xff", b"] ,\xff", b"}, \xff",
    ];
    for head in errors {
        for tail in after {
            let text = [head.as_bytes(), tail].concat();
            for chunk in 1..=text.len() {
                assert_same("an error, then a byte not UTF-8", &text, chunk, None);
            }
        }
    }
}

/// Counts the bytes read through it.
struct Counted<'a, R> {
    inner: R,
    read: &'a std::cell::Cell<u64>,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// The one place the reader parts from the reference on purpose: an element over
/// 1 MiB is refused (the reference read any element whole, an open string to the
/// end of the file), and reading stops soon after the first MiB.
#[test]
fn an_element_over_one_mebibyte_is_refused_without_reading_on() {
    const FIFTY_MIB: u64 = 50 << 20;
    let refused = |head: &str, tail: u8| {
        let read = std::cell::Cell::new(0);
        let source = Counted {
            inner: head.as_bytes().chain(io::repeat(tail).take(FIFTY_MIB)),
            read: &read,
        };
        let err = read_from_with(source, FILE, Some(Format::Json), None, |_| {})
            .expect_err("over 1 MiB")
            .to_string();
        assert!(read.get() < 2 << 20, "{} bytes read for {err}", read.get());
        err
    };
    // A string never closed, an object whose depth never returns to 0: serde_json
    // finds nothing wrong in the first MiB but that it ends.
    assert_eq!(
        refused("[\n  {\"k\": \"", b'a'),
        "in.json: line 2, column 3: row index 0 is larger than 1 MiB"
    );
    assert_eq!(
        refused("[1, {\"k\": [", b' '),
        "in.json: line 1, column 5: row index 1 is larger than 1 MiB"
    );
    // An error inside the first MiB is reported as serde_json gave it.
    assert_eq!(
        refused("[{\"a\": 1, {\"b\": ", b' '),
        "in.json: line 1, column 11: malformed JSON: key must be a string"
    );
    // Well-formed but too large: the reference made it a row.
    let key = "k".repeat(2 << 20);
    let text = format!("[{{\"instance_id\": \"ins-00000001\", \"key_id\": \"{key}\"}}]");
    assert_eq!(
        outcome(text.as_bytes(), READ_BUFFER_BYTES, None, false),
        "error: in.json: line 1, column 2: row index 0 is larger than 1 MiB"
    );
    assert!(outcome(text.as_bytes(), READ_BUFFER_BYTES, None, true).contains("rows: 1"));
}

/// What serde_json alone makes of one row's text (the path `plain_object` skips).
fn through_serde(text: &str, group: Option<&str>) -> String {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = super::RowSeed { group }
        .deserialize(&mut de)
        .map(|content| (content, de.end().err().map(|e| e.to_string())));
    format!("{:?}", parsed.map_err(|e| e.to_string()))
}

#[test]
fn a_plain_object_reads_as_serde_json_reads_it() {
    let mut rng = StdRng::seed_from_u64(2512);
    let (mut plain, mut pairs) = (0, 0);
    for case in 0..20_000 {
        let mut text = element(&mut rng).into_bytes();
        if case % 3 == 0 {
            mutate(&mut rng, &mut text);
        }
        let Ok(text) = std::str::from_utf8(&text) else {
            continue;
        };
        let group = (case % 5 == 0).then_some("zone");
        if super::plain_object(text).is_some() {
            plain += 1;
        }
        if super::plain_pair(text).is_some() {
            pairs += 1;
        }
        let ours = super::parse_value(text.as_bytes(), group)
            .map(|(content, trailing)| (content, trailing.map(|e| e.to_string())));
        let ours = format!("{:?}", ours.map_err(|e| e.to_string()));
        assert_eq!(ours, through_serde(text, group), "{text:?}");
    }
    // The corpus reaches the plain path often, and serde_json's too.
    assert!((2_000..18_000).contains(&plain), "{plain} plain objects");
    assert!((1_000..plain).contains(&pairs), "{pairs} plain pairs");
    // Repeated names, names out of order, spaces everywhere, text that is not ASCII.
    for text in [
        r#"{"key_id":"skey-00000001","instance_id":"ins-00000001","key_id":"skey-00000002"}"#,
        " \t{ \"region\" : \"ap-guangzhou\" ,\"instance_id\":\"ins-00000001\" , \"key_id\":\"é 中\"}\r\n ",
        r#"{"instance_id":"ins-00000001","key_id":"skey-00000001","zone":"ap-guangzhou-3"}"#,
    ] {
        assert!(super::plain_object(text).is_some(), "{text}");
        for group in [None, Some("zone")] {
            let ours = super::parse_value(text.as_bytes(), group)
                .map(|(content, trailing)| (content, trailing.map(|e| e.to_string())));
            assert_eq!(
                format!("{:?}", ours.map_err(|e| e.to_string())),
                through_serde(text, group)
            );
        }
        let ours = super::parse_value(text.as_bytes(), Some("zone"))
            .map(|(content, trailing)| (content, trailing.map(|e| e.to_string())));
        assert_eq!(
            format!("{:?}", ours.map_err(|e| e.to_string())),
            through_serde(text, Some("zone"))
        );
    }
    // A pair, with a region or without, an empty region, the API's spellings; a
    // name twice or any other name is not the commonest row.
    for (text, pair) in [
        (
            r#"{"instance_id":"ins-00000001","key_id":"skey-00000001"}"#,
            true,
        ),
        (
            r#"{"Region":"","KeyId":"skey-00000001","InstanceId":"ins-00000001"}"#,
            true,
        ),
        (
            r#"{"key_id":"skey-00000001","instance_id":"ins-00000001","region":"ap-guangzhou"}"#,
            true,
        ),
        (
            r#"{"instance_id":"ins-00000001","key_id":"skey-00000001","key_id":"skey-00000002"}"#,
            false,
        ),
        (
            r#"{"instance_id":"ins-00000001","key_id":"skey-00000001","zone":"ap-guangzhou-3"}"#,
            false,
        ),
        (
            r#"{"instance_id":"ins-00000001","region":"ap-guangzhou"}"#,
            false,
        ),
    ] {
        assert_eq!(super::plain_pair(text).is_some(), pair, "{text}");
        let ours = super::parse_value(text.as_bytes(), None)
            .map(|(content, trailing)| (content, trailing.map(|e| e.to_string())));
        assert_eq!(
            format!("{:?}", ours.map_err(|e| e.to_string())),
            through_serde(text, None)
        );
    }
    // Not plain: serde_json reads them (and says what is wrong).
    for text in [
        r#"{"instance_id":"ins-\u0030","key_id":"skey-00000001"}"#,
        "{\"instance_id\":\"ins-00000001\u{1}\",\"key_id\":\"skey-00000001\"}",
        r#"{"instance_id":"ins-00000001","keys_after":2}"#,
        r#"{"instance_id":"ins-00000001","key_id":"skey-00000001"} x"#,
        r#"{"instance_id":"ins-00000001","key_id":"skey-00000001",}"#,
        r#"{"instance_id":"ins-00000001" "key_id":"skey-00000001"}"#,
        "{}",
    ] {
        assert!(super::plain_object(text).is_none(), "{text}");
    }
}
