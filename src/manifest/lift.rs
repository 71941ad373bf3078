//! Big `entries` arrays read straight from the TOML tokens, so that a map
//! of a million entries never becomes the `toml` crate's document tree
//! (about 1 KB per entry: a BTreeMap per inline table, a String per key).
//!
//! `lift` walks the lexer's tokens (toml_parser, the lexer the `toml`
//! crate itself uses), finds each `entries = [...]` and `on_destroy =
//! [...]` written directly in a `[[map]]` table, reads its inline tables
//! `{ key = K, value = V }` into spanned raw entries, and blanks the
//! array's inside with spaces, so the rest of the manifest parses as before
//! with every byte offset unchanged (errors are located by offset in the
//! manifest as written, so every line and column is too).
//! `restore` puts the entries back where serde found the emptied arrays.
//!
//! Anything this reader does not take for certain (a comment inside an
//! entry, a float, a third key, a table it cannot place) leaves that array
//! to `toml` untouched: the fast path never decides what a manifest means
//! or what its errors say.

use std::borrow::Cow;
use std::ops::Range;

use toml::Spanned;
use toml_parser::decoder::{IntegerRadix, ScalarKind};
use toml_parser::lexer::{Lexer, TokenKind};
use toml_parser::{Raw, Source};

use super::raw::{RawEntry, RawManifest, Scalar};

/// Which array of a map table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Entries,
    OnDestroy,
}

/// One array read from the tokens.
#[derive(Debug)]
pub(crate) struct Lifted {
    /// Which `[[map]]` table, in file order.
    map: usize,
    field: Field,
    /// The array, brackets included.
    span: Range<usize>,
    entries: Vec<Spanned<RawEntry>>,
}

/// One token that matters (not whitespace), with its text.
#[derive(Clone)]
struct Tok<'i> {
    kind: TokenKind,
    span: Range<usize>,
    text: &'i str,
}

struct Tokens<'i> {
    text: &'i str,
    lexer: Lexer<'i>,
}

impl<'i> Tokens<'i> {
    /// The next token other than whitespace; newlines and comments too
    /// when `lines` is false.
    fn next(&mut self, lines: bool) -> Option<Tok<'i>> {
        loop {
            let t = self.lexer.next()?;
            let kind = t.kind();
            if kind == TokenKind::Whitespace
                || (!lines && matches!(kind, TokenKind::Newline | TokenKind::Comment))
            {
                continue;
            }
            let span = t.span().start()..t.span().end();
            return Some(Tok {
                kind,
                text: self.text.get(span.clone()).unwrap_or(""),
                span,
            });
        }
    }
}

/// The manifest text with the arrays it read blanked, and those arrays.
pub(crate) fn lift(text: &str) -> (Cow<'_, str>, Vec<Lifted>) {
    let mut toks = Tokens {
        text,
        lexer: Source::new(text).lex(),
    };
    let mut lifted = Vec::new();
    // Which `[[map]]` table the lines are in (none: another table).
    let mut maps_seen = 0usize;
    let mut in_map: Option<usize> = None;
    let mut line_start = true;
    // Brackets open across lines (a multi-line array or inline table):
    // keys are only read at depth 0.
    let mut depth = 0usize;
    while let Some(t) = toks.next(true) {
        match t.kind {
            TokenKind::Newline => {
                line_start = true;
                continue;
            }
            TokenKind::Comment => continue,
            _ => {}
        }
        let at_line_start = std::mem::replace(&mut line_start, false);
        if at_line_start && depth == 0 && t.kind == TokenKind::LeftSquareBracket {
            // A table header: `[[map]]` starts a map table, anything else
            // leaves it.
            let header = header(&mut toks);
            in_map = (header == Header::MapArray).then_some(maps_seen);
            if in_map.is_some() {
                maps_seen += 1;
            }
            line_start = header != Header::Unknown;
            continue;
        }
        if at_line_start && depth == 0 && t.kind == TokenKind::Atom {
            let field = match t.text {
                "entries" => Some(Field::Entries),
                "on_destroy" => Some(Field::OnDestroy),
                _ => None,
            };
            if let (Some(map), Some(field)) = (in_map, field) {
                let eq = toks.next(true);
                if eq.as_ref().is_some_and(|e| e.kind == TokenKind::Equals) {
                    match toks.next(true) {
                        Some(open) if open.kind == TokenKind::LeftSquareBracket => {
                            match array(&mut toks, open.span.start) {
                                Read::Entries(span, entries) => lifted.push(Lifted {
                                    map,
                                    field,
                                    span,
                                    entries,
                                }),
                                // Left to toml: skip to the array's end.
                                Read::Unsure(open_depth) => depth += open_depth,
                            }
                        }
                        Some(other) => depth = bracket(depth, other.kind),
                        None => break,
                    }
                    continue;
                }
                if let Some(e) = eq {
                    depth = bracket(depth, e.kind);
                }
                continue;
            }
        }
        depth = bracket(depth, t.kind);
    }
    if lifted.is_empty() {
        return (Cow::Borrowed(text), lifted);
    }
    let mut bytes = text.as_bytes().to_vec();
    for l in &lifted {
        // Inside the brackets only, newlines too: `toml` then reads one
        // run of whitespace there, not a token per line (2 million of them
        // for a million entries). Errors are located against the manifest
        // as written (`diag::Source`), by byte offsets, which are kept.
        bytes[l.span.start + 1..l.span.end - 1].fill(b' ');
    }
    // Only whole UTF-8 sequences inside the arrays became spaces.
    match String::from_utf8(bytes) {
        Ok(s) => (Cow::Owned(s), lifted),
        Err(_) => (Cow::Borrowed(text), Vec::new()),
    }
}

/// Put the arrays back where serde found them emptied. None when the
/// tables serde read are not the ones the tokens showed: the caller then
/// reads the whole text with `toml`.
pub(crate) fn restore(raw: &mut RawManifest, lifted: Vec<Lifted>) -> Option<()> {
    for l in lifted {
        let map = raw.maps.get_mut(l.map)?.get_mut();
        let slot = match l.field {
            Field::Entries => &mut map.entries,
            Field::OnDestroy => &mut map.on_destroy,
        };
        match slot {
            Some(found) if found.span() == l.span && found.get_ref().is_empty() => {
                *slot = Some(Spanned::new(l.span, l.entries));
            }
            _ => return None,
        }
    }
    Some(())
}

fn bracket(depth: usize, kind: TokenKind) -> usize {
    match kind {
        TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => depth + 1,
        TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => depth.saturating_sub(1),
        _ => depth,
    }
}

#[derive(PartialEq, Eq)]
enum Header {
    /// `[[map]]`.
    MapArray,
    /// Another table header, read to its end.
    Other,
    /// Not a header this reader understands.
    Unknown,
}

/// The rest of a header line after its first `[`.
fn header(toks: &mut Tokens<'_>) -> Header {
    let mut parts: Vec<&str> = Vec::new();
    let mut opened = 1;
    let mut closed = 0;
    while let Some(t) = toks.next(true) {
        match t.kind {
            TokenKind::LeftSquareBracket if parts.is_empty() && opened == 1 => opened = 2,
            TokenKind::RightSquareBracket => {
                closed += 1;
                if closed == opened {
                    return if opened == 2 && parts == ["map"] {
                        Header::MapArray
                    } else {
                        Header::Other
                    };
                }
            }
            TokenKind::Newline | TokenKind::Comment => return Header::Unknown,
            _ if closed > 0 => return Header::Unknown,
            _ => parts.push(t.text),
        }
    }
    Header::Unknown
}

enum Read {
    /// The array's span and its entries.
    Entries(Range<usize>, Vec<Spanned<RawEntry>>),
    /// Not read: how many brackets are still open where reading stopped.
    Unsure(usize),
}

/// An array of `{ key = K, value = V }` after its `[`.
fn array(toks: &mut Tokens<'_>, start: usize) -> Read {
    let mut entries = Vec::new();
    loop {
        let Some(t) = toks.next(false) else {
            return Read::Unsure(1);
        };
        match t.kind {
            TokenKind::RightSquareBracket => return Read::Entries(start..t.span.end, entries),
            TokenKind::LeftCurlyBracket => match inline_table(toks, t.span.start) {
                Some(e) => entries.push(e),
                None => return Read::Unsure(2),
            },
            _ => return Read::Unsure(bracket(1, t.kind)),
        }
        match toks.next(false) {
            Some(t) if t.kind == TokenKind::Comma => {}
            Some(t) if t.kind == TokenKind::RightSquareBracket => {
                return Read::Entries(start..t.span.end, entries);
            }
            Some(t) => return Read::Unsure(bracket(1, t.kind)),
            None => return Read::Unsure(1),
        }
    }
}

/// `key = K, value = V }` after its `{`, each key once.
fn inline_table(toks: &mut Tokens<'_>, start: usize) -> Option<Spanned<RawEntry>> {
    let mut key = None;
    let mut value = None;
    loop {
        let name = toks.next(true)?;
        if name.kind == TokenKind::RightCurlyBracket && key.is_some() && value.is_some() {
            // A trailing comma (TOML 1.1).
            return Some(entry(start..name.span.end, key?, value?));
        }
        let slot = match (name.kind, name.text) {
            (TokenKind::Atom, "key") => &mut key,
            (TokenKind::Atom, "value") => &mut value,
            _ => return None,
        };
        if slot.is_some() || toks.next(true)?.kind != TokenKind::Equals {
            return None;
        }
        *slot = Some(scalar(toks.next(true)?)?);
        let end = toks.next(true)?;
        match end.kind {
            TokenKind::Comma => {}
            TokenKind::RightCurlyBracket => {
                return Some(entry(start..end.span.end, key?, value?));
            }
            _ => return None,
        }
    }
}

fn entry(span: Range<usize>, key: Spanned<Scalar>, value: Spanned<Scalar>) -> Spanned<RawEntry> {
    Spanned::new(span, RawEntry { key, value })
}

/// An integer or a one-line string, decoded as `toml` decodes them.
fn scalar(t: Tok<'_>) -> Option<Spanned<Scalar>> {
    let encoding = match t.kind {
        TokenKind::Atom | TokenKind::BasicString | TokenKind::LiteralString => t.kind.encoding(),
        _ => return None,
    };
    let raw = Raw::new_unchecked(
        t.text,
        encoding,
        toml_parser::Span::new_unchecked(t.span.start, t.span.end),
    );
    let mut out: Cow<'_, str> = Cow::Borrowed("");
    let mut failed = false;
    let mut errors = |_: toml_parser::ParseError| failed = true;
    let kind = raw.decode_scalar(&mut out, &mut errors);
    if failed {
        return None;
    }
    let value = match kind {
        ScalarKind::String => Scalar::Str(out.into_owned()),
        ScalarKind::Integer(radix) => {
            let base = match radix {
                IntegerRadix::Dec => 10,
                IntegerRadix::Hex => 16,
                IntegerRadix::Oct => 8,
                IntegerRadix::Bin => 2,
            };
            Scalar::Int(i64::from_str_radix(&out, base).ok()?)
        }
        _ => return None,
    };
    Some(Spanned::new(t.span, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"[[program]]
name = "p"
type = "cgroup/skb"
pin = "/sys/fs/bpf/p"
maps = [
  "x",
]

[[map]]
name = "a"
program = "p"
pin = "/sys/fs/bpf/a"
key = "u32"
value = "u8"
entries = [
  { key = 1, value = 0x10 },  # a comment
  { key = "${v}", value = 'é' },
  { value = 3, key = 1_000 },
]

[[map]]
name = "b"
program = "p"
pin = "/sys/fs/bpf/b"
key = "u32"
value = "u8"
on_destroy = [{ key = 0, value = 1 }]
entries = [
  { key = 1,
    value = 1 },
]
"#;

    fn read(text: &str) -> (RawManifest, usize) {
        let (blank, lifted) = lift(text);
        assert_eq!(blank.len(), text.len(), "offsets are kept");
        for (i, (a, b)) in blank.bytes().zip(text.bytes()).enumerate() {
            let inside = lifted
                .iter()
                .any(|l| l.span.start < i && i + 1 < l.span.end);
            assert_eq!(a, if inside { b' ' } else { b }, "byte {i}");
        }
        let n = lifted.len();
        let mut raw: RawManifest = toml::from_str(&blank).expect("the rest parses");
        restore(&mut raw, lifted).expect("restored");
        (raw, n)
    }

    fn shown(e: &Option<Spanned<Vec<Spanned<RawEntry>>>>) -> Vec<String> {
        let text = |s: &Scalar| match s {
            Scalar::Int(n) => n.to_string(),
            Scalar::Str(s) => format!("{s:?}"),
        };
        e.iter()
            .flat_map(|v| v.get_ref())
            .map(|e| {
                format!(
                    "{}={}",
                    text(e.get_ref().key.get_ref()),
                    text(e.get_ref().value.get_ref())
                )
            })
            .collect()
    }

    #[test]
    fn arrays_in_map_tables_are_lifted_with_their_spans_and_the_rest_is_left_to_toml() {
        let (raw, n) = read(MANIFEST);
        // `a.entries` and `b.on_destroy` lifted; `b.entries` (an inline
        // table over two lines, TOML 1.1) left to toml.
        assert_eq!(n, 2);
        let a = raw.maps[0].get_ref();
        assert_eq!(shown(&a.entries), ["1=16", "\"${v}\"=\"é\"", "1000=3"]);
        let first = &a.entries.as_ref().unwrap().get_ref()[0];
        assert_eq!(&MANIFEST[first.span()], "{ key = 1, value = 0x10 }");
        assert_eq!(&MANIFEST[first.get_ref().value.span()], "0x10");
        let b = raw.maps[1].get_ref();
        assert_eq!(shown(&b.on_destroy), ["0=1"]);
        assert_eq!(shown(&b.entries), ["1=1"]);
        // What toml reads of the same text is what was lifted.
        let whole: RawManifest = toml::from_str(MANIFEST).unwrap();
        assert_eq!(shown(&whole.maps[0].get_ref().entries), shown(&a.entries));
        assert_eq!(
            shown(&whole.maps[1].get_ref().on_destroy),
            shown(&b.on_destroy)
        );
    }

    #[test]
    fn tight_spacing_crlf_and_comments_read_as_toml_reads_them() {
        for text in [
            "[[map]]\nname = \"a\"\nprogram = \"p\"\npin = \"/x\"\nentries=[{key=1,value=2},{ key = 3, value = 4, }]\n",
            "[[map]]\r\nname = \"a\"\r\nprogram = \"p\"\r\npin = \"/x\"\r\nentries = [\r\n  { key = 1, value = 2 }, # one\r\n  # [[map]] in a comment\r\n  { key = 3, value = 4 }\r\n]\r\n",
            "[[map]] # a map\nname = \"a\"\nprogram = \"p\"\npin = \"/x\"\nentries = [ { key = \"[[map]]\", value = '}' } ]\n",
        ] {
            let (raw, n) = read(text);
            assert_eq!(n, 1, "{text:?}");
            let whole: RawManifest = toml::from_str(text).unwrap();
            let (ours, theirs) = (
                &raw.maps[0].get_ref().entries,
                &whole.maps[0].get_ref().entries,
            );
            assert_eq!(shown(ours), shown(theirs), "{text:?}");
            // Errors point where toml would point.
            let spans = |e: &Option<Spanned<Vec<Spanned<RawEntry>>>>| -> Vec<_> {
                e.iter()
                    .flat_map(|v| v.get_ref())
                    .map(|e| (e.span(), e.get_ref().key.span(), e.get_ref().value.span()))
                    .collect()
            };
            assert_eq!(spans(ours), spans(theirs), "{text:?}");
            assert_eq!(
                ours.as_ref().map(|e| e.span()),
                theirs.as_ref().map(|e| e.span())
            );
        }
    }

    #[test]
    fn nothing_outside_a_map_table_is_lifted() {
        for text in [
            "entries = [{ key = 1, value = 1 }]\n",
            "[[program]]\nentries = [{ key = 1, value = 1 }]\n",
            "[map]\nentries = [{ key = 1, value = 1 }]\n",
            "[[map]]\nx = [\nentries = 1 ]\n",
            "[[map]]\n\"entries\" = [{ key = 1, value = 1 }]\n",
            "[[map]]\nentries = [{ key = 1, value = 1, other = 2 }]\n",
            "[[map]]\nentries = [{ key = 1, key = 1 }]\n",
            "[[map]]\nentries = [{ key = 1 }]\n",
            "[[map]]\nentries = [{ key = true, value = 1 }]\n",
            "[[map]]\nentries = [{ key = 99999999999999999999, value = 1 }]\n",
            "[[map]]\nentries = [{ key = 1, value = 1 } { key = 2, value = 1 }]\n",
            "[[map]]\nentries = [{ key = 1, value = 1 },\n",
        ] {
            let (blank, lifted) = lift(text);
            assert!(lifted.is_empty(), "lifted from {text:?}");
            assert_eq!(blank, text);
        }
    }
}
