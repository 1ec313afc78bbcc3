//! A BERT uncased tokenizer, the one `bert-base-uncased` and `all-MiniLM-L6-v2` use, written to
//! give the same ids as Hugging Face's `BertTokenizer(do_lower_case=True)`:
//!
//! 1. Basic tokenization ([`basic_tokenize`]): drop NUL, U+FFFD and "other" characters (C*), turn
//!    whitespace into spaces, put spaces around CJK ideographs, lowercase, strip accents
//!    (NFD, then drop non-spacing marks), split on whitespace and punctuation.
//! 2. WordPiece ([`Tokenizer::wordpiece`]): greedy longest-match-first against the vocabulary,
//!    `##` marking continuations; a word longer than 100 characters, or one that cannot be
//!    split, becomes `[UNK]`.
//! 3. [`Tokenizer::encode`] wraps the pieces in `[CLS]` ... `[SEP]` and truncates.
//!
//! It is a crate of its own so its tests run on the host target, and so a build script can
//! turn `vocab.txt` into a sorted `static` table ([`sorted_table`]) and a `static` hash index
//! over it ([`hash_index`]).

use std::borrow::Cow;
use std::fmt;

use unicode_general_category::{get_general_category, GeneralCategory};
use unicode_normalization::UnicodeNormalization;

/// Words longer than this (in characters) become `[UNK]`, as in BERT.
pub const MAX_WORD_CHARS: usize = 100;

/// A vocabulary and the ids of its special tokens.
///
/// The vocabulary is a table of (token, id) sorted by token, looked up by binary search, or
/// through a hash index over it when one is given ([`Tokenizer::with_index`]). Both can be
/// borrowed from `static`s generated at build time ([`Tokenizer::from_sorted`], no work at run
/// time, which matters when every request gets a fresh instance); the table can also be built
/// from the text of a `vocab.txt` ([`Tokenizer::from_vocab`]).
pub struct Tokenizer<'v> {
    /// (token, id) sorted by token, tokens unique.
    table: Cow<'v, [(&'v str, u32)]>,
    /// Made by [`hash_index`] from `table`, if given.
    index: Option<&'v [u32]>,
    unk: u32,
    cls: u32,
    sep: u32,
    pad: u32,
}

/// Why a vocabulary was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VocabError(String);

impl fmt::Display for VocabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid vocabulary: {}", self.0)
    }
}

impl std::error::Error for VocabError {}

/// The (token, id) table of a `vocab.txt` (one token per line, the line number from 0 is its
/// id), sorted by token; a repeated token keeps its first id, as in Hugging Face's loader.
/// Build scripts use it to generate the table [`Tokenizer::from_sorted`] takes.
pub fn sorted_table(text: &str) -> Vec<(&str, u32)> {
    let mut table: Vec<(&str, u32)> = text.lines().zip(0u32..).collect();
    // Stable: among equal tokens the first line stays first, and dedup keeps it.
    table.sort_by(|a, b| a.0.cmp(b.0));
    table.dedup_by(|later, first| later.0 == first.0);
    table
}

/// An open-addressing hash index over a table made by [`sorted_table`], for
/// [`Tokenizer::with_index`]: a power-of-two number of slots (at least twice the tokens), each
/// 0 (empty) or 1 + the position of a token in the table, found from the token's FNV-1a hash by
/// linear probing. A lookup then costs one hash and about one string comparison instead of the
/// binary search's fifteen (30,522 tokens). Build scripts generate it as a `static`.
pub fn hash_index(table: &[(&str, u32)]) -> Vec<u32> {
    let slots = (table.len() * 2).next_power_of_two().max(2);
    let mut index = vec![0u32; slots];
    for (at, (token, _)) in table.iter().enumerate() {
        let mut slot = slot_of(token, slots);
        while index[slot] != 0 {
            slot = (slot + 1) & (slots - 1);
        }
        index[slot] = u32::try_from(at + 1).expect("fewer than 2^32 tokens");
    }
    index
}

/// The first slot to probe for `token` among `slots` (a power of two): 64-bit FNV-1a, the same
/// on the build host and in wasm32.
fn slot_of(token: &str, slots: usize) -> usize {
    let hash = token.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash & (slots as u64 - 1)) as usize
}

impl<'v> Tokenizer<'v> {
    /// Parses a `vocab.txt`: one token per line, the line number (from 0) is its id. It must
    /// hold `[UNK]`, `[CLS]`, `[SEP]` and `[PAD]`.
    pub fn from_vocab(text: &'v str) -> Result<Self, VocabError> {
        Self::new(Cow::Owned(sorted_table(text)))
    }

    /// Uses a table made by [`sorted_table`] (typically generated into a `static` by a build
    /// script). It must hold `[UNK]`, `[CLS]`, `[SEP]` and `[PAD]`. It must be sorted by token
    /// with no repeats (lookups are binary searches); that is checked in debug builds only, so
    /// a release build does no work proportional to the vocabulary.
    pub fn from_sorted(table: &'v [(&'v str, u32)]) -> Result<Self, VocabError> {
        debug_assert!(
            table.windows(2).all(|w| w[0].0 < w[1].0),
            "the table is not sorted by token"
        );
        Self::new(Cow::Borrowed(table))
    }

    fn new(table: Cow<'v, [(&'v str, u32)]>) -> Result<Self, VocabError> {
        let special = |name: &str| {
            lookup(&table, name).ok_or_else(|| VocabError(format!("{name} is missing")))
        };
        Ok(Self {
            unk: special("[UNK]")?,
            cls: special("[CLS]")?,
            sep: special("[SEP]")?,
            pad: special("[PAD]")?,
            table,
            index: None,
        })
    }

    /// Looks tokens up through `index`, which [`hash_index`] made from this tokenizer's table
    /// (typically a `static` generated next to the table). An index of the wrong shape (not a
    /// power-of-two length, or too small to hold the table) is refused; one made from another
    /// table gives wrong ids, which debug builds check.
    pub fn with_index(mut self, index: &'v [u32]) -> Result<Self, VocabError> {
        if !index.len().is_power_of_two() || index.len() <= self.table.len() {
            return Err(VocabError(format!(
                "a hash index of {} slots does not fit a table of {} tokens",
                index.len(),
                self.table.len()
            )));
        }
        debug_assert!(
            index == hash_index(&self.table).as_slice(),
            "the index was not made from this table"
        );
        self.index = Some(index);
        Ok(self)
    }

    /// The id of `token`, if it is in the vocabulary.
    pub fn id(&self, token: &str) -> Option<u32> {
        let Some(index) = self.index else {
            return lookup(&self.table, token);
        };
        let mut slot = slot_of(token, index.len());
        loop {
            let at = *index.get(slot)? as usize;
            let (candidate, id) = self.table.get(at.checked_sub(1)?)?;
            if *candidate == token {
                return Some(*id);
            }
            slot = (slot + 1) & (index.len() - 1);
        }
    }

    /// The id of `[PAD]`.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The id of `[UNK]`.
    pub fn unk_id(&self) -> u32 {
        self.unk
    }

    /// The number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.table.len()
    }

    /// `[CLS]` + the word pieces of `text` + `[SEP]`, at most `max_len` ids (at least 2):
    /// the pieces are truncated to `max_len - 2`.
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<u32> {
        let budget = max_len.max(2) - 2;
        let mut ids = vec![self.cls];
        for word in basic_tokenize(text) {
            if ids.len() > budget {
                break;
            }
            self.wordpiece(&word, &mut ids);
        }
        ids.truncate(budget + 1);
        ids.push(self.sep);
        ids
    }

    /// Appends the WordPiece ids of one basic token to `out`.
    pub fn wordpiece(&self, word: &str, out: &mut Vec<u32>) {
        let chars: Vec<char> = word.chars().collect();
        if chars.len() > MAX_WORD_CHARS {
            out.push(self.unk);
            return;
        }
        let mark = out.len();
        let mut start = 0;
        let mut piece = String::with_capacity(word.len() + 2);
        while start < chars.len() {
            let mut end = chars.len();
            let mut found = None;
            while start < end {
                piece.clear();
                if start > 0 {
                    piece.push_str("##");
                }
                piece.extend(&chars[start..end]);
                if let Some(id) = self.id(&piece) {
                    found = Some(id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => {
                    out.push(id);
                    start = end;
                }
                None => {
                    out.truncate(mark);
                    out.push(self.unk);
                    return;
                }
            }
        }
    }
}

fn lookup(table: &[(&str, u32)], token: &str) -> Option<u32> {
    table
        .binary_search_by(|(t, _)| (*t).cmp(token))
        .ok()
        .map(|i| table[i].1)
}

/// BERT's BasicTokenizer with lowercasing and accent stripping: the words and punctuation
/// marks of `text`, ready for WordPiece.
pub fn basic_tokenize(text: &str) -> Vec<String> {
    // Clean: drop NUL, U+FFFD and control characters, turn whitespace into spaces, and put
    // spaces around CJK ideographs so each becomes a token.
    let mut cleaned = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{FFFD}' || is_control(c) {
            continue;
        }
        if is_whitespace(c) {
            cleaned.push(' ');
        } else if is_cjk(c) {
            cleaned.push(' ');
            cleaned.push(c);
            cleaned.push(' ');
        } else {
            cleaned.push(c);
        }
    }

    let mut tokens = Vec::new();
    for word in cleaned.split(' ').filter(|w| !w.is_empty()) {
        let lowered = word.to_lowercase();
        let mut current = String::new();
        for c in lowered.nfd() {
            if get_general_category(c) == GeneralCategory::NonspacingMark {
                continue;
            }
            if is_punctuation(c) {
                if !current.is_empty() {
                    tokens.push(std::mem::take(&mut current));
                }
                tokens.push(c.to_string());
            } else if is_whitespace(c) {
                // Lowercasing or decomposition can, in theory, produce whitespace.
                if !current.is_empty() {
                    tokens.push(std::mem::take(&mut current));
                }
            } else {
                current.push(c);
            }
        }
        if !current.is_empty() {
            tokens.push(current);
        }
    }
    tokens
}

fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
        || get_general_category(c) == GeneralCategory::SpaceSeparator
}

fn is_control(c: char) -> bool {
    if matches!(c, '\t' | '\n' | '\r') {
        return false;
    }
    // Every "other" category, as Hugging Face's tokenizers do: Cc, Cf, Cs, Co, Cn.
    matches!(
        get_general_category(c),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::Surrogate
            | GeneralCategory::PrivateUse
            | GeneralCategory::Unassigned
    )
}

fn is_punctuation(c: char) -> bool {
    let cp = c as u32;
    // BERT treats all non-letter/number ASCII as punctuation ($, ^, `, ...), even if Unicode
    // does not.
    if (33..=47).contains(&cp)
        || (58..=64).contains(&cp)
        || (91..=96).contains(&cp)
        || (123..=126).contains(&cp)
    {
        return true;
    }
    use GeneralCategory::*;
    matches!(
        get_general_category(c),
        ConnectorPunctuation
            | DashPunctuation
            | OpenPunctuation
            | ClosePunctuation
            | InitialPunctuation
            | FinalPunctuation
            | OtherPunctuation
    )
}

/// The CJK Unified Ideographs blocks, as BERT defines them (not Hangul, Hiragana or Katakana).
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VOCAB: &str = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n,\nworld\n!\nun\n##aff\n##able\n\
                         cafe\n中\n国\ntoken\n##izer\n##s\n.\n";

    fn tokenizer() -> Tokenizer<'static> {
        Tokenizer::from_vocab(VOCAB).expect("test vocabulary is valid")
    }

    #[test]
    fn basic_splits_lowercases_and_strips_accents() {
        assert_eq!(
            basic_tokenize("Hello, World!"),
            ["hello", ",", "world", "!"]
        );
        assert_eq!(basic_tokenize("  Café\tnaïve\n"), ["cafe", "naive"]);
        assert_eq!(basic_tokenize("中国abc"), ["中", "国", "abc"]);
        assert_eq!(
            basic_tokenize("a$b^c`d"),
            ["a", "$", "b", "^", "c", "`", "d"]
        );
        assert_eq!(
            basic_tokenize("zero\u{200B}width\u{0}x\u{FFFD}\u{E000}\u{AD}y"),
            ["zerowidthxy"]
        );
        assert_eq!(basic_tokenize("non\u{00A0}breaking"), ["non", "breaking"]);
        assert!(basic_tokenize(" \t\r\n").is_empty());
    }

    #[test]
    fn wordpiece_is_greedy_longest_match_first() {
        let t = tokenizer();
        assert_eq!(t.encode("unaffable", 16), [2, 8, 9, 10, 3]);
        assert_eq!(t.encode("Tokenizers.", 16), [2, 14, 15, 16, 17, 3]);
    }

    #[test]
    fn unknown_and_overlong_words_are_unk() {
        let t = tokenizer();
        assert_eq!(t.encode("unxyz hello", 16), [2, 1, 4, 3]);
        let long = "a".repeat(101);
        assert_eq!(t.encode(&long, 16), [2, 1, 3]);
    }

    #[test]
    fn encode_truncates_to_max_len() {
        let t = tokenizer();
        assert_eq!(t.encode("hello world hello world", 4), [2, 4, 6, 3]);
        assert_eq!(t.encode("unaffable", 4), [2, 8, 9, 3]);
        assert_eq!(t.encode("", 4), [2, 3]);
        assert_eq!(t.encode("hello", 0), [2, 3]);
    }

    #[test]
    fn sorted_tables_keep_the_first_id_and_must_be_sorted() {
        let table = sorted_table("[PAD]\n[UNK]\n[CLS]\n[SEP]\nb\na\nb\n");
        assert_eq!(
            table,
            [
                ("[CLS]", 2),
                ("[PAD]", 0),
                ("[SEP]", 3),
                ("[UNK]", 1),
                ("a", 5),
                ("b", 4)
            ]
        );
        let t = Tokenizer::from_sorted(&table).expect("valid table");
        assert_eq!((t.id("b"), t.id("c")), (Some(4), None));
    }

    #[test]
    fn a_hash_index_finds_the_same_ids_as_the_binary_search() {
        let table = sorted_table(VOCAB);
        let index = hash_index(&table);
        assert!(index.len().is_power_of_two() && index.len() >= 2 * table.len());
        let plain = Tokenizer::from_sorted(&table).expect("valid table");
        let hashed = Tokenizer::from_sorted(&table)
            .and_then(|t| t.with_index(&index))
            .expect("the index fits");
        for (token, id) in &table {
            assert_eq!(hashed.id(token), Some(*id), "{token}");
        }
        for absent in ["", "hell", "##", "worlds", "中国"] {
            assert_eq!(
                (plain.id(absent), hashed.id(absent)),
                (None, None),
                "{absent}"
            );
        }
        let text = "Hello, world! Unaffable tokenizers.";
        assert_eq!(hashed.encode(text, 64), plain.encode(text, 64));
        // An index too small for the table is refused.
        assert!(Tokenizer::from_sorted(&table)
            .and_then(|t| t.with_index(&index[..8]))
            .is_err());
    }

    #[test]
    fn vocab_requires_special_tokens() {
        assert!(Tokenizer::from_vocab("hello\n").is_err());
        assert_eq!(tokenizer().pad_id(), 0);
    }

    /// With the real vocabulary, when it is there.
    fn real() -> Option<Tokenizer<'static>> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../embedding/vocab.txt");
        let text = std::fs::read_to_string(path).ok()?.leak();
        Some(Tokenizer::from_vocab(text).expect("plugins/embedding/vocab.txt is valid"))
    }

    #[test]
    fn real_vocab_hash_index_agrees_with_the_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../embedding/vocab.txt");
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        let table = sorted_table(&text);
        let index = hash_index(&table);
        let t = Tokenizer::from_sorted(&table)
            .and_then(|t| t.with_index(&index))
            .expect("the index fits");
        for (token, id) in &table {
            assert_eq!(t.id(token), Some(*id), "{token}");
        }
        assert_eq!(t.id("notawordpiece"), None);
    }

    #[test]
    fn real_vocab_known_ids() {
        let Some(t) = real() else { return };
        assert_eq!(t.vocab_size(), 30522);
        // bert-base-uncased ids.
        assert_eq!(
            t.encode("Hello, world!", 256),
            [101, 7592, 1010, 2088, 999, 102]
        );
    }

    /// `tests/data/embed_reference.json`, when it is there: reference ids from Hugging Face.
    #[test]
    fn matches_reference_ids() {
        let Some(t) = real() else { return };
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/data/embed_reference.json"
        );
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        let reference: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        let cases = reference_cases(&reference);
        assert!(
            !cases.is_empty(),
            "no (text, input_ids) cases found in {path}"
        );
        for (text, expected) in cases {
            assert_eq!(t.encode(&text, 256), expected, "token ids of {text:?}");
        }
    }

    /// Finds every object holding a text (`text`/`sentence`/`input`) and `input_ids`/`ids`.
    fn reference_cases(value: &serde_json::Value) -> Vec<(String, Vec<u32>)> {
        let mut cases = Vec::new();
        match value {
            serde_json::Value::Object(map) => {
                let text = ["text", "sentence", "input"]
                    .iter()
                    .find_map(|k| map.get(*k).and_then(|v| v.as_str()));
                let ids = ["input_ids", "ids", "token_ids"]
                    .iter()
                    .find_map(|k| map.get(*k).and_then(|v| v.as_array()));
                if let (Some(text), Some(ids)) = (text, ids) {
                    let ids = ids
                        .iter()
                        .filter_map(|v| v.as_u64())
                        .map(|v| v as u32)
                        .collect();
                    cases.push((text.to_string(), ids));
                } else {
                    map.values().for_each(|v| cases.extend(reference_cases(v)));
                }
            }
            serde_json::Value::Array(items) => {
                items.iter().for_each(|v| cases.extend(reference_cases(v)));
            }
            _ => {}
        }
        cases
    }
}
