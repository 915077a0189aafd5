//! Errors that point at the exact place in the file that caused them.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Where a setting came from: file, 1-based line and column, and the dotted field name.
///
/// Kept next to every validated value that the gateway still has to interpret later (a
/// certificate it parses, a key file it loads), so those late failures can point at the
/// same place a parse error would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted field name, for example `listen.tls_cert`.
    pub field: String,
}

impl Location {
    /// An error at this location.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: Some(self.line),
            column: Some(self.column),
            field: Some(self.field.clone()),
            message: message.into(),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.field
        )
    }
}

/// A configuration error: the file, where in it (when known), the field, and what is wrong.
///
/// The message never quotes a value from the file, so a secret typed into the wrong field
/// does not end up in a log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file the error is in.
    pub file: PathBuf,
    /// 1-based line, when the error has a position.
    pub line: Option<usize>,
    /// 1-based column, when the error has a position.
    pub column: Option<usize>,
    /// Dotted field name, when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl ConfigError {
    /// An error about the file as a whole (for example, it cannot be read).
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: None,
            column: None,
            field: None,
            message: message.into(),
        }
    }
}

/// Maps byte offsets in a TOML source to lines, columns and the table they sit in.
pub(crate) struct SourceMap<'a> {
    file: &'a Path,
    text: &'a str,
}

impl<'a> SourceMap<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        SourceMap { file, text }
    }

    pub(crate) fn file(&self) -> &Path {
        self.file
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    pub(crate) fn location(&self, span: Range<usize>, field: impl Into<String>) -> Location {
        let (line, column) = self.line_col(span.start);
        Location {
            file: self.file.to_path_buf(),
            line,
            column,
            field: field.into(),
        }
    }

    /// The `[table]` or `[[array]]` header in force at `offset`, used to name the field
    /// of a serde error, which only knows the key.
    pub(crate) fn table_at(&self, offset: usize) -> Option<String> {
        // Include the line the offset is on: a "missing field" error points at the
        // header of the table that lacks it.
        let offset = offset.min(self.text.len());
        let end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        let before = &self.text[..floor_char_boundary(self.text, end)];
        before.lines().rev().find_map(|line| {
            let line = line.trim();
            let inner = line
                .strip_prefix("[[")
                .and_then(|l| l.split("]]").next())
                .or_else(|| line.strip_prefix('[').and_then(|l| l.split(']').next()))?;
            Some(inner.trim().to_string())
        })
    }

    /// Turns a TOML/serde error into a located one.
    pub(crate) fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let message = err.message().trim().to_string();
        let key = backticked(&message);
        let (line, column, table) = match err.span() {
            Some(span) => {
                let (line, column) = self.line_col(span.start);
                (Some(line), Some(column), self.table_at(span.start))
            }
            None => (None, None, None),
        };
        let field = match (table, key) {
            (Some(table), Some(key)) => Some(format!("{table}.{key}")),
            (None, Some(key)) => Some(key),
            (Some(table), None) => Some(table),
            (None, None) => None,
        };
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            field,
            message,
        }
    }
}

/// The first `quoted` word of a serde message ("unknown field `foo`", "missing field `bar`").
fn backticked(message: &str) -> Option<String> {
    if !(message.starts_with("unknown field") || message.starts_with("missing field")) {
        return None;
    }
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let text = "a = 1\n[listen]\nport = 2\n";
        let map = SourceMap::new(Path::new("x.toml"), text);
        assert_eq!(map.line_col(0), (1, 1));
        let port = text.find("port").unwrap();
        assert_eq!(map.line_col(port), (3, 1));
        assert_eq!(map.table_at(port).as_deref(), Some("listen"));
    }

    #[test]
    fn array_table_headers_are_found() {
        let text = "[[auth.oidc]]\nissuer = 1\n";
        let map = SourceMap::new(Path::new("x.toml"), text);
        assert_eq!(map.table_at(text.len() - 1).as_deref(), Some("auth.oidc"));
    }
}
