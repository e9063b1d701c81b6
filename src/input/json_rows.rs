//! JSON input: JSON Lines one object per line, a JSON array walked element by element,
//! each element read straight into a row.

use std::borrow::Cow;
use std::fmt;
use std::io::{BufRead, BufReader};

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
///
/// Text that is UTF-8 (the tap reports a file's first bad byte on its own) is parsed as
/// a `str`, so serde_json does not check each string in it again; other text as bytes,
/// where serde_json finds and places the bad byte.
pub(super) fn parse_row(text: &[u8], group: Option<&str>) -> serde_json::Result<RowContent> {
    fn whole<'de, R: serde_json::de::Read<'de>>(
        mut de: serde_json::Deserializer<R>,
        group: Option<&str>,
    ) -> serde_json::Result<RowContent> {
        let content = RowSeed { group }.deserialize(&mut de)?;
        de.end()?;
        Ok(content)
    }
    match std::str::from_utf8(text) {
        Ok(text) => whole(serde_json::Deserializer::from_str(text), group),
        Err(_) => whole(serde_json::Deserializer::from_slice(text), group),
    }
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

pub(super) fn read_json(
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
pub(super) struct ArrayOfRows<'a> {
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
        // As serde_json's `Map` (a BTreeMap) holds them: in name order, and of a
        // name repeated, the last value. The stable sort keeps repeats in document
        // order; reversed, `dedup_by` keeps the first, which is the last.
        // Most objects come with their names in order already, each once.
        if !fields.is_sorted_by(|a, b| a.0 < b.0) {
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            fields.reverse();
            fields.dedup_by(|a, b| a.0 == b.0);
            fields.reverse();
        }
        Ok(row_from_fields(fields, self.group))
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
