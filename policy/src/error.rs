//! Load errors and warnings, located as `file:line:col: rule "name": field: message`.

use std::fmt;
use std::ops::Range;

use thiserror::Error;

/// A policy (or policy test file) that cannot be loaded.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{}", render(self.file.as_str(), self.line, self.column, self.rule.as_deref(), self.field.as_deref(), &self.message))]
pub struct PolicyError {
    /// File name as given by the caller.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// 1-based column (in characters), when known.
    pub column: Option<u32>,
    /// Name of the rule (or test case) the problem is in, when known.
    pub rule: Option<String>,
    /// Field path inside the rule, e.g. `resources[0].verbs[1]`.
    pub field: Option<String>,
    /// What is wrong, lower-case.
    pub message: String,
}

/// Something legal but probably not what the author meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyWarning {
    /// File name as given by the caller.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// 1-based column (in characters), when known.
    pub column: Option<u32>,
    /// Name of the rule concerned, when known.
    pub rule: Option<String>,
    /// Field path inside the rule, when relevant.
    pub field: Option<String>,
    /// What looks wrong, lower-case.
    pub message: String,
}

impl fmt::Display for PolicyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render(
            &self.file,
            self.line,
            self.column,
            self.rule.as_deref(),
            self.field.as_deref(),
            &self.message,
        ))
    }
}

fn render(
    file: &str,
    line: Option<u32>,
    column: Option<u32>,
    rule: Option<&str>,
    field: Option<&str>,
    message: &str,
) -> String {
    let mut out = file.to_owned();
    if let Some(line) = line {
        out.push_str(&format!(":{line}"));
        if let Some(col) = column {
            out.push_str(&format!(":{col}"));
        }
    }
    out.push_str(": ");
    if let Some(rule) = rule {
        out.push_str(&format!("rule {rule:?}: "));
    }
    if let Some(field) = field {
        out.push_str(field);
        out.push_str(": ");
    }
    out.push_str(message);
    out
}

/// Turns byte spans of one source text into located errors.
#[derive(Clone, Copy)]
pub(crate) struct Locator<'a> {
    pub(crate) file: &'a str,
    pub(crate) text: &'a str,
}

impl<'a> Locator<'a> {
    /// 1-based (line, column) of a byte offset; columns count characters.
    pub(crate) fn line_col(&self, offset: usize) -> (u32, u32) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        // u32 keeps PolicyError small; no policy file has 4 billion lines.
        (
            u32::try_from(line).unwrap_or(u32::MAX),
            u32::try_from(col).unwrap_or(u32::MAX),
        )
    }

    pub(crate) fn error(
        &self,
        span: Option<Range<usize>>,
        rule: Option<&str>,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> PolicyError {
        let (line, column) = match span {
            Some(s) => {
                let (l, c) = self.line_col(s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        PolicyError {
            file: self.file.to_owned(),
            line,
            column,
            rule: rule.map(str::to_owned),
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }

    pub(crate) fn warning(
        &self,
        span: Option<Range<usize>>,
        rule: Option<&str>,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> PolicyWarning {
        let e = self.error(span, rule, field, message);
        PolicyWarning {
            file: e.file,
            line: e.line,
            column: e.column,
            rule: e.rule,
            field: e.field,
            message: e.message,
        }
    }

    /// Converts a serde/TOML error. `rule_at` names the rule containing an
    /// offset, when the caller can tell.
    pub(crate) fn toml_error(
        &self,
        err: &toml::de::Error,
        rule_at: impl Fn(usize) -> Option<String>,
    ) -> PolicyError {
        let span = err.span();
        let rule = span.as_ref().and_then(|s| rule_at(s.start));
        let message = err.message().trim_end().to_owned();
        self.error(span, rule.as_deref(), None, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_shapes() {
        let loc = Locator {
            file: "p.toml",
            text: "a\nbé c\n",
        };
        assert_eq!(loc.line_col(0), (1, 1));
        assert_eq!(loc.line_col(2), (2, 1));
        assert_eq!(loc.line_col(6), (2, 4));
        let e = loc.error(Some(6..7), Some("r"), Some("verbs[0]"), "unknown verb");
        assert_eq!(
            e.to_string(),
            "p.toml:2:4: rule \"r\": verbs[0]: unknown verb"
        );
        let e = loc.error(None, None, None, "no rules");
        assert_eq!(e.to_string(), "p.toml: no rules");
        let w = loc.warning(Some(0..1), Some("x"), None, "shadowed");
        assert_eq!(w.to_string(), "p.toml:1:1: rule \"x\": shadowed");
    }
}
