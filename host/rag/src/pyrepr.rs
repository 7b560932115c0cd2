//! Python's `str()` of JSON values, as KAITO's service (Python) prints a
//! metadata dict into the text it hashes.

use serde_json::{Map, Value};
use std::fmt::Write;

/// Appends Python's `str(d)` of a dict.
pub fn write_object(out: &mut String, map: &Map<String, Value>) {
    out.push('{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_str(out, k);
        out.push_str(": ");
        write_value(out, v);
    }
    out.push('}');
}

/// Appends Python's `repr()` of a JSON value as `json.loads` would give it.
pub fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => match n.as_f64().filter(|_| n.is_f64()) {
            Some(f) => write_float(out, f),
            None => {
                let _ = write!(out, "{n}");
            }
        },
        Value::String(s) => write_str(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, x);
            }
            out.push(']');
        }
        Value::Object(m) => write_object(out, m),
    }
}

/// Python's `str(b"...")` of a byte string: how KAITO's service quotes an
/// upstream error body in its `detail`.
pub fn bytes_repr(bytes: &[u8]) -> String {
    let quote = if bytes.contains(&b'\'') && !bytes.contains(&b'"') { '"' } else { '\'' };
    let mut out = String::with_capacity(bytes.len() + 3);
    out.push('b');
    out.push(quote);
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b if b as char == quote => {
                out.push('\\');
                out.push(quote);
            }
            0x20..=0x7e => out.push(b as char),
            b => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push(quote);
    out
}

/// Python's float repr: shortest round trip, `.0` on integers, exponent
/// form below 1e-4 and from 1e16.
pub fn write_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("nan");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "inf" } else { "-inf" });
    } else if f != 0.0 && (f.abs() < 1e-4 || f.abs() >= 1e16) {
        // Rust's `{:e}` is `1.5e-7`; Python's is `1.5e-07`, at least two exponent digits with a sign.
        let s = format!("{f:e}");
        let (mantissa, exp) = s.split_once('e').expect("exponent form");
        let (sign, digits) = exp.strip_prefix('-').map_or(("+", exp), |d| ("-", d));
        let _ = write!(out, "{mantissa}e{sign}{digits:0>2}");
    } else {
        let s = format!("{f}");
        out.push_str(&s);
        if !s.contains('.') {
            out.push_str(".0");
        }
    }
}

/// Python's str repr: single quotes unless the text has `'` and no `"`.
fn write_str(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !is_printable(c) => {
                let n = c as u32;
                let _ = if n < 0x100 {
                    write!(out, "\\x{n:02x}")
                } else if n < 0x10000 {
                    write!(out, "\\u{n:04x}")
                } else {
                    write!(out, "\\U{n:08x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable` for one character, close enough for metadata:
/// control characters, separators other than the space, and unassigned or
/// private code points are escaped.
fn is_printable(c: char) -> bool {
    let n = c as u32;
    !(n < 0x20
        || (0x7f..0xa1).contains(&n)
        || n == 0xad
        || (0x2028..=0x2029).contains(&n)
        || (0xe000..=0xf8ff).contains(&n)
        || (0xd800..=0xdfff).contains(&n)
        || n == 0xfeff
        || (0x200b..=0x200f).contains(&n)
        || (0x202a..=0x202e).contains(&n)
        || (0x2060..=0x2064).contains(&n)
        || c.is_whitespace() && c != ' ')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn repr(v: Value) -> String {
        let mut s = String::new();
        write_value(&mut s, &v);
        s
    }

    #[test]
    fn matches_python_str_of_json_loads() {
        // Each right-hand side is what `str(json.loads(...))` prints in CPython 3.12.
        assert_eq!(
            repr(json!({"author": "a", "n": 1, "ok": true, "x": null})),
            "{'author': 'a', 'n': 1, 'ok': True, 'x': None}"
        );
        assert_eq!(repr(json!([1.0, 0.5, 1e-7, 1e16, 123456.789, -0.0])), "[1.0, 0.5, 1e-07, 1e+16, 123456.789, -0.0]");
        assert_eq!(repr(json!("it's")), "\"it's\"");
        assert_eq!(repr(json!("say \"hi\" it's")), "'say \"hi\" it\\'s'");
        assert_eq!(repr(json!("a\nb\\c\td\u{7}é")), "'a\\nb\\\\c\\td\\x07é'");
        assert_eq!(repr(json!({"nested": {"k": [true, false]}})), "{'nested': {'k': [True, False]}}");
        assert_eq!(repr(json!({})), "{}");
        assert_eq!(bytes_repr(br#"{"error":"unauthorized"}"#), r#"b'{"error":"unauthorized"}'"#);
        assert_eq!(bytes_repr(b"it's\n\xc3\xa9"), r#"b"it's\n\xc3\xa9""#);
    }
}
