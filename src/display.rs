//! Making untrusted text safe to show: on a terminal and in a spreadsheet.
//!
//! Input rows, error codes and messages from the endpoint, request ids and stop
//! reasons are written by someone else. Echoed raw, an ESC or OSC sequence in them
//! can recolour, retitle or clear the operator's terminal, and a CSV cell starting
//! with `=` is run as a formula by spreadsheet programs. [`escape`] is for every such
//! value the CLI prints; [`csv_cell`] for every CSV report cell. JSON output needs
//! neither: JSON escapes control characters itself.

use std::borrow::Cow;

/// `text` with every control character (C0, DEL, C1) and every Unicode bidirectional
/// formatting character written as a Rust-style escape (`\n`, `\t`, `\u{1b}`,
/// `\u{202e}`), so nothing in it can act on a terminal or reorder what it shows.
/// Text without such characters is returned as it is, without a copy.
pub fn escape(text: &str) -> Cow<'_, str> {
    escape_except(text, |_| false)
}

/// Like [`escape`], but keeps `\n`: for multi-line messages that are ours (a list of
/// places looked in) with untrusted parts inside.
pub fn escape_keeping_newlines(text: &str) -> Cow<'_, str> {
    escape_except(text, |c| c == '\n')
}

fn escape_except(text: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    // Printable ASCII is never unsafe: ids, codes and most messages are checked a
    // byte at a time instead of decoded (the report escapes every cell of a million rows).
    if text.bytes().all(|b| (b' '..=b'~').contains(&b))
        || !text.chars().any(|c| is_unsafe(c) && !keep(c))
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) && !keep(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Characters that act on a terminal or on the order text is shown in.
fn is_unsafe(c: char) -> bool {
    // `char::is_control` is the Cc category: U+0000-U+001F, U+007F-U+009F.
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV
/// Injection"): `=`, `+`, `-`, `@`, and tab and carriage return, which some programs
/// skip before looking for one.
const FORMULA_TRIGGERS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// A CSV report cell made safe for a spreadsheet and a terminal (`cat report.csv`):
/// control characters escaped as [`escape`] does, and a cell that begins with a
/// formula trigger prefixed with a single quote, as OWASP recommends, so it is
/// shown as text. `keyfleet report --raw` skips this for a byte-exact report.
#[inline]
pub fn csv_cell(text: &str) -> Cow<'_, str> {
    // Most cells of a large report are empty.
    if text.is_empty() {
        return Cow::Borrowed(text);
    }
    let formula = text.starts_with(FORMULA_TRIGGERS);
    let escaped = escape(text);
    if formula {
        Cow::Owned(format!("'{escaped}"))
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for text in ["ins-12345678", "région ap-guangzhou", "a\\b", ""] {
            assert!(matches!(escape(text), Cow::Borrowed(t) if t == text));
            assert!(matches!(csv_cell(text), Cow::Borrowed(t) if t == text));
        }
    }

    #[test]
    fn control_and_bidi_characters_are_escaped() {
        let hostile = "\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}31m\r\n\t\u{0}\u{7f}x\u{202e}y";
        let shown = escape(hostile);
        assert!(!shown.chars().any(is_unsafe), "{shown}");
        assert_eq!(
            shown,
            "\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{9b}31m\\r\\n\\t\\u{0}\\u{7f}x\\u{202e}y"
        );
        assert_eq!(escape_keeping_newlines("a\nb\u{1b}"), "a\nb\\u{1b}");
    }

    #[test]
    fn formula_cells_are_prefixed_with_a_quote() {
        assert_eq!(
            csv_cell("=HYPERLINK(\"http://x\",\"y\")"),
            "'=HYPERLINK(\"http://x\",\"y\")"
        );
        assert_eq!(csv_cell("+1"), "'+1");
        assert_eq!(csv_cell("-1+2"), "'-1+2");
        assert_eq!(csv_cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_cell("\t=1"), "'\\t=1");
        assert_eq!(csv_cell("\r=1"), "'\\r=1");
        // Only the first character matters; an id or a message with `=` inside is left alone.
        assert_eq!(csv_cell("a=b"), "a=b");
        assert_eq!(csv_cell("row 3 pair 2"), "row 3 pair 2");
    }
}
