//! One way to print an error with its causes.

use std::error::Error;

/// `error: cause: cause of the cause: …`, the way `{:#}` prints an `anyhow::Error`, but
/// a cause whose text the line already holds is not repeated (an error that shows its
/// source in its own message and also returns it from `source()` reads once).
pub fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// A message about an untrusted document with the document's values taken out.
///
/// Parsers quote what they did not like (serde: ``unknown field `x` ``,
/// `invalid type: string "…"`), and validation echoes values (``found `…` ``); in user
/// data that may be a key or a token pasted in the wrong place, and the message goes to
/// the console, status.json and the cloud's console log. Removed:
///
/// * every `` `…` `` or `"…"` piece that comes from `document` (or is longer than 24
///   characters), unless it looks like a schema name (`[a-z0-9_-]`, at most 32): those
///   stay, so ``unknown field `rolle`, expected one of `role`, …`` still helps;
/// * every value in `secrets` (the document's secret fields), wherever it appears,
///   quoted or not, and each line of it of 16 characters or more;
/// * PEM blocks.
///
/// Line and column stay, so the message still says where to look.
pub fn redact_document_values(msg: &str, document: &str, secrets: &[String]) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(['`', '"']) {
        let q = rest.as_bytes()[i] as char;
        out.push_str(&rest[..=i]);
        let after = &rest[i + 1..];
        let (inner, close) = match closing(after, q) {
            Some(j) => (&after[..j], j),
            None => (after, after.len()),
        };
        let plain = unescape(inner);
        let keep = plain.is_empty()
            || schema_like(&plain)
            || (!document.contains(plain.as_str()) && plain.chars().count() <= 24);
        if keep {
            out.push_str(inner);
        } else {
            out.push_str(&format!("<{} characters>", plain.chars().count()));
        }
        rest = &after[close..];
        if let Some(c) = rest.strip_prefix(q) {
            out.push(q);
            rest = c;
        }
    }
    out.push_str(rest);
    let mut pieces: Vec<&str> = Vec::new();
    for s in secrets {
        pieces.push(s.trim());
        pieces.extend(s.lines().map(str::trim).filter(|l| l.len() >= 16));
    }
    pieces.retain(|p| p.len() >= 4);
    pieces.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in pieces {
        if out.contains(p) {
            out = out.replace(p, "<secret>");
        }
    }
    while let Some(b) = out.find("-----BEGIN") {
        let end = out[b..]
            .find("-----END")
            .and_then(|e| out[b + e + 8..].find("-----").map(|f| b + e + 8 + f + 5))
            .unwrap_or(out.len());
        out.replace_range(b..end, "<PEM>");
    }
    out
}

fn closing(s: &str, q: char) -> Option<usize> {
    let mut escaped = false;
    for (j, c) in s.char_indices() {
        match c {
            '\\' if q == '"' && !escaped => escaped = true,
            c if c == q && !escaped => return Some(j),
            _ => escaped = false,
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    out
}

fn schema_like(s: &str) -> bool {
    s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_values_are_redacted_schema_names_kept() {
        let doc =
            "version: 1\nrolle: worker\nsecrets: \"abcdef.0123456789abcdef\"\nhostname: Bad_Host\n";
        let m = redact_document_values(
            "unknown field `rolle`, expected one of `version`, `role` at line 2 column 1",
            doc,
            &[],
        );
        assert_eq!(
            m,
            "unknown field `rolle`, expected one of `version`, `role` at line 2 column 1"
        );
        let m = redact_document_values(
            "secrets: invalid type: string \"abcdef.0123456789abcdef\", expected struct Secrets at line 3 column 10",
            doc,
            &[],
        );
        assert_eq!(m, "secrets: invalid type: string \"<23 characters>\", expected struct Secrets at line 3 column 10");
        let m = redact_document_values("found `Bad_Host`; expected `host:port`", doc, &[]);
        assert_eq!(m, "found `<8 characters>`; expected `host:port`");
        let m = redact_document_values(
            "x: w3ave-passw0rd-value and -----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY----- tail",
            "",
            &["w3ave-passw0rd-value".into()],
        );
        assert_eq!(m, "x: <secret> and <PEM> tail");
        // An unclosed quote hides the rest.
        assert_eq!(
            redact_document_values("bad \"abcdef.0123456789abcdef", doc, &[]),
            "bad \"<23 characters>"
        );
    }

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for E {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    #[test]
    fn causes_are_joined_once() {
        let e = E("a", Some(Box::new(E("b", Some(Box::new(E("c", None)))))));
        assert_eq!(chain(&e), "a: b: c");
        // A message that already shows its source does not repeat it.
        let e = E("writing x: denied", Some(Box::new(E("denied", None))));
        assert_eq!(chain(&e), "writing x: denied");
    }
}
