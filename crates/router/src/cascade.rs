//! Cascade mode: answer with the cheap model first and escalate to the strong model when a check on the
//! cheap answer fails. The checks are pure functions of the answer text, so the gateway can run them on
//! a finished response and [`evaluate`] can measure them offline on stored answers (GSM8K).

use crate::metrics::{MetricError, OperatingPoint, Outcome, operating_point};
use serde::Serialize;
use std::collections::BTreeMap;

/// Why a cheap answer is not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Escalation {
    Empty,
    Truncated,
    Refusal,
    InvalidJson,
    NoFinalAnswer,
    BadArithmetic,
    /// The answer passed every check, but the verifier ([`crate::verifier`]) rates it likely wrong.
    LikelyWrong,
}

impl Escalation {
    pub const ALL: [Escalation; 7] = [
        Escalation::Empty,
        Escalation::Truncated,
        Escalation::Refusal,
        Escalation::InvalidJson,
        Escalation::NoFinalAnswer,
        Escalation::BadArithmetic,
        Escalation::LikelyWrong,
    ];

    /// The snake_case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Escalation::Empty => "empty",
            Escalation::Truncated => "truncated",
            Escalation::Refusal => "refusal",
            Escalation::InvalidJson => "invalid_json",
            Escalation::NoFinalAnswer => "no_final_answer",
            Escalation::BadArithmetic => "bad_arithmetic",
            Escalation::LikelyWrong => "likely_wrong",
        }
    }
}

/// Which checks apply to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// The prompt is math-style: require a final numeric answer and verify `<<a*b=c>>` annotations.
    pub math: bool,
    /// The client asked for JSON output.
    pub json: bool,
    /// The upstream stopped because of the token limit (`finish_reason = "length"`).
    pub hit_length_limit: bool,
}

impl CheckOptions {
    /// A math-style prompt, no JSON mode, not cut by the token limit.
    pub const MATH: CheckOptions = CheckOptions {
        math: true,
        json: false,
        hit_length_limit: false,
    };
}

const REFUSALS: &[&str] = &[
    "i'm sorry",
    "i am sorry",
    "i cannot",
    "i can't",
    "i can not",
    "i am unable",
    "i'm unable",
    "as an ai",
    "i apologize",
    "i won't be able",
];

/// Checks a cheap-model answer; `None` means accept it.
pub fn check(answer: &str, opts: CheckOptions) -> Option<Escalation> {
    let t = answer.trim();
    if t.is_empty() {
        return Some(Escalation::Empty);
    }
    if opts.hit_length_limit || looks_truncated(t) {
        return Some(Escalation::Truncated);
    }
    if is_refusal(t) {
        return Some(Escalation::Refusal);
    }
    if opts.json && serde_json::from_str::<serde_json::Value>(strip_fence(t)).is_err() {
        return Some(Escalation::InvalidJson);
    }
    if opts.math {
        if final_number(t).is_none() {
            return Some(Escalation::NoFinalAnswer);
        }
        if has_bad_arithmetic(t) {
            return Some(Escalation::BadArithmetic);
        }
    }
    None
}

const LIKELY_WRONG: &str = "likely_wrong, risk ";

/// How a verifier escalation reads in a route reason: `likely_wrong, risk 0.77`.
pub fn likely_wrong_reason(risk: f32) -> String {
    debug_assert!(LIKELY_WRONG.starts_with(Escalation::LikelyWrong.as_str()));
    format!("{LIKELY_WRONG}{risk:.2}")
}

/// The verifier's risk in a route reason written by [`likely_wrong_reason`], if any.
pub fn risk_in_reason(reason: &str) -> Option<f32> {
    let rest = &reason[reason.find(LIKELY_WRONG)? + LIKELY_WRONG.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse::<f32>().ok().filter(|r| (0.0..=1.0).contains(r))
}

/// The answer opens like a refusal ("I'm sorry", "I cannot", "As an AI", ...).
pub fn is_refusal(t: &str) -> bool {
    let head: String = t.trim().chars().take(200).collect::<String>().to_lowercase();
    REFUSALS.iter().any(|r| head.contains(r))
}

fn strip_fence(t: &str) -> &str {
    let t = t.trim();
    if let Some(rest) = t.strip_prefix("```") {
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_alphabetic());
        return rest.trim_end().strip_suffix("```").unwrap_or(rest).trim();
    }
    t
}

/// Unbalanced calculator annotations or code fences, or an answer that stops on an operator.
///
/// `<<`/`>>` are counted outside code (closed fenced blocks and inline code spans), so a finished
/// C++ snippet such as `std::cout << x;` is not taken for a cut-off `<<a*b=c>>` annotation; prose
/// that ends on `<<` still is. A trailing `*` that closes an emphasis (`**42**`) and a trailing `/` that
/// ends a URL or a path are not operators.
pub fn looks_truncated(t: &str) -> bool {
    if t.matches("```").count() % 2 == 1 {
        return true;
    }
    let prose = outside_code(t);
    if prose.matches("<<").count() > prose.matches(">>").count() {
        return true;
    }
    match t.chars().last() {
        Some('*') => !closes_emphasis(t),
        Some('/') => !ends_with_url_or_path(t),
        Some('+' | '-' | '=' | '(' | ',' | '<' | '\\') => true,
        _ => false,
    }
}

/// `t` without its closed fenced code blocks and closed inline code spans (an unclosed one is kept).
fn outside_code(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    let mut rest = t;
    while let Some(open) = rest.find('`') {
        out.push_str(&rest[..open]);
        let after = &rest[open..];
        // A code span or fence opens with a run of backticks and closes with a run of the same length.
        let run = after.len() - after.trim_start_matches('`').len();
        let body = &after[run..];
        match find_backtick_run(body, run) {
            Some(close) => rest = &body[close + run..],
            None => {
                out.push_str(after);
                return out;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The offset of the first run of exactly `n` backticks in `s`.
fn find_backtick_run(s: &str, n: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'`' {
            let start = i;
            while i < b.len() && b[i] == b'`' {
                i += 1;
            }
            if i - start == n {
                return Some(start);
            }
        } else {
            i += 1;
        }
    }
    None
}

/// `t` ends with a run of `*` that closes an emphasis opened earlier (`**42**`, `*done*`): the run
/// follows a non-space character, and the same run occurs earlier at the start of a word.
fn closes_emphasis(t: &str) -> bool {
    let body = t.trim_end_matches('*');
    let run = &t[body.len()..];
    if run.len() > 3 || body.chars().last().is_none_or(char::is_whitespace) {
        return false;
    }
    let mut search = body;
    while let Some(p) = search.rfind(run) {
        let before = search[..p].chars().last();
        let after = search[p + run.len()..].chars().next();
        let opens = before.is_none_or(|c| !c.is_alphanumeric() && c != '*')
            && after.is_some_and(|c| !c.is_whitespace() && c != '*');
        if opens {
            return true;
        }
        search = &search[..p];
    }
    false
}

/// The last word of `t` (which ends with `/`) is a URL (`https://example.com/docs/`, `www.x.org/`) or
/// a path (`/usr/local/`, `./src/`, `~/bin/`), not a division cut short.
fn ends_with_url_or_path(t: &str) -> bool {
    let word = t
        .rsplit(char::is_whitespace)
        .next()
        .unwrap_or("")
        .trim_start_matches(['(', '[', '<', '"', '\'', '`']);
    let lower = word.to_ascii_lowercase();
    lower.contains("://")
        || lower.starts_with("www.")
        || (["/", "./", "../", "~/"].iter().any(|p| lower.starts_with(p))
            && lower.bytes().any(|b| b.is_ascii_alphabetic()))
}

fn parse_number(s: &str) -> Option<f64> {
    let s = s.trim().trim_start_matches('$');
    let (v, rest) = leading_number(s)?;
    // A plain fraction: `3/4` is 0.75, not 3; `7/0` is no number (as `\frac{7}{0}` is not), while a
    // unit after the slash (`$7/hour`) leaves the number as it is.
    match rest.strip_prefix('/').and_then(leading_number) {
        Some((0.0, _)) => None,
        Some((den, _)) => Some(v / den),
        None => Some(v),
    }
}

/// The number `s` starts with (digits, `.`, thousands commas, a sign) and the text after it.
fn leading_number(s: &str) -> Option<(f64, &str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | ',' | '-')))
        .unwrap_or(s.len());
    let cleaned: String = s[..end].chars().filter(|&c| c != ',').collect();
    let v = cleaned.trim_end_matches('.').parse::<f64>().ok()?;
    Some((v, &s[end..]))
}

/// The final numeric answer: after `####`, `answer is`, `answer:` or inside `\boxed{}` (whose
/// content may nest braces: `\boxed{\frac{3}{4}}` is 0.75).
pub fn final_number(t: &str) -> Option<f64> {
    // ASCII lowercasing keeps every byte offset, so a match in `lower` is one in `t`.
    let lower = t.to_ascii_lowercase();
    for marker in ["####", "answer is", "answer:", "\\boxed{"] {
        if let Some(pos) = lower.rfind(marker) {
            let rest = &t[pos + marker.len()..];
            let x = if marker == "\\boxed{" {
                // An unclosed box (a cut answer) reads as before: the number it starts with.
                latex_number(braced(rest).unwrap_or(rest), 0)
            } else {
                let rest = rest.trim_start_matches(|c: char| c.is_whitespace() || matches!(c, ':' | '$' | '*'));
                latex_number(rest, 0)
            };
            if x.is_some() {
                return x;
            }
        }
    }
    None
}

/// How deep `\boxed`/`\frac` may nest in a final answer (an answer is untrusted text).
const MAX_LATEX_DEPTH: usize = 4;

/// The text up to the brace that closes an opened `{` (`rest` starts just after it), braces nested.
fn braced(rest: &str) -> Option<&str> {
    let mut depth = 0usize;
    for (i, c) in rest.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(&rest[..i]),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// A number written in LaTeX: `\boxed{..}`, `\frac{a}{b}` / `\dfrac` / `\tfrac` (signed, each part
/// itself such a number, nested at most [`MAX_LATEX_DEPTH`] deep), or a plain number (`1,250`, `$18`,
/// `\$18`, `-3.5`, `18 \text{ dollars}`).
fn latex_number(s: &str, depth: usize) -> Option<f64> {
    let s = s.trim();
    let s = s.strip_prefix("\\$").unwrap_or(s).trim_start_matches('$').trim_start();
    let (sign, body) = match s.strip_prefix('-') {
        Some(b) => (-1.0, b.trim_start()),
        None => (1.0, s),
    };
    if body.starts_with('\\') && depth >= MAX_LATEX_DEPTH {
        return None;
    }
    if let Some(rest) = body.strip_prefix("\\boxed{") {
        return Some(sign * latex_number(braced(rest)?, depth + 1)?);
    }
    for frac in ["\\frac{", "\\dfrac{", "\\tfrac{"] {
        if let Some(rest) = body.strip_prefix(frac) {
            let num = braced(rest)?;
            let den_part = rest[num.len() + 1..].trim_start().strip_prefix('{')?;
            let den = latex_number(braced(den_part)?, depth + 1)?;
            let v = latex_number(num, depth + 1)? / den;
            return (den != 0.0 && v.is_finite()).then_some(sign * v);
        }
    }
    if body.starts_with('\\') {
        return None;
    }
    parse_number(s)
}

/// Evaluates `+ - * /` expressions with parentheses and decimals.
fn eval_expr(s: &str) -> Option<f64> {
    struct P<'a> {
        b: &'a [u8],
        i: usize,
    }
    impl P<'_> {
        fn ws(&mut self) {
            while self.i < self.b.len() && self.b[self.i] == b' ' {
                self.i += 1;
            }
        }
        fn expr(&mut self) -> Option<f64> {
            let mut v = self.term()?;
            loop {
                self.ws();
                match self.b.get(self.i) {
                    Some(b'+') => {
                        self.i += 1;
                        v += self.term()?;
                    }
                    Some(b'-') => {
                        self.i += 1;
                        v -= self.term()?;
                    }
                    _ => return Some(v),
                }
            }
        }
        fn term(&mut self) -> Option<f64> {
            let mut v = self.atom()?;
            loop {
                self.ws();
                match self.b.get(self.i) {
                    Some(b'*') => {
                        self.i += 1;
                        v *= self.atom()?;
                    }
                    Some(b'/') => {
                        self.i += 1;
                        let d = self.atom()?;
                        if d == 0.0 {
                            return None;
                        }
                        v /= d;
                    }
                    _ => return Some(v),
                }
            }
        }
        fn atom(&mut self) -> Option<f64> {
            self.ws();
            match self.b.get(self.i) {
                Some(b'(') => {
                    self.i += 1;
                    let v = self.expr()?;
                    self.ws();
                    (self.b.get(self.i) == Some(&b')')).then(|| {
                        self.i += 1;
                        v
                    })
                }
                Some(b'-') => {
                    self.i += 1;
                    Some(-self.atom()?)
                }
                _ => {
                    let start = self.i;
                    while self.i < self.b.len() && (self.b[self.i].is_ascii_digit() || self.b[self.i] == b'.') {
                        self.i += 1;
                    }
                    std::str::from_utf8(&self.b[start..self.i]).ok()?.parse().ok()
                }
            }
        }
    }
    let cleaned: String = s.chars().filter(|&c| c != ',' && c != '$').collect();
    let mut p = P {
        b: cleaned.as_bytes(),
        i: 0,
    };
    let v = p.expr()?;
    p.ws();
    (p.i == p.b.len() && v.is_finite()).then_some(v)
}

/// True when a `<<expr=value>>` annotation's arithmetic is wrong.
pub fn has_bad_arithmetic(t: &str) -> bool {
    let mut rest = t;
    while let Some(a) = rest.find("<<") {
        let after = &rest[a + 2..];
        let Some(b) = after.find(">>") else { break };
        let inner = &after[..b];
        if let Some((lhs, rhs)) = inner.rsplit_once('=')
            && let (Some(x), Some(y)) = (eval_expr(lhs), eval_expr(rhs).or_else(|| parse_number(rhs)))
            && (x - y).abs() > 1e-4 * x.abs().max(1.0)
        {
            return true;
        }
        rest = &after[b + 2..];
    }
    false
}

/// The cascade's offline operating point.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CascadeReport {
    /// Share of prompts escalated to the strong model (every prompt also costs one cheap call).
    pub strong_share: f64,
    pub quality: f64,
    pub pgr: f64,
    /// Escalations by reason.
    pub reasons: BTreeMap<String, usize>,
    /// Escalated prompts whose cheap answer was in fact right (wasted strong calls).
    pub escalated_but_weak_right: usize,
    /// Accepted cheap answers that were wrong (missed escalations).
    pub accepted_but_weak_wrong: usize,
    pub n: usize,
}

/// Runs the checks on stored cheap answers. Rows without an answer count as escalated (`Empty`).
pub fn evaluate(
    answers: &[Option<&str>],
    outcomes: &[Outcome],
    opts: CheckOptions,
) -> Result<CascadeReport, MetricError> {
    let verdicts: Vec<Option<Escalation>> = answers
        .iter()
        .map(|a| match a {
            Some(text) => check(text, opts),
            None => Some(Escalation::Empty),
        })
        .collect();
    let strong: Vec<bool> = verdicts.iter().map(Option::is_some).collect();
    let OperatingPoint {
        strong_share,
        quality,
        pgr,
    } = operating_point(&strong, outcomes)?;
    let mut reasons = BTreeMap::new();
    for v in verdicts.iter().flatten() {
        *reasons.entry(v.as_str().to_string()).or_insert(0) += 1;
    }
    let escalated_but_weak_right = strong
        .iter()
        .zip(outcomes)
        .filter(|(s, o)| **s && o.weak >= 0.5)
        .count();
    let accepted_but_weak_wrong = strong
        .iter()
        .zip(outcomes)
        .filter(|(s, o)| !**s && o.weak < 0.5)
        .count();
    Ok(CascadeReport {
        strong_share,
        quality,
        pgr,
        reasons,
        escalated_but_weak_right,
        accepted_but_weak_wrong,
        n: outcomes.len(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MATH: CheckOptions = CheckOptions::MATH;

    #[test]
    fn accepts_a_complete_checked_answer() {
        let a = "She has 3 * 20 = <<3*20=60>>60 cups.\n60 - 40 = <<60-40=20>>20\n#### 20";
        assert_eq!(check(a, MATH), None);
        assert_eq!(final_number(a), Some(20.0));
        assert_eq!(final_number("So the answer is $1,250."), Some(1250.0));
    }

    #[test]
    fn final_number_offsets_survive_non_ascii_text() {
        // Unicode lowercasing changes byte lengths: İ (2 bytes) becomes "i̇" (3), ẞ (3) becomes ß (2),
        // the Kelvin sign (3) becomes k (1); offsets found in the lowered text must still fit `t`.
        assert_eq!(final_number("İzmir and İstanbul: the answer is 15"), Some(15.0));
        assert_eq!(final_number("Straße, STRAẞE. The answer is 42"), Some(42.0));
        assert_eq!(final_number("It is 300 \u{212A}.\n#### 27"), Some(27.0));
        // Shifted into the middle of `€`: a panic (byte index is not a char boundary) before.
        assert_eq!(final_number("İİ answer: €40"), None);
        assert_eq!(check("İİ answer: €40 #### 40", MATH), None);
        // Markers are found case-insensitively, as before.
        assert_eq!(final_number("THE ANSWER IS 7"), Some(7.0));
        assert_eq!(final_number("\\BOXED{8}"), Some(8.0));
    }

    #[test]
    fn a_closing_bold_marker_is_not_a_cut() {
        assert!(!looks_truncated("So she pays **42**"));
        assert!(!looks_truncated("The total is *12*"));
        assert!(!looks_truncated("#### **18**"));
        assert_eq!(
            check("Each costs $3, so 4 cost 4 * 3 = 12.\nThe answer is **12**", MATH),
            None
        );
        // A trailing `*` that is a multiplication cut short still is one.
        assert!(looks_truncated("The total is 4 *"));
        assert!(looks_truncated("4*3*"));
        assert!(looks_truncated("2 **"));
        assert!(looks_truncated("**"));
    }

    #[test]
    fn a_url_or_path_ending_in_a_slash_is_not_a_cut() {
        assert!(!looks_truncated("The docs are at https://docs.rs/serde/"));
        assert!(!looks_truncated("See (https://example.com/a/b/"));
        assert!(!looks_truncated("Visit www.example.org/"));
        assert!(!looks_truncated("Install it under /usr/local/"));
        assert!(!looks_truncated("Run it from ~/bin/"));
        // A division cut short still is one.
        assert!(looks_truncated("Each gets 12 /"));
        assert!(looks_truncated("Each gets 12/"));
        assert!(looks_truncated("The share is x/"));
    }

    #[test]
    fn shift_operators_in_closed_code_are_not_open_annotations() {
        // `<<` in finished code is C++ output, not a `<<a*b=c>>` annotation cut short.
        let fenced = "Print it:\n```cpp\nstd::cout << total << std::endl;\n```";
        assert!(!looks_truncated(fenced));
        assert!(!looks_truncated("Use `std::cout << x` to print it."));
        assert!(!looks_truncated("```cpp\nstd::cout <<\n```"));
        assert_eq!(
            check("```cpp\nint total = 3 * 4;\nstd::cout << total;\n```\n#### 12", MATH),
            None
        );
        // Cut off while writing the code (the fence never closes) or the prose: still cut.
        assert!(looks_truncated("```cpp\nstd::cout << total;"));
        assert!(looks_truncated("Then print it with std::cout <<"));
        assert!(looks_truncated("Use `x` and then 15 + 25 = <<15+2"));
        // An annotation left open outside code, next to closed code, still counts.
        assert!(looks_truncated("`a >> b` then <<3*4=12 and so on"));
    }

    #[test]
    fn boxed_answers_may_nest_braces() {
        assert_eq!(final_number("So she keeps \\boxed{\\frac{3}{4}} of it."), Some(0.75));
        assert_eq!(final_number("$\\boxed{\\dfrac{1}{8}}$"), Some(0.125));
        assert_eq!(final_number("\\boxed{-\\frac{3}{4}}"), Some(-0.75));
        assert_eq!(final_number("The answer is \\frac{5}{2}"), Some(2.5));
        assert_eq!(
            final_number("The answer is $\\boxed{\\frac{ 1,000 }{ 4 }}$"),
            Some(250.0)
        );
        assert_eq!(final_number("\\boxed{\\frac{\\frac{1}{2}}{4}}"), Some(0.125));
        assert_eq!(final_number("\\boxed{18 \\text{ dollars}}"), Some(18.0));
        assert_eq!(final_number("\\boxed{\\$18}"), Some(18.0));
        // Plain fractions too: `3/4` read as 3 made a fraction look like a whole number.
        assert_eq!(final_number("#### 3/4"), Some(0.75));
        assert_eq!(final_number("The answer is \\boxed{3/4}"), Some(0.75));
        assert_eq!(final_number("The answer is 1,200/4."), Some(300.0));
        assert_eq!(final_number("The answer is 7/0"), None);
        assert_eq!(final_number("The answer is $7/hour."), Some(7.0));
        assert_eq!(final_number("\\boxed{42"), Some(42.0));
        assert_eq!(check("3 of 4 slices: \\boxed{\\frac{3}{4}}", MATH), None);
        assert_eq!(final_number("\\boxed{\\frac{3}{0}}"), None);
        assert_eq!(final_number("\\boxed{\\frac{3}}"), None);
        assert_eq!(final_number("\\boxed{\\sqrt{2}}"), None);
        // Nesting is bounded: 1/2/2/... fifty levels deep is not read.
        let deep = format!("\\boxed{{{}1{}}}", "\\frac{".repeat(50), "}{2}".repeat(50));
        assert_eq!(final_number(&deep), None);
        let shallow = format!("\\boxed{{{}1{}}}", "\\frac{".repeat(2), "}{2}".repeat(2));
        assert_eq!(final_number(&shallow), Some(0.25));
    }

    #[test]
    fn escalates_each_failure_kind() {
        assert_eq!(check("  ", MATH), Some(Escalation::Empty));
        assert_eq!(check("15 + 25 = <<15+2", MATH), Some(Escalation::Truncated));
        assert_eq!(check("The total is 15 +", MATH), Some(Escalation::Truncated));
        assert_eq!(
            check("I'm sorry, I can't help with that.", MATH),
            Some(Escalation::Refusal)
        );
        assert_eq!(check("The total is 40 cups.", MATH), Some(Escalation::NoFinalAnswer));
        assert_eq!(check("<<2*3=7>>7\n#### 7", MATH), Some(Escalation::BadArithmetic));
        let json = CheckOptions {
            math: false,
            json: true,
            hit_length_limit: false,
        };
        assert_eq!(check("{\"a\": 1", json), Some(Escalation::InvalidJson));
        assert_eq!(check("```json\n{\"a\": 1}\n```", json), None);
        let cut = CheckOptions {
            hit_length_limit: true,
            ..json
        };
        assert_eq!(check("{}", cut), Some(Escalation::Truncated));
    }

    #[test]
    fn escalation_names_are_their_serialized_names() {
        for e in Escalation::ALL {
            assert_eq!(serde_json::to_value(e).unwrap(), e.as_str());
        }
    }

    #[test]
    fn likely_wrong_reasons_round_trip() {
        let reason = format!(
            "cascade: the local answer failed its check ({}); escalated",
            likely_wrong_reason(0.768)
        );
        assert!(reason.contains("(likely_wrong, risk 0.77)"), "{reason}");
        assert_eq!(risk_in_reason(&reason), Some(0.77));
        assert_eq!(
            risk_in_reason("cascade: the local answer failed its check (no_final_answer); escalated"),
            None
        );
        assert_eq!(risk_in_reason("likely_wrong, risk 7"), None);
    }

    #[test]
    fn arithmetic_evaluator() {
        assert_eq!(eval_expr("2*(3+4)/7 - 1"), Some(1.0));
        assert_eq!(eval_expr("1,000/4"), Some(250.0));
        assert_eq!(eval_expr("2*x"), None);
        assert_eq!(eval_expr("1/0"), None);
        assert!(!has_bad_arithmetic("<<80/120=2/3>>"));
        assert!(!has_bad_arithmetic("<<0.5*30=15>>"));
        assert!(has_bad_arithmetic("<<0.5*30=16>>"));
    }

    #[test]
    fn offline_operating_point() {
        let outcomes = vec![
            Outcome { strong: 1.0, weak: 1.0 },
            Outcome { strong: 1.0, weak: 0.0 },
            Outcome { strong: 1.0, weak: 0.0 },
            Outcome { strong: 0.0, weak: 0.0 },
        ];
        let answers = [Some("#### 5"), Some("#### 6"), Some("no answer"), None];
        let r = evaluate(&answers, &outcomes, MATH).unwrap();
        assert_eq!(r.strong_share, 0.5);
        // quality: 1 + 0 + 1 + 0 over 4; q_weak .25, q_strong .75
        assert_eq!(r.quality, 0.5);
        assert_eq!(r.pgr, 0.5);
        assert_eq!(r.reasons.get("no_final_answer"), Some(&1));
        assert_eq!(r.reasons.get("empty"), Some(&1));
        assert_eq!(r.accepted_but_weak_wrong, 1);
        assert_eq!(r.escalated_but_weak_right, 0);
    }
}
