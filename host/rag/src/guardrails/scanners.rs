//! The output scanners KAITO's `rag-output-guardrails` policy names (its llm-guard 0.3.16 and own scanners), with
//! their matching and redaction rules. None needs a model: they are substrings, regular expressions (Python `re`
//! syntax, through fancy-regex: look-around and back-references work), Unicode categories and word counts.

use super::json;
use fancy_regex::Regex;
use std::sync::LazyLock;

/// What a redaction puts where a banned substring or a regex match was.
pub const REDACTED: &str = "[REDACTED]";

/// One configured scanner.
#[derive(Debug, Clone)]
pub enum Scanner {
    /// `ban_substrings`: substrings, as words or anywhere.
    BanSubstrings { terms: Vec<Banned>, word: bool, case_sensitive: bool, contains_all: bool },
    /// `regex`: the first pattern that matches decides.
    Regex { patterns: Vec<Pattern>, is_blocked: bool, mode: RegexMode },
    /// `secrets`: credentials by the shape their issuers give them.
    Secrets { mode: SecretsMode },
    /// `sensitive`: e-mail addresses, phone and card numbers, IPv4 addresses.
    Sensitive { detectors: Vec<Detector> },
    /// `invisible_text`: format, private-use and unassigned characters.
    InvisibleText,
    /// `reading_time`: at most `max_time` minutes at 200 words a minute.
    ReadingTime { max_time: f64, truncate: bool },
    /// `json`: every JSON object in the answer parses (after repair, when allowed), and at least `required` do.
    Json { required: usize, repair: bool },
    /// `token_limit`: fewer than `limit` tokens; an answer that reaches it is cut to its first `limit` tokens.
    TokenLimit { limit: usize, encoding: Encoding },
}

/// A tiktoken encoding (tiktoken-rs bundles OpenAI's; loaded once per process, on first use).
#[derive(Clone)]
pub struct Encoding {
    /// tiktoken's name for it.
    pub name: &'static str,
    bpe: &'static tiktoken_rs::CoreBPE,
}

impl std::fmt::Debug for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Encoding {
    /// tiktoken's encodings by name (`tiktoken.get_encoding`).
    const NAMED: [(&'static str, tiktoken_rs::tokenizer::Tokenizer); 7] = {
        use tiktoken_rs::tokenizer::Tokenizer as T;
        [
            ("gpt2", T::Gpt2),
            ("r50k_base", T::R50kBase),
            ("p50k_base", T::P50kBase),
            ("p50k_edit", T::P50kEdit),
            ("cl100k_base", T::Cl100kBase),
            ("o200k_base", T::O200kBase),
            ("o200k_harmony", T::O200kHarmony),
        ]
    };

    /// `tiktoken.get_encoding(name)`.
    pub fn named(name: &str) -> Result<Encoding, String> {
        let (name, tokenizer) = Self::NAMED.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            let known: Vec<&str> = Self::NAMED.iter().map(|(n, _)| *n).collect();
            format!("token_limit 'encoding_name' {name:?} is not a tiktoken encoding (one of {known:?})")
        })?;
        Self::load(name, *tokenizer)
    }

    /// `tiktoken.encoding_for_model(model)`: OpenAI's model names and prefixes.
    pub fn for_model(model: &str) -> Result<Encoding, String> {
        let tokenizer = tiktoken_rs::tokenizer::get_tokenizer(model)
            .ok_or_else(|| format!("token_limit 'model_name' {model:?} has no tiktoken encoding"))?;
        let name = Self::NAMED.iter().find(|(_, t)| *t == tokenizer).map(|(n, _)| *n).unwrap_or("gpt2");
        Self::load(name, tokenizer)
    }

    fn load(name: &'static str, tokenizer: tiktoken_rs::tokenizer::Tokenizer) -> Result<Encoding, String> {
        let bpe = tiktoken_rs::bpe_for_tokenizer(tokenizer).map_err(|e| format!("encoding {name}: {e}"))?;
        Ok(Encoding { name, bpe })
    }

    /// The tokens of `text`. Special-token text (`<|endoftext|>`) counts as ordinary text: tiktoken's `encode`
    /// raises on it, which would fail every such answer closed.
    pub fn encode(&self, text: &str) -> Vec<tiktoken_rs::Rank> {
        self.bpe.encode_ordinary(text)
    }

    /// The text of `tokens`, a split UTF-8 sequence replaced by U+FFFD (tiktoken's `errors="replace"`).
    pub fn decode(&self, tokens: &[tiktoken_rs::Rank]) -> String {
        let bytes = self.bpe.decode_bytes(tokens).expect("tokens this encoding produced decode");
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// A banned substring with its matchers, compiled once when the policy loads: the answer path only runs them.
#[derive(Debug, Clone)]
pub struct Banned {
    /// As the policy wrote it, lowercased when matching ignores case.
    pub text: String,
    /// Every occurrence, case folded as configured (redaction, and the stream's word matcher).
    anywhere: regex::Regex,
    /// As a whole word in the folded text (llm-guard's `\b..\b`).
    word: regex::Regex,
}

impl Banned {
    /// Compiles the matchers for `text`; a literal always compiles, so the error only guards the size limit.
    pub fn new(text: &str, case_sensitive: bool) -> Result<Banned, String> {
        let text = if case_sensitive { text.to_string() } else { text.to_lowercase() };
        let quoted = regex::escape(&text);
        let flags = if case_sensitive { "" } else { "(?i)" };
        let compile = |p: String| regex::Regex::new(&p).map_err(|e| format!("substring {text:?}: {e}"));
        Ok(Banned { anywhere: compile(format!("{flags}{quoted}"))?, word: compile(format!(r"\b{quoted}\b"))?, text })
    }

    /// The occurrences of this substring in `s` (case folded as configured).
    pub fn find_iter<'s>(&self, s: &'s str) -> impl Iterator<Item = regex::Match<'s>> {
        self.anywhere.find_iter(s)
    }
}

/// A regex pattern compiled for searching and for whole-text matching.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// As written in the policy.
    pub source: String,
    search: Regex,
    whole: Regex,
}

impl Pattern {
    /// Compiles `source` (Python `re` syntax); the error is the policy's to show.
    pub fn new(source: &str) -> Result<Pattern, String> {
        let search = Regex::new(source).map_err(|e| format!("pattern {source:?} does not compile: {e}"))?;
        let whole = Regex::new(&format!(r"\A(?:{source})\z")).map_err(|e| format!("pattern {source:?}: {e}"))?;
        Ok(Pattern { source: source.into(), search, whole })
    }
}

/// How a regex scanner matches (llm-guard's `match_type`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RegexMode {
    /// The first match.
    Search,
    /// The whole text.
    FullMatch,
    /// Every match.
    All,
}

/// What replaces a secret (`redact_mode`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SecretsMode {
    /// `******`.
    All,
    /// First and last two characters: `AK..EF`.
    Partial,
    /// The MD5 hex of the secret.
    Hash,
}

/// A `sensitive` detector, in the order the policy lists them (an earlier one wins an overlap).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Detector {
    /// `email` → `<EMAIL>`.
    Email,
    /// `phone` → `<PHONE>`.
    Phone,
    /// `credit_card` → `<CREDIT_CARD>`.
    CreditCard,
    /// `ip_address` → `<IP_ADDRESS>`.
    IpAddress,
}

impl Detector {
    /// The policy's name of each detector, in KAITO's default order.
    pub const ALL: [(&'static str, Detector); 4] = [
        ("email", Detector::Email),
        ("phone", Detector::Phone),
        ("credit_card", Detector::CreditCard),
        ("ip_address", Detector::IpAddress),
    ];

    fn placeholder(self) -> &'static str {
        match self {
            Detector::Email => "<EMAIL>",
            Detector::Phone => "<PHONE>",
            Detector::CreditCard => "<CREDIT_CARD>",
            Detector::IpAddress => "<IP_ADDRESS>",
        }
    }

    fn regex(self) -> &'static Regex {
        static EMAIL: LazyLock<Regex> =
            LazyLock::new(|| Regex::new(r"\b[a-zA-Z0-9._%+\-]+@[a-zA-Z0-9.\-]+\.[A-Za-z]{2,}\b").unwrap());
        static PHONE: LazyLock<Regex> =
            LazyLock::new(|| Regex::new(r"(?<!\w)(?:\+?\d[\d().\- ]{8,}\d)(?!\w)").unwrap());
        static CARD: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)").unwrap());
        static IP: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b(?:\d{1,3}\.){3}\d{1,3}\b").unwrap());
        match self {
            Detector::Email => &EMAIL,
            Detector::Phone => &PHONE,
            Detector::CreditCard => &CARD,
            Detector::IpAddress => &IP,
        }
    }

    /// Whether a regex match is one (digit counts, Luhn, octets as Python's `ipaddress` reads them).
    fn accepts(self, m: &str) -> bool {
        let digits: Vec<u32> = m.chars().filter_map(|c| c.to_digit(10)).collect();
        match self {
            Detector::Email => true,
            Detector::Phone => (10..=15).contains(&digits.len()) && m.contains([' ', '+', '-', '.', '(', ')']),
            Detector::CreditCard => (13..=19).contains(&digits.len()) && luhn(&digits),
            Detector::IpAddress => m.split('.').all(|o| {
                o.bytes().all(|b| b.is_ascii_digit())
                    && (o == "0" || !o.starts_with('0'))
                    && o.parse::<u16>().is_ok_and(|n| n <= 255)
            }),
        }
    }
}

fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d })
        .sum();
    sum.is_multiple_of(10)
}

/// A scanner's verdict: the text it would leave, and whether the input passed.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    /// The text after the scanner (redacted, stripped or truncated; unchanged when it passed).
    pub text: String,
    /// Whether nothing was found.
    pub valid: bool,
}

impl Scan {
    fn pass(text: &str) -> Scan {
        Scan { text: text.into(), valid: true }
    }
    fn hit(text: String) -> Scan {
        Scan { text, valid: false }
    }
}

/// A regex that ran out of backtracking budget: the caller fails closed.
#[derive(Debug, thiserror::Error)]
#[error("scanner {scanner}: {message}")]
pub struct ScanError {
    /// The scanner's type.
    pub scanner: &'static str,
    /// What went wrong.
    pub message: String,
}

impl Scanner {
    /// The policy's name for this scanner type.
    pub fn kind(&self) -> &'static str {
        match self {
            Scanner::BanSubstrings { .. } => "ban_substrings",
            Scanner::Regex { .. } => "regex",
            Scanner::Secrets { .. } => "secrets",
            Scanner::Sensitive { .. } => "sensitive",
            Scanner::InvisibleText => "invisible_text",
            Scanner::ReadingTime { .. } => "reading_time",
            Scanner::Json { .. } => "json",
            Scanner::TokenLimit { .. } => "token_limit",
        }
    }

    /// Scans a whole answer as llm-guard does (whitespace-only text always passes); `redact` is whether the
    /// scanner's action is redact (ban_substrings and regex redact only then; the others always rewrite).
    pub fn scan(&self, text: &str, redact: bool) -> Result<Scan, ScanError> {
        if text.trim().is_empty() {
            return Ok(Scan::pass(text));
        }
        let fail = |e: fancy_regex::Error| ScanError { scanner: self.kind(), message: e.to_string() };
        Ok(match self {
            Scanner::BanSubstrings { terms, word, case_sensitive, contains_all } => {
                let hay = if *case_sensitive { text.to_string() } else { text.to_lowercase() };
                let matched: Vec<&Banned> = terms
                    .iter()
                    .filter(|t| if *word { t.word.is_match(&hay) } else { hay.contains(&t.text) })
                    .collect();
                let hit = if *contains_all { matched.len() == terms.len() } else { !matched.is_empty() };
                if !hit {
                    return Ok(Scan::pass(text));
                }
                let mut out = text.to_string();
                if redact {
                    // llm-guard replaces every occurrence of each matched substring, without the word check.
                    for t in &matched {
                        out = t.anywhere.replace_all(&out, REDACTED).into_owned();
                    }
                }
                Scan::hit(out)
            }
            Scanner::Regex { patterns, is_blocked, mode } => {
                for p in patterns {
                    let spans: Vec<(usize, usize)> = match mode {
                        RegexMode::Search => {
                            p.search.find(text).map_err(fail)?.map(|m| (m.start(), m.end())).into_iter().collect()
                        }
                        RegexMode::FullMatch => {
                            p.whole.find(text).map_err(fail)?.map(|m| (m.start(), m.end())).into_iter().collect()
                        }
                        RegexMode::All => {
                            let mut v = Vec::new();
                            for m in p.search.find_iter(text) {
                                let m = m.map_err(fail)?;
                                v.push((m.start(), m.end()));
                            }
                            v
                        }
                    };
                    if spans.is_empty() {
                        continue;
                    }
                    if !is_blocked {
                        return Ok(Scan::pass(text));
                    }
                    return Ok(Scan::hit(if redact {
                        replace_spans(text, &spans, |_| REDACTED.into())
                    } else {
                        text.into()
                    }));
                }
                if *is_blocked { Scan::pass(text) } else { Scan::hit(text.into()) }
            }
            Scanner::Secrets { mode } => {
                let found = find_secrets(text);
                if found.is_empty() {
                    return Ok(Scan::pass(text));
                }
                let mut out = text.to_string();
                for s in &found {
                    out = out.replace(s.as_str(), &redact_secret(s, *mode));
                }
                Scan::hit(out)
            }
            Scanner::Sensitive { detectors } => {
                let mut spans: Vec<(usize, usize, Detector)> = Vec::new();
                for d in detectors {
                    for m in d.regex().find_iter(text) {
                        let m = m.map_err(fail)?;
                        if d.accepts(m.as_str()) {
                            spans.push((m.start(), m.end(), *d));
                        }
                    }
                }
                // Earlier start first, the longer of two at one start; an overlap with a kept span is dropped.
                spans.sort_by_key(|&(s, e, _)| (s, std::cmp::Reverse(e - s)));
                let mut kept: Vec<(usize, usize, Detector)> = Vec::new();
                for span in spans {
                    if kept.iter().all(|k| span.1 <= k.0 || span.0 >= k.1) {
                        kept.push(span);
                    }
                }
                if kept.is_empty() {
                    return Ok(Scan::pass(text));
                }
                let bounds: Vec<(usize, usize)> = kept.iter().map(|k| (k.0, k.1)).collect();
                let out = replace_spans(text, &bounds, |i| kept[i].2.placeholder().into());
                Scan::hit(if redact { out } else { text.into() })
            }
            Scanner::InvisibleText => {
                if text.is_ascii() {
                    return Ok(Scan::pass(text));
                }
                let out: String = text.chars().filter(|&c| !invisible(c)).collect();
                if out.len() == text.len() { Scan::pass(text) } else { Scan::hit(out) }
            }
            Scanner::ReadingTime { max_time, truncate } => {
                let words: Vec<&str> = text.split_whitespace().collect();
                if words.len() as f64 / 200.0 <= *max_time {
                    return Ok(Scan::pass(text));
                }
                let keep = (max_time * 200.0) as usize;
                Scan::hit(if *truncate { words[..keep.min(words.len())].join(" ") } else { text.into() })
            }
            Scanner::Json { required, repair } => {
                let mut out = text.to_string();
                let found = json::candidates(text);
                let mut valid = 0;
                for &(a, b) in &found {
                    let candidate = &text[a..b];
                    if json::is_valid(candidate) {
                        valid += 1;
                    } else if *repair {
                        let fixed = json::repair(candidate).map_err(|_| ScanError {
                            scanner: "json",
                            message: format!(
                                "a JSON object nests deeper than {} levels",
                                super::json_repair::MAX_DEPTH
                            ),
                        })?;
                        if json::is_valid(&fixed) {
                            valid += 1;
                            // llm-guard replaces every occurrence, in the text as repaired so far.
                            out = out.replace(candidate, &fixed);
                        }
                    }
                }
                Scan { text: out, valid: valid >= *required && valid == found.len() }
            }
            Scanner::TokenLimit { limit, encoding } => {
                let tokens = encoding.encode(text);
                if tokens.len() < *limit {
                    return Ok(Scan::pass(text));
                }
                Scan::hit(encoding.decode(&tokens[..*limit]))
            }
        })
    }
}

/// Unicode general categories Cf (format), Co (private use) and Cn (unassigned): what llm-guard strips.
pub fn invisible(c: char) -> bool {
    use unicode_general_category::{GeneralCategory as G, get_general_category};
    matches!(get_general_category(c), G::Format | G::PrivateUse | G::Unassigned)
}

/// `text` with each span (sorted, disjoint, byte offsets) replaced by `with(i)`.
fn replace_spans(text: &str, spans: &[(usize, usize)], with: impl Fn(usize) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (i, &(s, e)) in spans.iter().enumerate() {
        out.push_str(&text[at..s]);
        out.push_str(&with(i));
        at = e;
    }
    out.push_str(&text[at..]);
    out
}

/// Credential shapes, from the detect-secrets plugins llm-guard runs (a subset: no entropy plugins). The group
/// named `secret`, when present, is the part redacted.
static SECRET_SHAPES: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    [
        r"(?:A3T[A-Z0-9]|ABIA|ACCA|AKIA|ASIA)[0-9A-Z]{16}",
        r"(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9_]{36}",
        r"github_pat_[A-Za-z0-9_]{82}",
        r"AIza[0-9A-Za-z\-_]{35}",
        r"-----BEGIN[ A-Z]*PRIVATE KEY-----",
        r"xox(?:a|b|p|o|s|r)-(?:\d+-)+[a-z0-9]+",
        r"https://hooks\.slack\.com/services/T[a-zA-Z0-9_]+/B[a-zA-Z0-9_]+/[a-zA-Z0-9_]+",
        r"(?:r|s)k_live_[0-9a-zA-Z]{24}",
        r"sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}",
        r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{20,}",
        r"npm_[A-Za-z0-9]{36}",
        r"(?:AC|SK)[a-z0-9]{32}",
        r"[0-9a-z]{32}-us[0-9]{1,2}",
        r"AccountKey=(?<secret>[a-zA-Z0-9+/=]{88})",
        r"://[^{}\s]+:(?<secret>[^{}\s]+)@",
        r"[MNO][a-zA-Z\d_-]{23,25}\.[a-zA-Z\d_-]{6}\.[a-zA-Z\d_-]{27}",
        r"sq0csp-[0-9A-Za-z\\\-_]{43}",
        r"eyJ[A-Za-z0-9\-_=]+\.[A-Za-z0-9\-_=]+\.?[A-Za-z0-9\-_.+/=]*",
    ]
    .iter()
    .map(|p| Regex::new(p).expect("secret shape compiles"))
    .collect()
});

/// The distinct secrets in `text`, longest first (then by value), as detect-secrets reports them to llm-guard.
pub fn find_secrets(text: &str) -> Vec<String> {
    let mut found = std::collections::BTreeSet::new();
    for re in SECRET_SHAPES.iter() {
        for caps in re.captures_iter(text).flatten() {
            let m = caps.name("secret").or_else(|| caps.get(0)).expect("group 0");
            found.insert(m.as_str().to_string());
        }
    }
    let mut v: Vec<String> = found.into_iter().collect();
    v.sort_by(|a, b| b.chars().count().cmp(&a.chars().count()).then_with(|| a.cmp(b)));
    v
}

/// What replaces one secret.
pub fn redact_secret(secret: &str, mode: SecretsMode) -> String {
    match mode {
        SecretsMode::All => "******".into(),
        SecretsMode::Partial => {
            let c: Vec<char> = secret.chars().collect();
            let head: String = c.iter().take(2).collect();
            let tail: String = c[c.len().saturating_sub(2)..].iter().collect();
            format!("{head}..{tail}")
        }
        SecretsMode::Hash => {
            use md5::Digest;
            hex::encode(md5::Md5::digest(secret.as_bytes()))
        }
    }
}

/// The streaming word matcher (KAITO's): where `sub` occurs in `s` as a word, given the character before `s`
/// (`preceding`); a match touching the end is unconfirmed until `flush`, since the next chunk may extend the word.
pub fn word_spans(s: &str, sub: &Banned, preceding: Option<char>, flush: bool) -> Vec<(usize, usize)> {
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut spans = Vec::new();
    for m in sub.find_iter(s) {
        let (start, end) = (m.start(), m.end());
        let left = if start > 0 { s[..start].chars().next_back() } else { preceding };
        let first = s[start..].chars().next();
        if is_word(left) == is_word(first) {
            continue;
        }
        if end == s.len() && !flush {
            continue;
        }
        let right = s[end..].chars().next();
        let last = s[..end].chars().next_back();
        if is_word(last) == is_word(right) {
            continue;
        }
        spans.push((start, end));
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sensitive(d: &[Detector], text: &str) -> String {
        Scanner::Sensitive { detectors: d.to_vec() }.scan(text, true).unwrap().text
    }

    #[test]
    fn sensitive_matches_kaitos_cases() {
        use Detector::*;
        assert_eq!(
            sensitive(&[Email, IpAddress], "Email alice@example.com from 10.0.0.1 but keep 4111 1111 1111 1111"),
            "Email <EMAIL> from <IP_ADDRESS> but keep 4111 1111 1111 1111"
        );
        assert_eq!(
            sensitive(&[CreditCard], "good 4111 1111 1111 1111 bad 4111 1111 1111 1112"),
            "good <CREDIT_CARD> bad 4111 1111 1111 1112"
        );
        assert_eq!(
            sensitive(&[Email, Phone, IpAddress], "Email alice@example.com or call +1 (206) 555-0100 from 10.0.0.1"),
            "Email <EMAIL> or call <PHONE> from <IP_ADDRESS>"
        );
        let all = [Email, Phone, CreditCard, IpAddress];
        // As KAITO (verified by running its detector): twelve digits with dots read as a phone number first.
        assert_eq!(sensitive(&all, "192.168.100.200"), "<PHONE>");
        assert_eq!(sensitive(&all, "call 555-0100 10.0.0.1"), "call <PHONE>");
        for unchanged in
            ["alice at example dot com", "extension 42", "order 123456789012", "version 10.0.0", "ip 010.0.0.1"]
        {
            assert_eq!(sensitive(&all, unchanged), unchanged);
        }
    }

    #[test]
    fn secrets_redact_every_occurrence_in_each_mode() {
        let s = Scanner::Secrets { mode: SecretsMode::All };
        let keys = format!("Keys: {}", vec!["AKIA1234567890ABCDEF"; 20].join(", "));
        assert_eq!(s.scan(&keys, true).unwrap().text, format!("Keys: {}", vec!["******"; 20].join(", ")));
        let three =
            format!("Keys: AKIA1234567890ABCDEF, ghp_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ, AIza{}", "A".repeat(35));
        assert_eq!(s.scan(&three, true).unwrap().text, "Keys: ******, ******, ******");
        let partial = Scanner::Secrets { mode: SecretsMode::Partial };
        let out = partial.scan("Contact me at AKIA1234567890ABCDEF for access.", true).unwrap();
        assert_eq!((out.text.as_str(), out.valid), ("Contact me at AK..EF for access.", false));
        assert_eq!(redact_secret("AKIA1234567890ABCDEF", SecretsMode::Hash).len(), 32);
        assert!(s.scan("nothing secret here", true).unwrap().valid);
    }

    #[test]
    fn substrings_regex_invisible_and_reading_time() {
        let ban = |word: bool| Scanner::BanSubstrings {
            terms: vec![Banned::new("unsafe", false).unwrap()],
            word,
            case_sensitive: false,
            contains_all: false,
        };
        // llm-guard: detected as a word, then every occurrence redacted.
        assert_eq!(ban(true).scan("UNSAFE unsafeish", true).unwrap().text, "[REDACTED] [REDACTED]ish");
        assert!(ban(true).scan("unsafeish", true).unwrap().valid);
        assert_eq!(ban(false).scan("unsafeish", true).unwrap().text, "[REDACTED]ish");
        let re =
            |mode| Scanner::Regex { patterns: vec![Pattern::new(r"https?://\S+").unwrap()], is_blocked: true, mode };
        assert_eq!(re(RegexMode::Search).scan("http://a and http://b", true).unwrap().text, "[REDACTED] and http://b");
        assert_eq!(re(RegexMode::All).scan("http://a and http://b", true).unwrap().text, "[REDACTED] and [REDACTED]");
        assert!(re(RegexMode::FullMatch).scan("see http://a", true).unwrap().valid);
        assert_eq!(
            re(RegexMode::Search).scan("Visit http://evil.example now", true).unwrap().text,
            "Visit [REDACTED] now"
        );
        let allow =
            Scanner::Regex { patterns: vec![Pattern::new("ok").unwrap()], is_blocked: false, mode: RegexMode::Search };
        assert!(!allow.scan("nope", true).unwrap().valid);
        assert!(Pattern::new("[unclosed").is_err());
        assert_eq!(Scanner::InvisibleText.scan("hello\u{200b}world", true).unwrap().text, "helloworld");
        assert!(Scanner::InvisibleText.scan("héllo", true).unwrap().valid);
        let rt = Scanner::ReadingTime { max_time: 0.01, truncate: true };
        assert_eq!(rt.scan("one two three four five six", true).unwrap().text, "one two");
        let rt = Scanner::ReadingTime { max_time: 0.05, truncate: false };
        assert!(rt.scan("a b c d e f g h i j", true).unwrap().valid, "10/200 is not more than 0.05");
    }

    #[test]
    fn streaming_word_matcher_waits_for_the_next_character() {
        let term = |s: &str, case_sensitive: bool| Banned::new(s, case_sensitive).unwrap();
        let unsafe_ = term("unsafe", false);
        assert_eq!(word_spans("x unsafe", &unsafe_, None, false), []);
        assert_eq!(word_spans("x unsafe", &unsafe_, None, true), [(2, 8)]);
        assert_eq!(word_spans("x UNSAFEish", &unsafe_, None, true), []);
        assert_eq!(word_spans("x UnSafe", &unsafe_, None, true), [(2, 8)]);
        assert_eq!(word_spans("safe", &term("safe", false), Some('a'), true), [], "the word began in emitted text");
        assert_eq!(word_spans("UNSAFE unsafe", &term("unsafe", true), None, true), [(7, 13)]);
        assert_eq!(word_spans(" a.b ", &term(".", false), None, true), [(2, 3)]);
    }
}
