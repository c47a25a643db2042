//! Glob matching over whole names: `*` matches any run, `?` one character.
//!
//! A pattern is compiled once ([`Glob::new`]) and then matched against many
//! names in time linear in the name: the matcher runs the pattern's
//! automaton over every position at once, 64 positions to a machine word,
//! so no pattern can make it backtrack (`*a*a*a…b` costs what `*` does).

use std::collections::HashMap;

/// One step of a pattern.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Token {
    Char(char),
    Any,
    Star,
}

/// A compiled glob pattern.
#[derive(Debug, Clone)]
pub struct Glob {
    tokens: Vec<Token>,
    /// Bit `i` is set when token `i` is `*`.
    stars: Bits,
    /// Bit `i` is set when token `i` is `?`.
    any: Bits,
    /// Per character of the pattern, the positions whose token is that character.
    literal: HashMap<char, Bits>,
}

/// A set of pattern positions, one bit each.
type Bits = Vec<u64>;

fn set(bits: &mut Bits, i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

fn get(bits: &Bits, i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

impl Glob {
    /// Compiles `pattern`. Runs of `*` are one `*`.
    pub fn new(pattern: &str) -> Glob {
        let mut tokens = Vec::new();
        for c in pattern.chars() {
            let t = match c {
                '*' => Token::Star,
                '?' => Token::Any,
                c => Token::Char(c),
            };
            if !(t == Token::Star && tokens.last() == Some(&Token::Star)) {
                tokens.push(t);
            }
        }
        // Positions 0..=len: position i means "the first i tokens are matched".
        let words = tokens.len() / 64 + 1;
        let (mut stars, mut any) = (vec![0; words], vec![0; words]);
        let mut literal: HashMap<char, Bits> = HashMap::new();
        for (i, t) in tokens.iter().enumerate() {
            match t {
                Token::Star => set(&mut stars, i),
                Token::Any => set(&mut any, i),
                Token::Char(c) => set(literal.entry(*c).or_insert_with(|| vec![0; words]), i),
            }
        }
        Glob { tokens, stars, any, literal }
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        if self.stars.len() == 1 {
            return self.matches_short(text);
        }
        let words = self.stars.len();
        let mut state = vec![0u64; words];
        set(&mut state, 0);
        self.close(&mut state);
        let mut next = vec![0u64; words];
        for c in text.chars() {
            let literal = self.literal.get(&c);
            // From position i: a `*` stays, a token that takes `c` (`?`, or
            // `c` itself) advances to i + 1.
            let mut carry = 0;
            for w in 0..words {
                let takes = self.any[w] | literal.map_or(0, |l| l[w]);
                let advance = state[w] & takes;
                next[w] = (state[w] & self.stars[w]) | (advance << 1) | carry;
                carry = advance >> 63;
            }
            std::mem::swap(&mut state, &mut next);
            self.close(&mut state);
            if state.iter().all(|w| *w == 0) {
                return false;
            }
        }
        get(&state, self.tokens.len())
    }

    /// [`Self::matches`] for patterns of fewer than 64 tokens (almost all):
    /// the same automaton in one machine word, with no allocation.
    fn matches_short(&self, text: &str) -> bool {
        let (stars, any) = (self.stars[0], self.any[0]);
        let close = |state: u64| state | ((state & stars) << 1);
        let mut state = close(1);
        for c in text.chars() {
            let takes = any | self.literal.get(&c).map_or(0, |l| l[0]);
            state = close((state & stars) | ((state & takes) << 1));
            if state == 0 {
                return false;
            }
        }
        state & (1 << self.tokens.len()) != 0
    }

    /// A `*` may match nothing: reaching it also reaches the position after it.
    /// Stars never follow each other, so one pass is enough.
    fn close(&self, state: &mut Bits) {
        let mut carry = 0;
        for (word, stars) in state.iter_mut().zip(&self.stars) {
            let skip = *word & stars;
            *word |= (skip << 1) | carry;
            carry = skip >> 63;
        }
    }
}

/// Whether `text` matches `pattern` as a whole; compiles it each time, so
/// matching many names should use [`Glob`].
pub fn glob_match(pattern: &str, text: &str) -> bool {
    Glob::new(pattern).matches(text)
}

#[cfg(test)]
mod tests {
    use super::{glob_match, Glob};

    #[test]
    fn matches_whole_names() {
        assert!(glob_match("temp_*", "temp_a"));
        assert!(glob_match("temp_*", "temp_"));
        assert!(!glob_match("temp_*", "my_temp_a"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "abbc"));
        assert!(glob_match("*b*d", "abcbd"));
        assert!(glob_match("é*", "été"));
        assert!(!glob_match("abc", "ab"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "x"));
        assert!(glob_match("**a**", "bab"));
        assert!(!glob_match("?", ""));
        assert!(glob_match("*?", "x"));
    }

    #[test]
    fn long_patterns_cross_word_boundaries() {
        // 200 tokens: the automaton spans four words.
        let name: String = (0..200).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        assert!(glob_match(&name, &name));
        let mut with_star = name.clone();
        with_star.replace_range(63..130, "*");
        assert!(glob_match(&with_star, &name));
        let mut with_any = name.clone();
        with_any.replace_range(64..65, "?");
        assert!(glob_match(&with_any, &name));
        assert!(!glob_match(&with_any, &name[..199]));
    }

    #[test]
    fn pathological_patterns_stay_linear() {
        // Backtracking matchers take variables × pattern × name steps on this.
        let pattern = format!("{}b", "*a".repeat(500));
        let glob = Glob::new(&pattern);
        let name = "a".repeat(256);
        for _ in 0..1000 {
            assert!(!glob.matches(&name));
        }
        assert!(glob.matches(&format!("{}b", "a".repeat(500))));
    }
}
