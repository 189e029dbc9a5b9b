//! Content checks of snapshot data (`<hex>  <relative path>` lines), done by the operator before it
//! vouches for a Snapshot and by agents before they use one.

use std::collections::HashSet;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("the snapshot has no lines")]
    Empty,
    #[error("line {line} ({text:?}): {why}")]
    Bad {
        line: usize,
        text: String,
        why: String,
    },
}

/// A snapshot line: the digest (lowercase hex, as written) and the path relative to the image root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    pub hex: &'a str,
    pub path: &'a str,
}

/// Checks every line of `data` and returns them: `<hex_len hex digits>  <path>`, the path
/// relative (no leading `/`), without `.`/`..` components or empty ones, each path once; a final
/// newline is optional, empty lines are not allowed. `hex_len` is twice the algorithm's digest size.
pub fn parse_lines(data: &[u8], hex_len: usize) -> Result<Vec<Line<'_>>, LineError> {
    let text = std::str::from_utf8(data).map_err(|e| {
        let line = data[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        LineError::Bad {
            line,
            text: String::new(),
            why: "not UTF-8 (paths are written escaped, so snapshot data always is)".into(),
        }
    })?;
    let body = text.strip_suffix('\n').unwrap_or(text);
    if body.is_empty() {
        return Err(LineError::Empty);
    }
    let mut seen = HashSet::new();
    let mut lines = Vec::new();
    for (i, raw) in body.split('\n').enumerate() {
        let bad = |why: String| LineError::Bad {
            line: i + 1,
            text: raw.chars().take(120).collect(),
            why,
        };
        let Some((hex, path)) = raw.split_once("  ") else {
            return Err(bad("expected '<hex digest>  <path>' (two spaces)".into()));
        };
        if hex.len() != hex_len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("the digest must be {hex_len} hex digits")));
        }
        if path.is_empty() {
            return Err(bad("the path is empty".into()));
        }
        if path.starts_with('/') {
            return Err(bad("the path must be relative to the image root".into()));
        }
        if path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad("the path has an empty, '.' or '..' component".into()));
        }
        if !seen.insert(path) {
            return Err(bad(format!("{path} is listed twice")));
        }
        lines.push(Line { hex, path });
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn good_data_parses_with_or_without_final_newline() {
        let data = format!("{H}  app/a\n{H}  app/b c\n");
        let lines = parse_lines(data.as_bytes(), 32).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[1],
            Line {
                hex: H,
                path: "app/b c"
            }
        );
        assert_eq!(
            parse_lines(data.trim_end().as_bytes(), 32).unwrap().len(),
            2
        );
    }

    #[test]
    fn each_bad_line_is_named_by_number() {
        let cases = [
            (format!("{H}  a\n{H} b\n"), 2, "two spaces"),
            (format!("{H}  a\nxyz  b\n"), 2, "32 hex"),
            (format!("{}  a\n", &H[..30]), 1, "32 hex"),
            (format!("{H}  a\n{H}  /etc/passwd\n"), 2, "relative"),
            (format!("{H}  a/../../etc\n"), 1, "'..'"),
            (format!("{H}  a//b\n"), 1, "empty"),
            (format!("{H}  a\n\n{H}  b\n"), 2, "two spaces"),
            (format!("{H}  a\n{H}  b\n{H}  a\n"), 3, "listed twice"),
            (format!("{H}  \n"), 1, "path is empty"),
        ];
        for (data, line, why) in cases {
            match parse_lines(data.as_bytes(), 32) {
                Err(LineError::Bad {
                    line: l, why: w, ..
                }) => {
                    assert_eq!(l, line, "{data:?}");
                    assert!(w.contains(why), "{data:?}: {w}");
                }
                other => panic!("{data:?}: {other:?}"),
            }
        }
        assert_eq!(parse_lines(b"", 32), Err(LineError::Empty));
        assert_eq!(parse_lines(b"\n", 32), Err(LineError::Empty));
        let err = parse_lines(b"ok\n\xff", 32).unwrap_err().to_string();
        assert!(err.starts_with("line 2"), "{err}");
    }
}
