//! Cheap text features shared by the heuristic and the learned scorer: counts and signals computed in one
//! pass over the text, and hashed word / character n-grams.

use crate::conversation::{Conversation, Role};
use serde::{Deserialize, Serialize};

/// Version of the feature definitions ([`TextStats`], [`dense_features`], [`hashed_ngrams`]). Features
/// logged by the gateway carry it; training refuses logged features of another version. Bump it with
/// any change that alters the features computed for the same text.
pub const FEATURE_VERSION: u32 = 3;

/// Longest text (in chars) that n-gram hashing looks at; longer texts keep their head and tail halves.
pub const MAX_NGRAM_CHARS: usize = 12_000;
/// Longest head of a text (in bytes) that [`LexicalStats`] reads.
pub const MAX_LEXICAL_BYTES: usize = 12_000;

const REASONING_MARKERS: &[&str] = &[
    "step by step",
    "step-by-step",
    "explain",
    "why ",
    "prove",
    "proof",
    "derive",
    "justify",
    "reason",
    "analy",
    "compare",
    "evaluate",
    "calculate",
    "how many",
    "how much",
    "what is the probability",
    "implications",
    "trade-off",
    "tradeoff",
];

const ESSAY_MARKERS: &[&str] = &[
    "essay",
    "write a",
    "compose",
    "draft",
    "story",
    "poem",
    "blog post",
    "article",
    "detailed",
    "in depth",
    "in-depth",
    "comprehensive",
    "critique",
    "elaborate",
];

const CODE_MARKERS: &[&str] = &[
    "```",
    "def ",
    "fn ",
    "function",
    "class ",
    "return ",
    "import ",
    "#include",
    "public ",
    "println",
    "printf",
    "console.",
    "select ",
    "=>",
    "->",
    "python",
    "javascript",
    "rust",
    "c++",
    "sql",
    "regex",
    "algorithm",
    "code",
];

const MATH_MARKERS: &[&str] = &[
    "\\frac",
    "\\sqrt",
    "sqrt",
    "integral",
    "derivative",
    "equation",
    "solve",
    "theorem",
    "matrix",
    "polynomial",
    "probability",
    "percent",
    "%",
    "^",
    "\\",
    "sum of",
    "product of",
    "log",
];

/// Counts and signals about one text, computed in a few linear passes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TextStats {
    pub chars: usize,
    pub words: usize,
    pub lines: usize,
    pub digits: usize,
    pub numbers: usize,
    pub longest_number: usize,
    pub uppercase: usize,
    pub non_ascii: usize,
    pub question_marks: usize,
    pub math_symbols: usize,
    pub math_markers: usize,
    pub code_markers: usize,
    pub code_symbols: usize,
    pub reasoning_markers: usize,
    pub essay_markers: usize,
    /// Lines that look like multiple-choice options ("A. ...", "B) ...").
    pub options: usize,
    /// Characters in option lines, and option lines that are mostly digits.
    pub option_chars: usize,
    pub numeric_options: usize,
    pub sentences: usize,
    /// Negation / exception words ("not", "except", "false", "least", ...).
    pub negations: usize,
    /// Quantity words of word problems ("each", "per", "twice", "remaining", ...).
    pub quantity_words: usize,
}

const NEGATIONS: &[&str] = &[
    " not ",
    "n't ",
    " except",
    " false",
    " least",
    " incorrect",
    " never",
    " neither",
];
const QUANTITY_WORDS: &[&str] = &[
    " each ",
    " per ",
    " every ",
    " twice",
    " half",
    " times ",
    " remaining",
    " total",
    " rest ",
    " more than",
    " less than",
    " fewer",
    " percent",
    " average",
    " ratio",
];

/// Counts of several marker lists in one pass over the text.
///
/// Exactly `markers.iter().map(|m| text.matches(m).count()).sum()` for each list (non-overlapping
/// occurrences of each marker, counted left to right), but with one Aho-Corasick scan (a DFA) for all
/// lists instead of one substring search per marker: the per-marker counts keep `str::matches`
/// semantics by accepting an occurrence only when it starts at or after the end of that marker's
/// previous one.
///
/// The scan runs over the lowercased text padded with one space on each side. The "padded" lists
/// (whole-word markers such as `" not "`) count every occurrence there; the "plain" lists count only
/// occurrences that do not touch the padding, which are exactly their occurrences in the unpadded text.
struct MarkerSet {
    ac: aho_corasick::AhoCorasick,
    /// Pattern index -> list index.
    list_of: Vec<usize>,
    lists: usize,
    /// Lists from this index on are plain (see above).
    plain_from: usize,
}

impl MarkerSet {
    fn new(padded: &[&[&str]], plain: &[&[&str]]) -> Option<MarkerSet> {
        let mut patterns = Vec::new();
        let mut list_of = Vec::new();
        for (i, list) in padded.iter().chain(plain).enumerate() {
            for m in *list {
                patterns.push(*m);
                list_of.push(i);
            }
        }
        let ac = aho_corasick::AhoCorasick::builder()
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .build(&patterns)
            .ok()?;
        Some(MarkerSet {
            ac,
            list_of,
            lists: padded.len() + plain.len(),
            plain_from: padded.len(),
        })
    }

    /// Counts per list in `padded` (the lowercased text with one space on each side).
    fn count(&self, padded: &str) -> Vec<usize> {
        let mut counts = vec![0; self.lists];
        let mut last_end = vec![0usize; self.list_of.len()];
        let len = padded.len();
        for m in self.ac.find_overlapping_iter(padded) {
            let p = m.pattern().as_usize();
            let list = self.list_of[p];
            if list >= self.plain_from && (m.start() == 0 || m.end() == len) {
                continue;
            }
            if m.start() >= last_end[p] {
                last_end[p] = m.end();
                counts[list] += 1;
            }
        }
        counts
    }
}

/// Padded lists: negations, quantity words; plain lists: math, code, reasoning, essay.
fn marker_set() -> Option<&'static MarkerSet> {
    static SET: std::sync::OnceLock<Option<MarkerSet>> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        MarkerSet::new(
            &[NEGATIONS, QUANTITY_WORDS],
            &[MATH_MARKERS, CODE_MARKERS, REASONING_MARKERS, ESSAY_MARKERS],
        )
    })
    .as_ref()
}

fn count_markers(lower: &str, markers: &[&str]) -> usize {
    markers.iter().map(|m| lower.matches(m).count()).sum()
}

// Character classes for [`TextStats::of`]: a table for ASCII, Unicode properties beyond.
const DIGIT: u8 = 1;
const UPPER: u8 = 2;
const ALNUM: u8 = 4;
const ALPHA: u8 = 8;
const MATH: u8 = 16;
const CODE: u8 = 32;
const SENTENCE_END: u8 = 64;

const fn ascii_class(b: u8) -> u8 {
    let mut class = 0;
    if b.is_ascii_digit() {
        class |= DIGIT;
    }
    if b.is_ascii_uppercase() {
        class |= UPPER;
    }
    if b.is_ascii_alphanumeric() {
        class |= ALNUM;
    }
    if b.is_ascii_alphabetic() {
        class |= ALPHA;
    }
    if matches!(b, b'=' | b'+' | b'*' | b'/' | b'<' | b'>' | b'^') {
        class |= MATH;
    }
    if matches!(
        b,
        b'{' | b'}' | b';' | b'[' | b']' | b'(' | b')' | b'_' | b'|' | b'&' | b'$'
    ) {
        class |= CODE;
    }
    if matches!(b, b'.' | b'?' | b'!') {
        class |= SENTENCE_END;
    }
    class
}

const ASCII_CLASS: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        t[i] = ascii_class(i as u8);
        i += 1;
    }
    t
};

fn class_of(c: char) -> u8 {
    // (digits are ASCII digits only, and the code symbols are all ASCII)
    let mut class = 0;
    if c.is_uppercase() {
        class |= UPPER;
    }
    if c.is_alphanumeric() {
        class |= ALNUM;
    }
    if c.is_alphabetic() {
        class |= ALPHA;
    }
    if matches!(c, '√' | '∑' | '∫' | '≤' | '≥' | '±' | '×' | '÷') {
        class |= MATH;
    }
    class
}

impl TextStats {
    pub fn of(text: &str) -> TextStats {
        let mut s = TextStats::default();
        let mut in_word = false;
        let mut num_len = 0usize;
        let mut line_start = true;
        let mut line_prefix: [char; 2] = [' ', ' '];
        let mut line_pos = 0usize;
        // Alphabetic characters since the last `.`, `?` or `!` (a sentence needs more than three).
        let mut sentence_alpha = 0usize;
        // The lowercased text between two spaces, built in the same pass (the marker scans need both
        // the padded and the plain form; `lower` below is a slice of this). ASCII text, the common
        // case, is lowercased in bulk.
        let ascii = text.is_ascii();
        let mut padded = String::with_capacity(text.len() + 2);
        padded.push(' ');
        if ascii {
            padded.push_str(text);
            padded.make_ascii_lowercase();
        }
        for c in text.chars() {
            let class = if c.is_ascii() {
                ASCII_CLASS[c as usize]
            } else {
                padded.extend(c.to_lowercase());
                s.non_ascii += 1;
                class_of(c)
            };
            if !ascii && c.is_ascii() {
                padded.push(c.to_ascii_lowercase());
            }
            if class & SENTENCE_END != 0 {
                if sentence_alpha > 3 {
                    s.sentences += 1;
                }
                sentence_alpha = 0;
            } else if class & ALPHA != 0 {
                sentence_alpha += 1;
            }
            s.chars += 1;
            if class & UPPER != 0 {
                s.uppercase += 1;
            }
            if class & DIGIT != 0 {
                s.digits += 1;
                num_len += 1;
            } else if num_len > 0 && !(c == '.' || c == ',') {
                s.numbers += 1;
                s.longest_number = s.longest_number.max(num_len);
                num_len = 0;
            }
            if class & ALNUM != 0 {
                if !in_word {
                    s.words += 1;
                    in_word = true;
                }
            } else {
                in_word = false;
            }
            if c == '?' {
                s.question_marks += 1;
            } else if class & MATH != 0 {
                s.math_symbols += 1;
            } else if class & CODE != 0 {
                s.code_symbols += 1;
            }
            if c == '\n' {
                s.lines += 1;
                line_start = true;
                line_pos = 0;
                continue;
            }
            if line_start && line_pos < 2 {
                line_prefix[line_pos] = c;
                line_pos += 1;
                if line_pos == 2 {
                    if line_prefix[0].is_ascii_uppercase() && matches!(line_prefix[1], '.' | ')' | ':') {
                        s.options += 1;
                    }
                    line_start = false;
                }
            }
        }
        if num_len > 0 {
            s.numbers += 1;
            s.longest_number = s.longest_number.max(num_len);
        }
        if s.chars > 0 {
            s.lines += 1;
        }
        for line in text.lines() {
            let mut it = line.chars();
            if let (Some(a), Some(b)) = (it.next(), it.next())
                && a.is_ascii_uppercase()
                && matches!(b, '.' | ')' | ':')
            {
                let body = line[2..].trim();
                s.option_chars += body.chars().count();
                let digits = body.chars().filter(|c| c.is_ascii_digit()).count();
                if digits * 2 >= body.chars().filter(|c| !c.is_whitespace()).count().max(1) {
                    s.numeric_options += 1;
                }
            }
        }
        if sentence_alpha > 3 {
            s.sentences += 1;
        }
        padded.push(' ');
        let lower = &padded[1..padded.len() - 1];
        if let Some(set) = marker_set() {
            let c = set.count(&padded);
            (s.negations, s.quantity_words) = (c[0], c[1]);
            (s.math_markers, s.code_markers, s.reasoning_markers, s.essay_markers) = (c[2], c[3], c[4], c[5]);
        } else {
            s.negations = count_markers(&padded, NEGATIONS);
            s.quantity_words = count_markers(&padded, QUANTITY_WORDS);
            s.math_markers = count_markers(lower, MATH_MARKERS);
            s.code_markers = count_markers(lower, CODE_MARKERS);
            s.reasoning_markers = count_markers(lower, REASONING_MARKERS);
            s.essay_markers = count_markers(lower, ESSAY_MARKERS);
        }
        s
    }

    /// A token-ish count without a tokenizer: English BPE averages about 4 characters or 0.75 words a
    /// token; take the larger estimate so digit- and symbol-heavy text is not undercounted.
    pub fn approx_tokens(&self) -> usize {
        let by_chars = self.chars.div_ceil(4);
        let by_words = (self.words * 4).div_ceil(3);
        by_chars.max(by_words)
    }
}

/// Names of the dense features, in the order [`dense_features`] returns them.
pub const DENSE_NAMES: &[&str] = &[
    "ln_last_user_chars",
    "ln_last_user_words",
    "ln_context_chars",
    "ln_user_turns",
    "ln_assistant_turns",
    "has_system",
    "ln_numbers",
    "digit_fraction",
    "ln_longest_number",
    "ln_math_symbols",
    "ln_math_markers",
    "ln_code_markers",
    "code_symbol_fraction",
    "ln_reasoning_markers",
    "ln_essay_markers",
    "ln_question_marks",
    "ln_lines",
    "ln_options",
    "ln_max_tokens",
    "has_max_tokens",
    "mean_word_len",
    "uppercase_fraction",
    "non_ascii_fraction",
    "ln_option_chars_mean",
    "numeric_option_fraction",
    "ln_sentences",
    "ln_negations",
    "ln_quantity_words",
    // numeric structure of word problems (see `NumericStats`)
    "ln_distinct_numbers",
    "ln_fractions",
    "ln_percents",
    "ln_decimals",
    "ln_money",
    "ln_big_numbers",
    "ln_number_words",
    "ln_clauses",
    "ln_questions",
    "ln_time_words",
    "ln_unit_words",
    "ln_step_words",
    "ln_quantities",
    "ln_max_number",
    // wording of the question (see `LexicalStats`)
    "has_not_except",
    "word_variety",
    "ln_long_words",
    "has_statement_pair",
    "has_which_of_the_following",
    "has_blank",
    "ln_commas",
];

/// How many leading [`DENSE_NAMES`] are the general count/signal features; the rest are
/// [`NumericStats`] (trained with their own L2 multiplier).
pub const GENERAL_DENSE: usize = 28;
/// End of the [`NumericStats`] features in [`DENSE_NAMES`]; the [`LexicalStats`] features follow.
pub const NUMERIC_END: usize = 42;

fn ln1(x: usize) -> f32 {
    (x as f32).ln_1p()
}

fn flag(b: bool) -> f32 {
    if b { 1.0 } else { 0.0 }
}

fn frac(a: usize, b: usize) -> f32 {
    if b == 0 { 0.0 } else { a as f32 / b as f32 }
}

/// Dense (unscaled) features of a conversation; `stats` are the last user turn's.
pub fn dense_features(conv: &Conversation, stats: &TextStats) -> Vec<f32> {
    let ctx = conv.context_chars();
    let letters = stats.chars.saturating_sub(stats.digits);
    let mut v = vec![
        ln1(stats.chars),
        ln1(stats.words),
        ln1(ctx),
        ln1(conv.count_role(Role::User)),
        ln1(conv.count_role(Role::Assistant)),
        flag(conv.count_role(Role::System) > 0),
        ln1(stats.numbers),
        frac(stats.digits, stats.chars),
        ln1(stats.longest_number),
        ln1(stats.math_symbols),
        ln1(stats.math_markers),
        ln1(stats.code_markers),
        frac(stats.code_symbols, stats.chars),
        ln1(stats.reasoning_markers),
        ln1(stats.essay_markers),
        ln1(stats.question_marks),
        ln1(stats.lines),
        ln1(stats.options),
        conv.max_tokens.map(|m| ln1(m as usize)).unwrap_or(0.0),
        flag(conv.max_tokens.is_some()),
        frac(letters, stats.words.max(1)).min(20.0),
        frac(stats.uppercase, stats.chars),
        frac(stats.non_ascii, stats.chars),
        (frac(stats.option_chars, stats.options.max(1))).ln_1p(),
        frac(stats.numeric_options, stats.options),
        ln1(stats.sentences),
        ln1(stats.negations),
        ln1(stats.quantity_words),
    ];
    let n = NumericStats::of(conv.last_user());
    v.extend_from_slice(&[
        ln1(n.distinct_numbers),
        ln1(n.fractions),
        ln1(n.percents),
        ln1(n.decimals),
        ln1(n.money),
        ln1(n.big_numbers),
        ln1(n.number_words),
        ln1(n.clauses),
        ln1(n.questions),
        ln1(n.time_words),
        ln1(n.unit_words),
        ln1(n.step_words),
        ln1(n.distinct_numbers + n.number_words),
        n.max_number.ln_1p() as f32,
    ]);
    let l = LexicalStats::of(conv.last_user());
    v.extend_from_slice(&[
        flag(l.not_except),
        l.word_variety,
        ln1(l.long_words),
        flag(l.statement_pair),
        flag(l.which_of_the_following),
        flag(l.blank),
        ln1(l.commas),
    ]);
    v
}

/// How a question is worded: signals of trick questions and dense text that the boosted trees use.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LexicalStats {
    /// An upper-case `NOT`, `EXCEPT` or `LEAST` word ("Which of these is NOT ...").
    pub not_except: bool,
    /// `ln(1 + 10 * distinct / total)` over ASCII-whitespace-separated words, ASCII case folded (0 for no
    /// words). Texts longer than [`MAX_LEXICAL_BYTES`] are read up to there.
    pub word_variety: f32,
    /// Words longer than 10 bytes.
    pub long_words: usize,
    /// A "Statement 1 | ... Statement 2 | ..." pair.
    pub statement_pair: bool,
    pub which_of_the_following: bool,
    /// A `_` (fill in the blank).
    pub blank: bool,
    pub commas: usize,
}

impl LexicalStats {
    pub fn of(text: &str) -> LexicalStats {
        // a bound on the work for very long prompts: their wording is read from the head
        let mut end = text.len().min(MAX_LEXICAL_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let head = &text[..end];
        // words as case-folded 64-bit hashes: counting distinct ones needs no lower-cased copy
        let mut words: Vec<u64> = Vec::with_capacity(head.len() / 4 + 1);
        let mut long_words = 0;
        for w in head.split_ascii_whitespace() {
            long_words += usize::from(w.len() > 10);
            words.push(w.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x0100_0000_01b3)
            }));
        }
        let total = words.len();
        words.sort_unstable();
        words.dedup();
        LexicalStats {
            not_except: ["NOT", "EXCEPT", "LEAST"].iter().any(|w| has_word(head, w)),
            word_variety: if total == 0 {
                0.0
            } else {
                (10.0 * words.len() as f32 / total as f32).ln_1p()
            },
            long_words,
            statement_pair: head.contains("Statement 1"),
            which_of_the_following: head
                .as_bytes()
                .windows(WHICH.len())
                .any(|w| w.eq_ignore_ascii_case(WHICH)),
            blank: head.contains('_'),
            commas: head.bytes().filter(|&b| b == b',').count(),
        }
    }
}

const WHICH: &[u8] = b"which of the following";

/// `word` in `text` with no letter or digit right before or after it.
fn has_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

const NUMBER_WORDS: &[&str] = &[
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "fifteen",
    "twenty", "thirty", "forty", "fifty", "hundred", "thousand", "million", "dozen", "half", "third", "quarter",
    "twice", "triple", "double",
];
/// Matched with or without a plural `s`.
const TIME_WORDS: &[&str] = &["hour", "minute", "second", "day", "week", "month", "year"];
const UNIT_WORDS: &[&str] = &[
    "mile", "km", "meter", "feet", "foot", "inch", "pound", "kg", "gram", "liter", "gallon", "cup", "cent", "dollar",
];
/// Words that chain the steps of a word problem.
const STEP_WORDS: &[&str] = &[
    "if",
    "then",
    "after",
    "before",
    "remaining",
    "left",
    "rest",
    "instead",
    "until",
    "each",
    "per",
    "every",
];

/// Numeric structure of a text (quantities of a word problem), for the learned scorer only.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NumericStats {
    /// Numbers (digit runs, with `.`/`,` between digits) with distinct values.
    pub distinct_numbers: usize,
    /// `a/b` with digits on both sides.
    pub fractions: usize,
    /// `%` signs and the word "percent".
    pub percents: usize,
    /// Numbers with a decimal point.
    pub decimals: usize,
    /// `$` signs.
    pub money: usize,
    /// Numbers >= 100.
    pub big_numbers: usize,
    pub number_words: usize,
    /// Sentence-like pieces: `.`, `?` or `!` followed by whitespace, plus one.
    pub clauses: usize,
    /// Pieces ending in `?`.
    pub questions: usize,
    pub time_words: usize,
    pub unit_words: usize,
    pub step_words: usize,
    /// Largest number value (0 without numbers).
    pub max_number: f64,
}

impl NumericStats {
    pub fn of(text: &str) -> NumericStats {
        let mut s = NumericStats::default();
        let b = text.as_bytes();
        let mut values: Vec<f64> = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if c.is_ascii_digit() {
                let start = i;
                let mut has_dot = false;
                while i < b.len() {
                    if b[i].is_ascii_digit() {
                        i += 1;
                    } else if matches!(b[i], b'.' | b',') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                        has_dot |= b[i] == b'.';
                        i += 1;
                    } else {
                        break;
                    }
                }
                let v = parse_number(&b[start..i]);
                values.push(v);
                s.decimals += usize::from(has_dot);
                s.big_numbers += usize::from(v >= 100.0);
                if b.get(i) == Some(&b'/') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    s.fractions += 1;
                    // the denominator is a number of its own, as in a plain scan
                }
                continue;
            }
            match c {
                b'%' => s.percents += 1,
                b'$' => s.money += 1,
                b'.' | b'?' | b'!' => {
                    if b.get(i + 1).is_some_and(u8::is_ascii_whitespace) {
                        s.clauses += 1;
                        s.questions += usize::from(c == b'?');
                    } else if i + 1 == b.len() {
                        s.questions += usize::from(c == b'?');
                    }
                }
                _ => {}
            }
            i += 1;
        }
        if !text.trim().is_empty() {
            s.clauses += 1;
        }
        values.sort_by(f64::total_cmp);
        values.dedup();
        s.distinct_numbers = values.len();
        s.max_number = values.last().copied().unwrap_or(0.0).max(0.0);
        let mut buf = [0u8; 12];
        for word in text.split(|c: char| !c.is_alphanumeric() && c != '_') {
            if word.len() < 2 || word.len() > buf.len() || !word.is_ascii() {
                continue;
            }
            let w = &mut buf[..word.len()];
            w.copy_from_slice(word.as_bytes());
            w.make_ascii_lowercase();
            let w = &*w;
            let stem = w.strip_suffix(b"s").unwrap_or(w);
            let is = |list: &[&str], x: &[u8]| list.iter().any(|m| m.as_bytes() == x);
            s.percents += usize::from(w == b"percent");
            s.number_words += usize::from(is(NUMBER_WORDS, w));
            s.time_words += usize::from(is(TIME_WORDS, w) || is(TIME_WORDS, stem));
            s.unit_words += usize::from(is(UNIT_WORDS, w) || is(UNIT_WORDS, stem));
            s.step_words += usize::from(is(STEP_WORDS, w));
        }
        s
    }
}

/// The value of a number literal (digits with `.`/`,` between them): commas dropped, then parsed as
/// `f64`; 0 when that fails (e.g. two decimal points).
fn parse_number(lit: &[u8]) -> f64 {
    let mut buf = [0u8; 40];
    let mut n = 0;
    for &c in lit.iter().filter(|&&c| c != b',') {
        if n == buf.len() {
            let s: String = lit.iter().filter(|&&c| c != b',').map(|&c| c as char).collect();
            return s.parse().unwrap_or(0.0);
        }
        buf[n] = c;
        n += 1;
    }
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0)
}

/// Which n-grams are hashed, and into how many buckets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HashConfig {
    /// log2 of the number of hash buckets.
    pub bits: u32,
    /// Character n-gram lengths, inclusive (0 disables).
    pub char_min: usize,
    pub char_max: usize,
    /// Word n-grams up to this length (0 disables, 1 = unigrams, 2 = uni+bigrams).
    pub word_max: usize,
    /// Weight of the word family relative to the char family after per-family L2 normalisation.
    pub word_weight: f32,
    pub char_weight: f32,
}

impl Default for HashConfig {
    fn default() -> Self {
        HashConfig {
            bits: 16,
            char_min: 3,
            char_max: 5,
            word_max: 2,
            word_weight: 1.0,
            char_weight: 1.0,
        }
    }
}

#[inline]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[inline]
fn fnv_step(h: u64, c: u32) -> u64 {
    (h ^ c as u64).wrapping_mul(0x0000_0100_0000_01b3)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Normalises text for n-grams: lowercase, digits folded to '0', whitespace runs collapsed to one space,
/// padded with a space on both ends. Long texts keep their head and tail.
fn normalise(text: &str) -> Vec<char> {
    let mut out = Vec::with_capacity(text.len().min(MAX_NGRAM_CHARS) + 2);
    out.push(' ');
    let total = text.chars().count();
    let half = MAX_NGRAM_CHARS / 2;
    let mut prev_space = true;
    for (i, c) in text.chars().enumerate() {
        if total > MAX_NGRAM_CHARS && i >= half && i < total - half {
            continue;
        }
        if c.is_whitespace() {
            if !prev_space {
                out.push(' ');
                prev_space = true;
            }
            continue;
        }
        prev_space = false;
        if c.is_ascii_digit() {
            out.push('0');
        } else if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else {
            out.extend(c.to_lowercase());
        }
    }
    if !prev_space {
        out.push(' ');
    }
    out
}

/// A sparse feature vector: (bucket, value), buckets sorted and unique.
pub type Sparse = Vec<(u32, f32)>;

/// Collapses hashed (bucket, sign) hits into a sorted sparse vector with sublinear counts, L2-normalised
/// and scaled by `weight`.
fn finish(mut hits: Vec<(u32, i8)>, weight: f32, out: &mut Sparse) {
    if hits.is_empty() || weight == 0.0 {
        return;
    }
    sort_by_bucket(&mut hits);
    let start = out.len();
    let mut i = 0;
    while i < hits.len() {
        let b = hits[i].0;
        let mut v = 0i32;
        while i < hits.len() && hits[i].0 == b {
            v += hits[i].1 as i32;
            i += 1;
        }
        if v != 0 {
            let m = ln_1p_count(v.unsigned_abs());
            out.push((b, if v > 0 { m } else { -m }));
        }
    }
    let norm = out[start..].iter().map(|(_, v)| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        let k = weight / norm;
        for e in &mut out[start..] {
            e.1 *= k;
        }
    }
}

/// `ln(1 + n)` as f32, from a table for the small counts that almost every bucket has (the same value
/// `f32::ln_1p` gives: the table is filled by it).
fn ln_1p_count(n: u32) -> f32 {
    const SMALL: usize = 64;
    static TABLE: std::sync::OnceLock<[f32; SMALL]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| std::array::from_fn(|i| (i as f32).ln_1p()));
    match t.get(n as usize) {
        Some(&v) => v,
        None => (n as f32).ln_1p(),
    }
}

/// Sorts hits by bucket: an LSD radix sort, one pass per byte of the bucket that any hit uses. The
/// order among equal buckets does not matter (their signs are summed).
fn sort_by_bucket(hits: &mut Vec<(u32, i8)>) {
    if hits.len() < 64 {
        hits.sort_unstable_by_key(|h| h.0);
        return;
    }
    let max = hits.iter().map(|h| h.0).max().unwrap_or(0);
    let mut tmp = vec![(0u32, 0i8); hits.len()];
    let mut shift = 0;
    while shift < 32 && (max >> shift) > 0 {
        let mut counts = [0usize; 257];
        for h in hits.iter() {
            counts[((h.0 >> shift) & 0xff) as usize + 1] += 1;
        }
        for i in 1..257 {
            counts[i] += counts[i - 1];
        }
        for &h in hits.iter() {
            let d = ((h.0 >> shift) & 0xff) as usize;
            tmp[counts[d]] = h;
            counts[d] += 1;
        }
        std::mem::swap(hits, &mut tmp);
        shift += 8;
    }
}

/// Hashed word and char n-grams of `text` (signed feature hashing), as a sorted sparse vector.
/// Word and char families use disjoint hash seeds and may share buckets.
pub fn hashed_ngrams(text: &str, cfg: &HashConfig) -> Sparse {
    let mask = (1u64 << cfg.bits) - 1;
    let chars = normalise(text);
    let mut out: Sparse = Vec::new();
    let bucket = |h: u64| -> (u32, i8) {
        let z = mix64(h);
        ((z & mask) as u32, if z >> 63 == 0 { 1 } else { -1 })
    };

    if cfg.word_max > 0 {
        let mut words: Vec<u64> = Vec::new();
        let mut h = FNV_OFFSET;
        let mut in_word = false;
        for &c in &chars {
            if c.is_alphanumeric() {
                h = fnv_step(h, c as u32);
                in_word = true;
            } else {
                if in_word {
                    words.push(h);
                    h = FNV_OFFSET;
                    in_word = false;
                }
                if !c.is_whitespace() {
                    // punctuation is its own token
                    words.push(fnv_step(FNV_OFFSET ^ 0x55, c as u32));
                }
            }
        }
        let mut hits = Vec::with_capacity(words.len() * cfg.word_max);
        for i in 0..words.len() {
            let mut g = 0x9e37_79b9_7f4a_7c15u64;
            for n in 0..cfg.word_max {
                if i + n >= words.len() {
                    break;
                }
                g = mix64(g ^ words[i + n]).wrapping_add(n as u64 + 1);
                hits.push(bucket(g ^ 0x1111));
            }
        }
        finish(hits, cfg.word_weight, &mut out);
    }

    if cfg.char_max >= cfg.char_min && cfg.char_min > 0 {
        let span = cfg.char_max - cfg.char_min + 1;
        let mut hits = Vec::with_capacity(chars.len() * span);
        for i in 0..chars.len() {
            let mut h = FNV_OFFSET;
            for (n, &c) in chars[i..].iter().take(cfg.char_max).enumerate() {
                h = fnv_step(h, c as u32);
                if n + 1 >= cfg.char_min {
                    hits.push(bucket(h ^ 0x2222 ^ ((n as u64) << 56)));
                }
            }
        }
        let mut char_part = Vec::new();
        finish(hits, cfg.char_weight, &mut char_part);
        out = merge(out, char_part);
    } else {
        out.sort_unstable_by_key(|e| e.0);
    }
    out
}

/// Merges two sorted sparse vectors, adding values in shared buckets.
fn merge(a: Sparse, b: Sparse) -> Sparse {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if j >= b.len() || (i < a.len() && a[i].0 < b[j].0) {
            out.push(a[i]);
            i += 1;
        } else if i >= a.len() || b[j].0 < a[i].0 {
            out.push(b[j]);
            j += 1;
        } else {
            out.push((a[i].0, a[i].1 + b[j].1));
            i += 1;
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radix_sort_and_log_table_match_the_std_versions() {
        let mut state = 0x1234_5678_9abc_def0u64;
        for &(n, bits) in &[
            (10usize, 16u32),
            (100, 16),
            (5000, 16),
            (3000, 20),
            (2000, 32),
            (500, 8),
        ] {
            let mut hits: Vec<(u32, i8)> = (0..n)
                .map(|i| {
                    state = mix64(state);
                    let b = if bits == 32 {
                        state as u32
                    } else {
                        (state as u32) & ((1u32 << bits) - 1)
                    };
                    (b, if i % 3 == 0 { -1 } else { 1 })
                })
                .collect();
            let mut want: Vec<u32> = hits.iter().map(|h| h.0).collect();
            want.sort_unstable();
            sort_by_bucket(&mut hits);
            assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), want, "n={n} bits={bits}");
        }
        for k in 0..300u32 {
            assert_eq!(ln_1p_count(k).to_bits(), (k as f32).ln_1p().to_bits(), "{k}");
        }
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn one_pass_marker_counts_equal_per_marker_search() {
        let texts = [
            "step by step, step by step: prove that 2+2=4 and explain why; write code () {}",
            "aaaa not never none cannot isn't how many total per each twice",
            "Essay: discuss, compare and contrast the causes; in conclusion, therefore, thus...",
            "",
            "ünïcödé ☃ mixed text with def fn class import return and \\frac{1}{2}",
        ];
        // Markers at the very start and end (where the padding is), repeated and overlapping ones.
        let mut texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        for list in [
            NEGATIONS,
            QUANTITY_WORDS,
            MATH_MARKERS,
            CODE_MARKERS,
            REASONING_MARKERS,
            ESSAY_MARKERS,
        ] {
            for m in list {
                texts.push(m.to_string());
                texts.push(format!("{m}{m}x{m}"));
                texts.push(m.trim().to_string());
                texts.push(format!("{} and {}", m.trim(), m.trim()));
            }
        }
        let set = marker_set().unwrap();
        for t in &texts {
            let lower = t.to_lowercase();
            let padded = format!(" {lower} ");
            assert_eq!(
                set.count(&padded),
                [
                    count_markers(&padded, NEGATIONS),
                    count_markers(&padded, QUANTITY_WORDS),
                    count_markers(&lower, MATH_MARKERS),
                    count_markers(&lower, CODE_MARKERS),
                    count_markers(&lower, REASONING_MARKERS),
                    count_markers(&lower, ESSAY_MARKERS)
                ],
                "{t:?}"
            );
            // TextStats builds its lowercase text itself, in the same pass.
            let st = TextStats::of(t);
            assert_eq!(
                (st.negations, st.quantity_words, st.math_markers, st.code_markers),
                (
                    count_markers(&padded, NEGATIONS),
                    count_markers(&padded, QUANTITY_WORDS),
                    count_markers(&lower, MATH_MARKERS),
                    count_markers(&lower, CODE_MARKERS)
                ),
                "{t:?}"
            );
            let sentences = t
                .split(['.', '?', '!'])
                .filter(|p| p.chars().filter(|c| c.is_alphabetic()).count() > 3)
                .count();
            assert_eq!(st.sentences, sentences, "{t:?}");
        }
    }

    #[test]
    fn stats_count_numbers_options_and_markers() {
        let s = TextStats::of("What is 12 + 345?\nA. 1\nB. 2\nExplain step by step.");
        assert_eq!(s.numbers, 4);
        assert_eq!(s.longest_number, 3);
        assert_eq!(s.options, 2);
        assert_eq!(s.lines, 4);
        assert!(s.reasoning_markers >= 2);
        assert_eq!(s.question_marks, 1);
    }

    #[test]
    fn numeric_stats_count_quantities() {
        let n = NumericStats::of(
            "Tom buys 3 apples at $1.50 each and 12 pears. He eats half. What is 25% of 1,200? Twice 3 is 6/1.",
        );
        // 3, 1.50, 12, 25, 1200, 3, 6, 1 -> distinct {1, 1.5, 3, 6, 12, 25, 1200}
        assert_eq!(n.distinct_numbers, 7);
        assert_eq!(n.decimals, 1);
        assert_eq!(n.money, 1);
        assert_eq!(n.percents, 1);
        assert_eq!(n.fractions, 1);
        assert_eq!(n.big_numbers, 1);
        assert_eq!(n.max_number, 1200.0);
        assert_eq!(n.number_words, 2);
        assert_eq!(n.step_words, 1);
        assert_eq!(n.questions, 1);
        assert_eq!(n.clauses, 4);
        assert_eq!(NumericStats::of(""), NumericStats::default());
        let conv = Conversation::from_prompt("What is 2 + 2?");
        assert_eq!(
            dense_features(&conv, &TextStats::of("What is 2 + 2?")).len(),
            DENSE_NAMES.len()
        );
    }

    #[test]
    fn lexical_stats_read_the_wording() {
        let l = LexicalStats::of(
            "Which of the following is NOT true, according to the author? Statement 1 | ___ is characteristically large, and so on",
        );
        assert!(l.not_except && l.statement_pair && l.which_of_the_following && l.blank);
        assert_eq!(l.commas, 2);
        assert_eq!(l.long_words, 1, "characteristically");
        let words = 21.0f32;
        let distinct = 19.0f32; // "the" and "is" twice
        assert!((l.word_variety - (10.0 * distinct / words).ln_1p()).abs() < 1e-6);
        // lower-case "not" and "least" in a word are not the trick-question marker
        let plain = LexicalStats::of("It is not the least bit LEASTWISE notable");
        assert!(!plain.not_except && !plain.which_of_the_following);
        assert_eq!(LexicalStats::of(""), LexicalStats::default());
        // the same text twice has half the variety ratio
        let once = LexicalStats::of("alpha beta gamma");
        let twice = LexicalStats::of("alpha beta gamma alpha beta gamma");
        assert!((once.word_variety - 10f32.ln_1p()).abs() < 1e-6);
        assert!((twice.word_variety - 5f32.ln_1p()).abs() < 1e-6);
    }

    #[test]
    fn hashed_vectors_are_sorted_unique_and_normalised() {
        let cfg = HashConfig::default();
        let v = hashed_ngrams("The quick brown fox jumps over the lazy dog. The dog sleeps.", &cfg);
        assert!(!v.is_empty());
        assert!(v.windows(2).all(|w| w[0].0 < w[1].0));
        let norm2: f32 = v.iter().map(|e| e.1 * e.1).sum();
        // two families, each of unit norm, overlapping only by chance
        assert!(norm2 > 1.5 && norm2 < 2.5, "{norm2}");
        assert_eq!(
            v,
            hashed_ngrams("the QUICK brown   fox jumps over the lazy dog. The dog sleeps.", &cfg)
        );
        assert!(hashed_ngrams("", &cfg).iter().all(|e| e.1.is_finite()));
    }
}
