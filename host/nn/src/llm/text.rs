//! From token pieces to the text a client sees: whole UTF-8 characters only, and stop strings
//! cut out, with nothing after them. Pure and unit-tested; the engine feeds it one token's
//! bytes at a time.

/// Turns token pieces into text, holding back what is not yet safe to show: the bytes of a
/// character split across tokens, and a tail that could still become a stop string.
#[derive(Debug, Default)]
pub struct TextAssembler {
    /// Bytes of an incomplete UTF-8 character at the end of the pieces so far.
    partial: Vec<u8>,
    /// Decoded text not yet released: it may be the start of a stop string.
    held: String,
    stop: Vec<String>,
}

/// What feeding one piece released.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// Text that can be shown now (possibly empty).
    Text(String),
    /// A stop string was reached: the text before it; the generation ends here.
    Stopped(String),
}

impl TextAssembler {
    pub fn new(stop: Vec<String>) -> Self {
        Self {
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            ..Self::default()
        }
    }

    /// Adds one token's bytes.
    pub fn feed(&mut self, bytes: &[u8]) -> Fed {
        self.partial.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.partial) {
            Ok(s) => s.len(),
            // An invalid sequence that is not just cut short can never complete: replace it.
            Err(e) if e.error_len().is_some() => {
                let text = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                return self.release(text);
            }
            Err(e) => e.valid_up_to(),
        };
        let text = String::from_utf8(self.partial.drain(..valid).collect()).unwrap_or_default();
        self.release(text)
    }

    /// Adds decoded text; releases all of it but a tail that could begin a stop string.
    fn release(&mut self, text: String) -> Fed {
        self.held.push_str(&text);
        if let Some(at) = self
            .stop
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let before = self.held[..at].to_string();
            self.held.clear();
            return Fed::Stopped(before);
        }
        let keep = self
            .stop
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        Fed::Text(out)
    }

    /// The generation ended for another reason: whatever was held back is text after all.
    pub fn finish(&mut self) -> String {
        let mut rest = std::mem::take(&mut self.held);
        if !self.partial.is_empty() {
            rest.push_str(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
        rest
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `stop`, on a
/// character boundary.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n)
                && stop.is_char_boundary(n)
                && text.ends_with(&stop[..n])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(a: &mut TextAssembler, pieces: &[&[u8]]) -> (String, bool) {
        let mut out = String::new();
        for p in pieces {
            match a.feed(p) {
                Fed::Text(t) => out.push_str(&t),
                Fed::Stopped(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&a.finish());
        (out, false)
    }

    #[test]
    fn a_character_split_across_tokens_is_held_until_whole() {
        let euro = "€".as_bytes();
        let mut a = TextAssembler::new(vec![]);
        assert_eq!(a.feed(b"5 "), Fed::Text("5 ".into()));
        assert_eq!(a.feed(&euro[..1]), Fed::Text(String::new()));
        assert_eq!(a.feed(&euro[1..]), Fed::Text("€".into()));
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut a = TextAssembler::new(vec![]);
        assert_eq!(a.feed(&[0xff, b'a']), Fed::Text("\u{fffd}a".into()));
    }

    #[test]
    fn a_stop_string_across_pieces_ends_the_text_before_it() {
        let mut a = TextAssembler::new(vec!["END".into()]);
        let (out, stopped) = feed_all(&mut a, &[b"one two E", b"N", b"D three"]);
        assert_eq!((out.as_str(), stopped), ("one two ", true));
    }

    #[test]
    fn a_false_start_of_a_stop_string_is_released() {
        let mut a = TextAssembler::new(vec!["\n\n".into()]);
        assert_eq!(a.feed(b"a\n"), Fed::Text("a".into()));
        assert_eq!(a.feed(b"b"), Fed::Text("\nb".into()));
        let (out, stopped) = feed_all(&mut TextAssembler::new(vec!["xyz".into()]), &[b"xy"]);
        assert_eq!((out.as_str(), stopped), ("xy", false));
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        let mut a = TextAssembler::new(vec!["world".into(), "o".into()]);
        let (out, stopped) = feed_all(&mut a, &[b"hello world"]);
        assert_eq!((out.as_str(), stopped), ("hell", true));
    }

    #[test]
    fn suffix_prefix_respects_char_boundaries() {
        assert_eq!(longest_suffix_prefix("abc", "cde"), 1);
        assert_eq!(longest_suffix_prefix("ab€", "€x"), 3);
        assert_eq!(longest_suffix_prefix("xab", "abc"), 2);
        assert_eq!(longest_suffix_prefix("abc", "abc"), 0);
        assert_eq!(longest_suffix_prefix("", "abc"), 0);
    }
}
