//! Suppressions in LeakSanitizer's format, which heaptrack reads too: one `leak:PATTERN`
//! per line, `#` comments. A call site is suppressed when a pattern matches the
//! function or the module of any of its frames; `*` matches anything, `^` and `$` anchor
//! a pattern to the start and end of the name, and without them it matches anywhere.

use regex::Regex;

use crate::symbolize::Frame;

#[derive(Debug, thiserror::Error)]
pub enum SuppressionsError {
    #[error("line {line}: {text:?} is not a leak suppression (leak:PATTERN)")]
    Syntax { line: usize, text: String },
    #[error("line {line}: pattern {pattern:?}")]
    Pattern {
        line: usize,
        pattern: String,
        source: regex::Error,
    },
}

/// The suppressions of a run, in file order.
#[derive(Debug, Default)]
pub struct Suppressions {
    patterns: Vec<(String, Regex)>,
}

impl Suppressions {
    /// Parses a suppressions file's text. Kinds LeakSanitizer has besides `leak:` are
    /// refused rather than ignored, so a typo cannot silently suppress nothing.
    pub fn parse(text: &str) -> Result<Self, SuppressionsError> {
        let mut patterns = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some(pattern) = trimmed.strip_prefix("leak:").map(str::trim) else {
                return Err(SuppressionsError::Syntax {
                    line: line_number,
                    text: trimmed.to_owned(),
                });
            };
            if pattern.is_empty() {
                return Err(SuppressionsError::Syntax {
                    line: line_number,
                    text: trimmed.to_owned(),
                });
            }
            let regex =
                Regex::new(&to_regex(pattern)).map_err(|source| SuppressionsError::Pattern {
                    line: line_number,
                    pattern: pattern.to_owned(),
                    source,
                })?;
            patterns.push((pattern.to_owned(), regex));
        }
        Ok(Self { patterns })
    }

    /// The first pattern that suppresses a call site with `frames`.
    pub fn matching(&self, frames: &[Frame]) -> Option<&str> {
        self.patterns
            .iter()
            .find(|(_, regex)| {
                frames.iter().any(|frame| {
                    [frame.function.as_deref(), frame.module.as_deref()]
                        .into_iter()
                        .flatten()
                        .any(|name| regex.is_match(name))
                })
            })
            .map(|(pattern, _)| pattern.as_str())
    }
}

/// LeakSanitizer's wildcard pattern as a regular expression.
fn to_regex(pattern: &str) -> String {
    let (start, rest) = match pattern.strip_prefix('^') {
        Some(rest) => ("^", rest),
        None => ("", pattern),
    };
    let (body, end) = match rest.strip_suffix('$') {
        Some(body) => (body, "$"),
        None => (rest, ""),
    };
    let body: Vec<String> = body.split('*').map(regex::escape).collect();
    format!("{start}{}{end}", body.join(".*"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, module: &str) -> Frame {
        Frame {
            function: Some(function.into()),
            module: Some(module.into()),
            ..Frame::default()
        }
    }

    #[test]
    fn matches_functions_and_modules_as_lsan_does() {
        let suppressions = Suppressions::parse(
            "# known\n\nleak:EventManager::subscribe\nleak:^libfoo*.so$\nleak:^main$\n",
        )
        .unwrap();
        let subscribe = [frame(
            "EventManager::subscribe(std::string const&)",
            "/srv/chat",
        )];
        assert_eq!(
            suppressions.matching(&subscribe),
            Some("EventManager::subscribe")
        );
        assert_eq!(
            suppressions.matching(&[frame("init", "libfoo-1.2.so")]),
            Some("^libfoo*.so$")
        );
        assert_eq!(
            suppressions.matching(&[frame("init", "/lib/libfoo.so")]),
            None
        );
        assert_eq!(
            suppressions.matching(&[frame("main", "/srv/chat")]),
            Some("^main$")
        );
        assert_eq!(suppressions.matching(&[frame("domain", "/srv/chat")]), None);
        assert_eq!(suppressions.matching(&[frame("a(b)", "/x")]), None);
    }

    #[test]
    fn refuses_what_it_would_silently_ignore() {
        assert!(matches!(
            Suppressions::parse("leak:ok\nrace:Foo\n"),
            Err(SuppressionsError::Syntax { line: 2, .. })
        ));
        assert!(matches!(
            Suppressions::parse("leak:\n"),
            Err(SuppressionsError::Syntax { line: 1, .. })
        ));
    }
}
