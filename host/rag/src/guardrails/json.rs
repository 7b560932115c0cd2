//! The `json` scanner's pieces, as llm-guard 0.3.16 runs them: its recursive pattern for JSON objects in an answer,
//! Python's `json.loads` as the validity test, and json_repair's repair ([`super::json_repair`]).

/// Byte spans of the JSON object candidates in `text`, as `regex.findall` finds llm-guard's
/// `(?<!\\)(?:\\\\)*\{(?:[^{}]|(?R))*\}`: a `{` after an even run of backslashes (the run belongs to the match),
/// balanced by depth. A nested `{` after an odd run cannot open, so its candidate fails; braces inside strings
/// count, as the pattern does not know strings. Every significant character is ASCII, so bytes suffice.
pub fn candidates(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut p = 0;
    while p < b.len() {
        match candidate_at(b, p) {
            Some(end) => {
                out.push((p, end));
                p = end;
            }
            None => p += 1,
        }
    }
    out
}

/// Backslashes right before `at`.
fn run_before(b: &[u8], at: usize) -> usize {
    b[..at].iter().rev().take_while(|&&c| c == b'\\').count()
}

/// The end of the candidate starting at `p`, if one does.
fn candidate_at(b: &[u8], p: usize) -> Option<usize> {
    if p > 0 && b[p - 1] == b'\\' {
        return None;
    }
    let run = b[p..].iter().take_while(|&&c| c == b'\\').count();
    if run % 2 == 1 || b.get(p + run) != Some(&b'{') {
        return None;
    }
    let mut depth = 1usize;
    for (i, &c) in b.iter().enumerate().skip(p + run + 1) {
        match c {
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b'{' if run_before(b, i) % 2 == 1 => return None,
            b'{' => depth += 1,
            _ => {}
        }
    }
    None
}

/// Whether `s` is one JSON document as Python's `json.loads` reads it: RFC 8259 plus `NaN`, `Infinity` and
/// `-Infinity`, numbers of any size, lone surrogate escapes; control characters in strings refused (strict).
/// Iterative, so no nesting depth overflows it.
pub fn is_valid(s: &str) -> bool {
    let b = s.as_bytes();
    let mut at = skip_ws(b, 0);
    // Open containers: true for an object.
    let mut open: Vec<bool> = Vec::new();
    loop {
        // A value is expected at `at`.
        at = match b.get(at) {
            Some(b'{') => {
                let next = skip_ws(b, at + 1);
                if b.get(next) == Some(&b'}') {
                    next + 1
                } else {
                    open.push(true);
                    match key(b, next) {
                        Some(v) => at = v,
                        None => return false,
                    }
                    continue;
                }
            }
            Some(b'[') => {
                let next = skip_ws(b, at + 1);
                if b.get(next) == Some(&b']') {
                    next + 1
                } else {
                    open.push(false);
                    at = next;
                    continue;
                }
            }
            Some(b'"') => match string_end(b, at) {
                Some(end) => end,
                None => return false,
            },
            _ => match scalar_end(b, at) {
                Some(end) => end,
                None => return false,
            },
        };
        // After a value: close containers, or go on to the next member.
        loop {
            at = skip_ws(b, at);
            match (open.last(), b.get(at)) {
                (None, _) => return at == b.len(),
                (Some(true), Some(b'}')) | (Some(false), Some(b']')) => {
                    open.pop();
                    at += 1;
                }
                (Some(true), Some(b',')) => {
                    match key(b, skip_ws(b, at + 1)) {
                        Some(v) => at = v,
                        None => return false,
                    }
                    break;
                }
                (Some(false), Some(b',')) => {
                    at = skip_ws(b, at + 1);
                    break;
                }
                _ => return false,
            }
        }
    }
}

fn skip_ws(b: &[u8], mut at: usize) -> usize {
    while matches!(b.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// A member's key and its ':' at `at`: where its value starts.
fn key(b: &[u8], at: usize) -> Option<usize> {
    if b.get(at) != Some(&b'"') {
        return None;
    }
    let at = skip_ws(b, string_end(b, at)?);
    (b.get(at) == Some(&b':')).then(|| skip_ws(b, at + 1))
}

/// The end of the string literal opening at `at`.
fn string_end(b: &[u8], mut at: usize) -> Option<usize> {
    at += 1;
    loop {
        match *b.get(at)? {
            b'"' => return Some(at + 1),
            b'\\' => match *b.get(at + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at += 2,
                b'u' if b.len() >= at + 6 && b[at + 2..at + 6].iter().all(u8::is_ascii_hexdigit) => at += 6,
                _ => return None,
            },
            c if c < 0x20 => return None,
            _ => at += 1,
        }
    }
}

/// The end of a number or literal at `at`.
fn scalar_end(b: &[u8], at: usize) -> Option<usize> {
    for word in [&b"true"[..], b"false", b"null", b"NaN", b"Infinity", b"-Infinity"] {
        if b[at..].starts_with(word) {
            return Some(at + word.len());
        }
    }
    let digits = |mut i: usize| {
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > start).then_some(i)
    };
    let mut i = at + usize::from(b.get(at) == Some(&b'-'));
    i = if b.get(i) == Some(&b'0') { i + 1 } else { digits(i)? };
    if b.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
        i = digits(i + 1 + sign)?;
    }
    Some(i)
}

/// `json_repair.repair_json(s, skip_json_loads=True)` as `json.dumps` writes its result; an error when the
/// object nests too deep to repair.
pub fn repair(s: &str) -> Result<String, super::json_repair::TooDeep> {
    super::json_repair::repair_json(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<&str> {
        candidates(text).into_iter().map(|(a, b)| &text[a..b]).collect()
    }

    #[test]
    fn candidates_follow_the_recursive_pattern() {
        assert_eq!(found(r#"a {"x": {"y": 1}} b {"z": 2}"#), [r#"{"x": {"y": 1}}"#, r#"{"z": 2}"#]);
        assert_eq!(found("{ a { b }"), ["{ b }"], "an unclosed outer brace leaves the inner object");
        assert_eq!(
            found(r"\{a} \\{b}"),
            [r"\\{b}"],
            "an escaped brace opens nothing; an even run belongs to the match"
        );
        assert_eq!(found(r"{a \{b}}"), Vec::<&str>::new(), "a nested brace after one backslash cannot open");
        assert_eq!(found(r"{a \\{b}}"), [r"{a \\{b}}"], "after two it can");
        assert_eq!(found("{{}"), ["{}"]);
        assert_eq!(found(r#"{"s": "}"}"#), [r#"{"s": "}"#], "braces in strings count");
        assert_eq!(found("[1, 2] no objects"), Vec::<&str>::new());
        assert_eq!(found("é{\"k\": \"ü\"}"), ["{\"k\": \"ü\"}"]);
    }

    #[test]
    fn validity_is_python_json_loads() {
        for ok in
            [r#"{"a": 1}"#, "[]", " {} ", r#"{"a": [1, -0.5e3, NaN, -Infinity, "\u00e9\ud800"]}"#, "1e400", r#""\/""#]
        {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in [
            "{a: 1}",
            r#"\\{"a": 1}"#,
            r#"{"a": 1,}"#,
            "[1,]",
            "01",
            "{\"a\": \"x\ny\"}",
            r#"{"a" 1}"#,
            "{} {}",
            "",
            "1.",
            r#""\x""#,
        ] {
            assert!(!is_valid(bad), "{bad}");
        }
        assert!(is_valid(&format!("{}{}", "[".repeat(100_000), "]".repeat(100_000))), "depth is no limit");
    }
}
