//! The repair llm-guard's `json` scanner applies to an invalid JSON object: json_repair 0.44.1's parser (the version
//! llm-guard 0.3.16 pins), followed rule by rule, since its heuristics decide what text the user sees. The
//! parser reads Python-like values (so `1.50` becomes `1.5` and `01` becomes `1`); `json.dumps` writes them back.
//! The guardrail reference test runs json_repair itself on the same answers.

/// A value as the parser builds it (Python's types; an integer keeps its decimal digits, which Python does not bound).
#[derive(Debug, Clone, PartialEq)]
pub enum Py {
    /// `None`.
    None,
    /// `True`/`False`.
    Bool(bool),
    /// An `int`, as canonical decimal digits with its sign.
    Int(String),
    /// A `float`.
    Float(f64),
    /// A `str`.
    Str(String),
    /// A `list`.
    List(Vec<Py>),
    /// A `dict`, in insertion order (Python's).
    Dict(Vec<(String, Py)>),
}

impl Py {
    fn empty() -> Py {
        Py::Str(String::new())
    }

    fn is_str(&self, s: &str) -> bool {
        matches!(self, Py::Str(x) if x == s)
    }

    /// Python's `str()` of a key.
    fn into_key(self) -> String {
        match self {
            Py::Str(s) => s,
            Py::Bool(b) => if b { "True" } else { "False" }.into(),
            Py::None => "None".into(),
            other => format!("{other:?}"),
        }
    }
}

/// Nesting deeper than this fails the scan (Python's recursion limit stops json_repair at about 490 levels, and
/// llm-guard then fails: KAITO answers 500, as kaito-rag does).
pub const MAX_DEPTH: usize = 256;

/// The object nests deeper than [`MAX_DEPTH`].
#[derive(Debug)]
pub struct TooDeep;

/// `json_repair.repair_json(text, skip_json_loads=True)`: the repaired value, as `json.dumps` writes it.
pub fn repair_json(text: &str) -> Result<String, TooDeep> {
    let mut parser = Parser { s: text.chars().collect(), index: 0, context: Context::default(), depth: 0 };
    let value = parser.parse()?;
    let mut out = String::new();
    dumps(&value, &mut out);
    Ok(out)
}

const DELIMITERS: [char; 4] = ['"', '\'', '“', '”'];

/// Where the parser is (json_repair's `ContextValues`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ctx {
    ObjectKey,
    ObjectValue,
    Array,
}

/// json_repair's `JsonContext`: a stack, its top, and whether it is empty.
#[derive(Debug, Default)]
struct Context {
    stack: Vec<Ctx>,
    current: Option<Ctx>,
    empty: bool,
}

impl Context {
    fn set(&mut self, value: Ctx) {
        self.stack.push(value);
        self.current = Some(value);
        self.empty = false;
    }

    fn reset(&mut self) {
        self.stack.pop();
        self.current = self.stack.last().copied();
        self.empty = self.current.is_none();
    }

    fn has(&self, value: Ctx) -> bool {
        self.stack.contains(&value)
    }
}

struct Parser {
    s: Vec<char>,
    index: isize,
    context: Context,
    depth: usize,
}

impl Parser {
    /// The character `count` away from the cursor (`get_char_at`; a negative position wraps, as Python's does).
    fn at(&self, count: isize) -> Option<char> {
        let mut pos = self.index + count;
        if pos < 0 {
            pos += self.s.len() as isize;
        }
        usize::try_from(pos).ok().and_then(|p| self.s.get(p).copied())
    }

    fn len(&self) -> isize {
        self.s.len() as isize
    }

    fn current(&self) -> Option<Ctx> {
        self.context.current
    }

    /// Moves the cursor over whitespace.
    fn skip_whitespace(&mut self) {
        while self.at(0).is_some_and(is_space) {
            self.index += 1;
        }
    }

    /// The offset of the first non-space at or after `idx`, the cursor unmoved.
    fn whitespace_from(&self, mut idx: isize) -> isize {
        while self.at(idx).is_some_and(is_space) {
            idx += 1;
        }
        idx
    }

    /// The offset of the next unescaped `target` at or after `idx` (past the end when there is none).
    fn skip_to(&self, target: char, mut idx: isize) -> isize {
        loop {
            match self.at(idx) {
                None => return idx,
                Some(c) if c == target => {
                    let abs = self.index + idx;
                    if abs > 0 && self.s[(abs - 1) as usize] == '\\' {
                        idx += 1;
                        continue;
                    }
                    return idx;
                }
                Some(_) => idx += 1,
            }
        }
    }

    fn parse(&mut self) -> Result<Py, TooDeep> {
        let first = self.parse_json()?;
        if self.index >= self.len() {
            return Ok(first);
        }
        // Text after the first value: further values make a list, a value that repeats the last one's shape
        // replacing it.
        let mut values = vec![first];
        let mut last_index = self.index;
        while self.index < self.len() {
            let next = self.parse_json()?;
            if !next.is_str("") {
                if values.last().is_some_and(|last| same_shape(last, &next)) {
                    values.pop();
                }
                values.push(next);
            }
            if self.index == last_index {
                self.index += 1;
            }
            last_index = self.index;
        }
        Ok(if values.len() == 1 { values.pop().expect("one value") } else { Py::List(values) })
    }

    fn parse_json(&mut self) -> Result<Py, TooDeep> {
        loop {
            let Some(c) = self.at(0) else { return Ok(Py::empty()) };
            if c == '{' {
                self.index += 1;
                return self.nested(Self::parse_object);
            }
            if c == '[' {
                self.index += 1;
                return self.nested(Self::parse_array);
            }
            if self.current() == Some(Ctx::ObjectValue) && c == '}' {
                return Ok(Py::empty());
            }
            if !self.context.empty && (DELIMITERS.contains(&c) || is_alpha(c)) {
                return self.parse_string();
            }
            if !self.context.empty && (is_digit(c) || c == '-' || c == '.') {
                return self.parse_number();
            }
            if c == '#' || c == '/' {
                return Ok(self.parse_comment());
            }
            self.index += 1;
        }
    }

    fn nested(&mut self, parse: fn(&mut Self) -> Result<Py, TooDeep>) -> Result<Py, TooDeep> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(TooDeep);
        }
        let value = parse(self);
        self.depth -= 1;
        value
    }

    fn parse_object(&mut self) -> Result<Py, TooDeep> {
        let mut obj: Vec<(String, Py)> = Vec::new();
        while self.at(0).unwrap_or('}') != '}' {
            self.skip_whitespace();
            // A ':' before any key is dropped.
            if self.at(0) == Some(':') {
                self.index += 1;
            }
            self.context.set(Ctx::ObjectKey);
            let mut rollback = self.index;
            let mut key = String::new();
            while self.at(0).is_some() {
                rollback = self.index;
                if self.at(0) == Some('[') && key.is_empty() {
                    // `"a": [1], [2]`: the second array extends the previous key's.
                    if let Some((prev, Py::List(_))) = obj.last()
                        && !prev.is_empty()
                    {
                        self.index += 1;
                        let Py::List(mut more) = self.nested(Self::parse_array)? else { unreachable!("arrays") };
                        if more.len() == 1 && matches!(more[0], Py::List(_)) {
                            let Py::List(inner) = more.pop().expect("one") else { unreachable!("checked") };
                            more = inner;
                        }
                        if let Some((_, Py::List(prev))) = obj.last_mut() {
                            prev.extend(more);
                        }
                        self.skip_whitespace();
                        if self.at(0) == Some(',') {
                            self.index += 1;
                        }
                        self.skip_whitespace();
                        continue;
                    }
                }
                key = self.parse_string()?.into_key();
                if key.is_empty() {
                    self.skip_whitespace();
                }
                if !key.is_empty() || matches!(self.at(0), Some(':' | '}')) {
                    break;
                }
            }
            if self.context.has(Ctx::Array) && obj.iter().any(|(k, _)| *k == key) {
                // A repeated key inside an array starts the next object: close this one and open another.
                self.index = rollback - 1;
                self.s.insert((self.index + 1) as usize, '{');
                break;
            }
            self.skip_whitespace();
            if self.at(0).unwrap_or('}') == '}' {
                continue;
            }
            self.skip_whitespace();
            // The ':' (or whatever stands in its place) is skipped.
            self.index += 1;
            self.context.reset();
            self.context.set(Ctx::ObjectValue);
            let value = self.parse_json()?;
            self.context.reset();
            match obj.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => obj.push((key, value)),
            }
            if matches!(self.at(0), Some(',' | '\'' | '"')) {
                self.index += 1;
            }
            self.skip_whitespace();
        }
        self.index += 1;
        Ok(Py::Dict(obj))
    }

    fn parse_array(&mut self) -> Result<Py, TooDeep> {
        let mut arr = Vec::new();
        self.context.set(Ctx::Array);
        let mut c = self.at(0);
        while let Some(ch) = c {
            if ch == ']' || ch == '}' {
                break;
            }
            self.skip_whitespace();
            let value = self.parse_json()?;
            if value.is_str("") {
                self.index += 1;
            } else if value.is_str("...") && self.at(-1) == Some('.') {
                // A stray `...` is dropped.
            } else {
                arr.push(value);
            }
            c = self.at(0);
            while let Some(ch) = c {
                if ch == ']' || !(is_space(ch) || ch == ',') {
                    break;
                }
                self.index += 1;
                c = self.at(0);
            }
        }
        self.index += 1;
        self.context.reset();
        Ok(Py::List(arr))
    }

    /// Strings, quoted or not, and most of the repairs.
    fn parse_string(&mut self) -> Result<Py, TooDeep> {
        let mut missing_quotes = false;
        let mut doubled_quotes = false;
        let (mut l, mut r) = ('"', '"');
        let mut c = self.at(0);
        if matches!(c, Some('#' | '/')) {
            return Ok(self.parse_comment());
        }
        while let Some(ch) = c {
            if DELIMITERS.contains(&ch) || is_alnum(ch) {
                break;
            }
            self.index += 1;
            c = self.at(0);
        }
        let Some(first) = c else { return Ok(Py::empty()) };
        if first == '\'' {
            (l, r) = ('\'', '\'');
        } else if first == '“' {
            (l, r) = ('“', '”');
        } else if is_alnum(first) {
            // An unquoted literal may be true, false or null (not as a key).
            if ['t', 'f', 'n'].iter().any(|x| lower(first) == x.to_string()) && self.current() != Some(Ctx::ObjectKey) {
                let value = self.parse_boolean_or_null();
                if !value.is_str("") {
                    return Ok(value);
                }
            }
            missing_quotes = true;
        }
        if !missing_quotes {
            self.index += 1;
        }
        let ctx = self.current();

        if let Some(next) = self.at(0).filter(|n| DELIMITERS.contains(n)) {
            if next == l {
                if ctx == Some(Ctx::ObjectKey) && self.at(1) == Some(':') {
                    self.index += 1;
                    return Ok(Py::empty());
                }
                if self.at(1) == Some(l) {
                    return Ok(Py::empty());
                }
                let i = self.skip_to(r, 1);
                if self.at(i).is_some() && self.at(i + 1) == Some(r) {
                    doubled_quotes = true;
                    self.index += 1;
                } else {
                    let i = self.whitespace_from(1);
                    match self.at(i) {
                        Some(n) if DELIMITERS.contains(&n) || n == '{' || n == '[' => {
                            self.index += 1;
                            return Ok(Py::empty());
                        }
                        Some(',' | ']' | '}') => {}
                        _ => self.index += 1,
                    }
                }
            } else {
                let i = self.skip_to(r, 1);
                if self.at(i).is_none() {
                    return Ok(Py::empty());
                }
            }
        }

        let mut acc = String::new();
        let mut c = self.at(0);
        let mut unmatched = false;
        while let Some(ch) = c {
            if ch == r {
                break;
            }
            if missing_quotes && ctx == Some(Ctx::ObjectKey) && (ch == ':' || is_space(ch)) {
                break;
            }
            if ctx == Some(Ctx::ObjectValue)
                && (ch == ',' || ch == '}')
                && self.value_ends_here(&acc, l, r, doubled_quotes)
            {
                break;
            }
            if ch == ']' && self.context.has(Ctx::Array) && self.at(self.skip_to(r, 0)).is_none() {
                break;
            }
            acc.push(ch);
            self.index += 1;
            c = self.at(0);
            if let Some(cc) = c
                && acc.ends_with('\\')
                && (cc == r || matches!(cc, 't' | 'n' | 'r' | 'b' | '\\'))
            {
                // A stray escape in the text is normalised.
                acc.pop();
                acc.push(match cc {
                    't' => '\t',
                    'n' => '\n',
                    'r' => '\r',
                    'b' => '\u{8}',
                    other => other,
                });
                self.index += 1;
                c = self.at(0);
            }
            if c == Some(':') && !missing_quotes && ctx == Some(Ctx::ObjectKey) {
                // A key missing its closing quote, if a quoted value follows.
                let i = self.skip_to(l, 1);
                if self.at(i).is_none() {
                    break;
                }
                let i = self.skip_to(r, i + 1);
                if self.at(i).is_some() {
                    let i = self.whitespace_from(i + 1);
                    if matches!(self.at(i), Some(',' | '}')) {
                        break;
                    }
                }
            }
            if c == Some(r) {
                let quote = r;
                if doubled_quotes && self.at(1) == Some(r) {
                    self.index += 1;
                } else if missing_quotes && ctx == Some(Ctx::ObjectValue) {
                    // The quote may open the next key.
                    let mut i = 1;
                    while self.at(i).is_some_and(|n| n != r && n != l) {
                        i += 1;
                    }
                    if self.at(i).is_some() {
                        let i = self.whitespace_from(i + 1);
                        if self.at(i) == Some(':') {
                            self.index -= 1;
                            c = self.at(0);
                            break;
                        }
                    }
                } else if unmatched {
                    unmatched = false;
                    acc.push(quote);
                    self.index += 1;
                    c = self.at(0);
                } else if self.quote_is_text(l, r) {
                    if !matches!(ctx, Some(Ctx::ObjectKey)) {
                        unmatched = !unmatched;
                    }
                    acc.push(quote);
                    self.index += 1;
                    c = self.at(0);
                }
                // Otherwise the quote closes the string: the loop ends on it.
            }
        }
        if let Some(ch) = c
            && missing_quotes
            && ctx == Some(Ctx::ObjectKey)
            && is_space(ch)
        {
            // An unquoted key followed by words: a comment, not a key.
            self.skip_whitespace();
            if !matches!(self.at(0), Some(':' | ',')) {
                return Ok(Py::empty());
            }
        }
        if c != Some(r) {
            acc = rstrip(&acc);
        } else {
            self.index += 1;
        }
        if missing_quotes || acc.ends_with('\n') {
            acc = rstrip(&acc);
        }
        Ok(Py::Str(acc))
    }

    /// In an object value, at a `,` or `}`: whether the value's closing quote is missing, so the value ends here.
    fn value_ends_here(&self, acc: &str, l: char, r: char, doubled_quotes: bool) -> bool {
        let i = self.skip_to(r, 1);
        if self.at(i).is_some() {
            // A closing quote follows: it ends the value if a separator (or the end) comes right after it, or if
            // no further quote opens a key.
            let i = self.whitespace_from(i + 1);
            if matches!(self.at(i), None | Some(',' | '}')) {
                return false;
            }
            let mut i = self.skip_to(l, i);
            if doubled_quotes {
                i = self.skip_to(l, i);
            }
            if self.at(i).is_none() {
                return false;
            }
            let i = self.whitespace_from(i + 1);
            return self.at(i).is_none_or(|n| n == ':');
        }
        // No closing quote anywhere: a ':' later means every value lacks its quotes (the caller stops here too).
        if self.at(self.skip_to(':', 1)).is_some() {
            return true;
        }
        let i = self.whitespace_from(1);
        let j = self.skip_to('}', i);
        if j - i > 1 {
            return false;
        }
        if self.at(j).is_some() {
            for a in acc.chars().rev() {
                if a == '{' {
                    return false;
                }
                if a == '}' {
                    break;
                }
            }
        }
        true
    }

    /// At a quote inside a quoted string: whether it is text (a quoted word in the value) rather than the end.
    fn quote_is_text(&self, l: char, r: char) -> bool {
        let (i, next) = self.scan_after_quote(l, r);
        let ctx = self.current();
        if next == Some(',') && ctx == Some(Ctx::ObjectValue) {
            let i = self.skip_to(r, i + 1);
            let i = self.whitespace_from(i + 1);
            return self.at(i) == Some('}');
        }
        if next != Some(r) || self.at(i - 1) == Some('\\') {
            return false;
        }
        if (1..i).all(|j| self.at(j).is_none_or(is_space)) {
            return false;
        }
        match ctx {
            Some(Ctx::ObjectValue) => {
                // Text unless a key (a quoted string, then ':') follows.
                let mut i = self.skip_to(r, i + 1) + 1;
                while let Some(n) = self.at(i) {
                    if n == ':' || matches!(n, ',' | ']' | '}') || (n == r && self.at(i - 1) != Some('\\')) {
                        break;
                    }
                    i += 1;
                }
                self.at(i) != Some(':')
            }
            Some(Ctx::Array) | Some(Ctx::ObjectKey) => true,
            None => false,
        }
    }

    /// From a quote, the offset and character where json_repair's look-ahead stops: the next quote, or a
    /// separator of an enclosing context.
    fn scan_after_quote(&self, l: char, r: char) -> (isize, Option<char>) {
        let ctx = self.current();
        let mut i = 1;
        let mut check_comma = true;
        while let Some(n) = self.at(i) {
            if n == r || n == l {
                break;
            }
            if check_comma && is_alpha(n) {
                check_comma = false;
            }
            if (self.context.has(Ctx::ObjectKey) && matches!(n, ':' | '}'))
                || (self.context.has(Ctx::ObjectValue) && n == '}')
                || (self.context.has(Ctx::Array) && matches!(n, ']' | ','))
                || (check_comma && ctx == Some(Ctx::ObjectValue) && n == ',')
            {
                break;
            }
            i += 1;
        }
        (i, self.at(i))
    }

    fn parse_number(&mut self) -> Result<Py, TooDeep> {
        const NUMBER_CHARS: &str = "0123456789-.eE/,";
        let in_array = self.current() == Some(Ctx::Array);
        let mut number = String::new();
        while let Some(c) = self.at(0) {
            if !NUMBER_CHARS.contains(c) || (in_array && c == ',') {
                break;
            }
            number.push(c);
            self.index += 1;
        }
        if number.ends_with(['-', 'e', 'E', '/', ',']) {
            number.pop();
            self.index -= 1;
        } else if self.at(0).is_some_and(is_alpha) {
            // A word starting with digits: a string.
            self.index -= number.chars().count() as isize;
            return self.parse_string();
        }
        if number.contains(',') {
            return Ok(Py::Str(number));
        }
        if number.contains(['.', 'e', 'E']) {
            return Ok(number.parse::<f64>().map(Py::Float).unwrap_or(Py::Str(number)));
        }
        if number == "-" {
            return self.parse_json();
        }
        Ok(python_int(&number).map(Py::Int).unwrap_or(Py::Str(number)))
    }

    fn parse_boolean_or_null(&mut self) -> Py {
        let start = self.index;
        let first = self.at(0).map(lower).unwrap_or_default();
        let (word, value) = match first.as_str() {
            "t" => ("true", Py::Bool(true)),
            "f" => ("false", Py::Bool(false)),
            _ => ("null", Py::None),
        };
        let mut matched = 0;
        for expected in word.chars() {
            if self.at(0).map(lower) != Some(expected.to_string()) {
                break;
            }
            matched += 1;
            self.index += 1;
        }
        if matched == word.len() {
            return value;
        }
        self.index = start;
        Py::empty()
    }

    /// Skips a `#`, `//` or `/* */` comment.
    fn parse_comment(&mut self) -> Py {
        let mut ends = vec!['\n', '\r'];
        if self.context.has(Ctx::Array) {
            ends.push(']');
        }
        if self.context.has(Ctx::ObjectValue) {
            ends.push('}');
        }
        if self.context.has(Ctx::ObjectKey) {
            ends.push(':');
        }
        let skip_line = |p: &mut Parser| {
            while p.at(0).is_some_and(|c| !ends.contains(&c)) {
                p.index += 1;
            }
        };
        match (self.at(0), self.at(1)) {
            (Some('#'), _) => skip_line(self),
            (Some('/'), Some('/')) => {
                self.index += 2;
                skip_line(self);
            }
            (Some('/'), Some('*')) => {
                // json_repair's test is the text so far ending in "*/", so "/*/" is a whole comment.
                let mut comment = String::from("/*");
                self.index += 2;
                while let Some(c) = self.at(0) {
                    comment.push(c);
                    self.index += 1;
                    if comment.ends_with("*/") {
                        break;
                    }
                }
            }
            _ => self.index += 1,
        }
        Py::empty()
    }
}

/// json_repair's comparison of consecutive top-level values: same types, same keys, same lengths, recursively.
fn same_shape(a: &Py, b: &Py) -> bool {
    match (a, b) {
        (Py::Dict(x), Py::Dict(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| y.iter().find(|(k2, _)| k2 == k).is_some_and(|(_, w)| same_shape(v, w)))
        }
        (Py::List(x), Py::List(y)) => x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same_shape(v, w)),
        _ => std::mem::discriminant(a) == std::mem::discriminant(b),
    }
}

/// Python's `int(text)` for what the number scanner collects: an optional '-', then decimal digits.
fn python_int(text: &str) -> Option<String> {
    let (sign, digits) = text.strip_prefix('-').map_or(("", text), |d| ("-", d));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = digits.trim_start_matches('0');
    Some(if digits.is_empty() { "0".into() } else { format!("{sign}{digits}") })
}

/// `str.lower()` of one character.
fn lower(c: char) -> String {
    c.to_lowercase().collect()
}

/// `str.isspace()`: White_Space, plus the four information separators Python counts.
fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `str.isalpha()`: the letter categories.
fn is_alpha(c: char) -> bool {
    use unicode_general_category::{GeneralCategory as G, get_general_category};
    matches!(
        get_general_category(c),
        G::UppercaseLetter | G::LowercaseLetter | G::TitlecaseLetter | G::ModifierLetter | G::OtherLetter
    )
}

/// `str.isdigit()`: decimal digits, and the superscript, subscript and circled ones Python also counts.
fn is_digit(c: char) -> bool {
    use unicode_general_category::{GeneralCategory as G, get_general_category};
    get_general_category(c) == G::DecimalNumber
        || matches!(c, '²' | '³' | '¹' | '⁰' | '⁴'..='⁹' | '₀'..='₉' | '①'..='⑨' | '⑴'..='⑼' | '⒈'..='⒐')
}

/// `str.isalnum()`: letters and numbers.
fn is_alnum(c: char) -> bool {
    use unicode_general_category::{GeneralCategory as G, get_general_category};
    is_alpha(c) || matches!(get_general_category(c), G::DecimalNumber | G::LetterNumber | G::OtherNumber)
}

/// `str.rstrip()`.
fn rstrip(s: &str) -> String {
    s.trim_end_matches(is_space).to_string()
}

/// Python's `json.dumps(value, ensure_ascii=True)`: `", "` and `": "` separators, non-ASCII as `\uXXXX`.
pub fn dumps(value: &Py, out: &mut String) {
    match value {
        Py::None => out.push_str("null"),
        Py::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Py::Int(digits) => out.push_str(digits),
        Py::Float(f) => out.push_str(&float_repr(*f)),
        Py::Str(s) => string(s, out),
        Py::List(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                dumps(v, out);
            }
            out.push(']');
        }
        Py::Dict(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                string(k, out);
                out.push_str(": ");
                dumps(v, out);
            }
            out.push('}');
        }
    }
}

/// A JSON string with Python's ASCII escaping (UTF-16 surrogate pairs beyond the BMP).
fn string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// A float as `json.dumps` writes it: Python's repr, with `Infinity` and `NaN` for the non-finite.
fn float_repr(f: f64) -> String {
    match f {
        f if f.is_nan() => "NaN".into(),
        f if f.is_infinite() => if f > 0.0 { "Infinity" } else { "-Infinity" }.into(),
        f => {
            let mut out = String::new();
            crate::pyrepr::write_float(&mut out, f);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repaired(s: &str) -> String {
        repair_json(s).unwrap()
    }

    #[test]
    fn repairs_what_llms_get_wrong() {
        assert_eq!(repaired("{name: 'John', age: 30,}"), r#"{"name": "John", "age": 30}"#);
        assert_eq!(repaired(r#"{"a": [1, 2, {"b": 3}}"#), r#"{"a": [1, 2, {"b": 3}]}"#);
        assert_eq!(repaired(r#"{"a": 01, "b": .5}"#), r#"{"a": 1, "b": 0.5}"#);
        assert_eq!(repaired("{\"text\": \"line\nbreak\"}"), r#"{"text": "line\nbreak"}"#);
        assert_eq!(repaired(r#"{"x": True, "y": None}"#), r#"{"x": true, "y": "None"}"#);
        assert_eq!(repaired("{like this}"), "{}");
        assert_eq!(repaired("{\"comment\": 1 // note\n}"), r#"{"comment": 1}"#);
        assert_eq!(repaired(r#"{"a": 1e400}"#), r#"{"a": Infinity}"#);
        assert!(repair_json(&"{\"a\": ".repeat(MAX_DEPTH + 1)).is_err(), "too deep fails instead of overflowing");
    }

    #[test]
    fn dumps_writes_what_python_writes() {
        let mut out = String::new();
        let v = Py::Dict(vec![
            ("a".into(), Py::List(vec![Py::Str("é".into()), Py::Str("😀".into()), Py::Str("\n\u{7f}".into())])),
            ("b".into(), Py::None),
            ("c".into(), Py::List([1.5, 1e16, 1e-5, 0.0001, 100.0, -2.5e-7].map(Py::Float).to_vec())),
            ("d".into(), Py::Int("-12345678901234567890123".into())),
        ]);
        dumps(&v, &mut out);
        assert_eq!(
            out,
            r#"{"a": ["\u00e9", "\ud83d\ude00", "\n\u007f"], "b": null, "c": [1.5, 1e+16, 1e-05, 0.0001, 100.0, -2.5e-07], "d": -12345678901234567890123}"#
        );
        assert_eq!(python_int("-007"), Some("-7".into()));
        assert_eq!(python_int("1/2"), None);
    }
}
