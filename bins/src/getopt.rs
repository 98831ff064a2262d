//! qmail's `sgetopt`: options in the words before the operands, grouped
//! (`-nN`), with values in the same word (`-fme`) or the next (`-f me`);
//! `--` or the first word not starting with `-` ends them.

/// One option. `spec` lists the letters; `x:` takes a value, `x?` takes
/// the rest of its word as an optional value (sendmail's `-E`, `-J`).
#[derive(Debug, PartialEq, Eq)]
pub enum Opt {
    Flag(char),
    Value(char, String),
    /// Not in the spec, or a value is missing: a usage error.
    Bad(char),
}

pub struct GetOpt<'a> {
    args: &'a [String],
    spec: &'static str,
    /// The word being read, and the byte offset in it.
    word: usize,
    at: usize,
}

impl<'a> GetOpt<'a> {
    pub fn new(args: &'a [String], spec: &'static str) -> Self {
        GetOpt {
            args,
            spec,
            word: 0,
            at: 0,
        }
    }

    /// The words after the options; call once the iterator is done.
    pub fn operands(&self) -> &'a [String] {
        &self.args[self.word.min(self.args.len())..]
    }

    fn kind(&self, c: char) -> Option<char> {
        let i = self.spec.find(c)?;
        Some(
            self.spec[i + c.len_utf8()..]
                .chars()
                .next()
                .filter(|k| *k == ':' || *k == '?')
                .unwrap_or(' '),
        )
    }
}

impl Iterator for GetOpt<'_> {
    type Item = Opt;

    fn next(&mut self) -> Option<Opt> {
        if self.at == 0 {
            let word = self.args.get(self.word)?;
            if word == "--" {
                self.word += 1;
                return None;
            }
            if !word.starts_with('-') || word == "-" {
                return None;
            }
            self.at = 1;
        }
        let word = &self.args[self.word];
        let c = word[self.at..].chars().next()?;
        self.at += c.len_utf8();
        let rest = word[self.at..].to_string();
        let done_with_word = |me: &mut Self| {
            me.word += 1;
            me.at = 0;
        };
        let opt = match self.kind(c) {
            None => Opt::Bad(c),
            Some(':') => {
                done_with_word(self);
                if !rest.is_empty() {
                    Opt::Value(c, rest)
                } else if let Some(next) = self.args.get(self.word) {
                    self.word += 1;
                    Opt::Value(c, next.clone())
                } else {
                    Opt::Bad(c)
                }
            }
            Some('?') => {
                done_with_word(self);
                Opt::Value(c, rest)
            }
            _ => {
                if rest.is_empty() {
                    done_with_word(self);
                }
                Opt::Flag(c)
            }
        };
        Some(opt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(words: &[&str], spec: &'static str) -> (Vec<Opt>, Vec<String>) {
        let args: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        let mut g = GetOpt::new(&args, spec);
        let opts = g.by_ref().collect();
        (opts, g.operands().to_vec())
    }

    #[test]
    fn grouped_flags_values_and_operands() {
        let (opts, rest) = run(&["-nN", "-fme", "-f", "you", "a@b", "-x"], "nNf:");
        assert_eq!(
            opts,
            [
                Opt::Flag('n'),
                Opt::Flag('N'),
                Opt::Value('f', "me".into()),
                Opt::Value('f', "you".into())
            ]
        );
        assert_eq!(rest, ["a@b", "-x"]);
    }

    #[test]
    fn double_dash_lone_dash_and_errors() {
        assert_eq!(run(&["-n", "--", "-f"], "nf:").1, ["-f"]);
        assert_eq!(run(&["-", "x"], "n").1, ["-", "x"]);
        assert_eq!(run(&["-q"], "n").0, [Opt::Bad('q')]);
        assert_eq!(run(&["-f"], "f:").0, [Opt::Bad('f')]);
        assert_eq!(
            run(&["-Ex", "-t"], "tE?").0,
            [Opt::Value('E', "x".into()), Opt::Flag('t')]
        );
    }
}
