//! `*`-only globs, precompiled once at policy load.
//!
//! `*` matches any run of characters (including none). Every other character,
//! `?` included, is literal: Kubernetes names cannot contain `?`, so supporting
//! it as a wildcard would only add ways to write confusing rules.

/// A compiled glob. Literal patterns compare with `==`, so the common case
/// costs no more than a string comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Glob {
    /// `*`: anything.
    Any,
    /// No wildcard at all.
    Exact(String),
    /// At least one `*` and some literal text; `parts` is the text split on
    /// `*` (first = prefix, last = suffix, both possibly empty).
    Pattern { source: String, parts: Vec<String> },
}

impl Glob {
    /// Compiles `pattern`; runs of `*` collapse into one.
    pub(crate) fn new(pattern: &str) -> Glob {
        if !pattern.contains('*') {
            return Glob::Exact(pattern.to_owned());
        }
        let mut source = String::with_capacity(pattern.len());
        let mut prev_star = false;
        for c in pattern.chars() {
            if c == '*' && prev_star {
                continue;
            }
            prev_star = c == '*';
            source.push(c);
        }
        if source == "*" {
            return Glob::Any;
        }
        let parts = source.split('*').map(str::to_owned).collect();
        Glob::Pattern { source, parts }
    }

    /// The pattern as written (after collapsing `**`).
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Glob::Any => "*",
            Glob::Exact(s) => s,
            Glob::Pattern { source, .. } => source,
        }
    }

    /// The literal value when the pattern has no wildcard.
    pub(crate) fn literal(&self) -> Option<&str> {
        match self {
            Glob::Exact(s) => Some(s),
            _ => None,
        }
    }

    /// The literal runs between wildcards, in order (a single run for an exact pattern).
    pub(crate) fn parts(&self) -> Vec<&str> {
        match self {
            Glob::Any => vec!["", ""],
            Glob::Exact(s) => vec![s.as_str()],
            Glob::Pattern { parts, .. } => parts.iter().map(String::as_str).collect(),
        }
    }

    pub(crate) fn matches(&self, value: &str) -> bool {
        match self {
            Glob::Any => true,
            Glob::Exact(s) => s == value,
            Glob::Pattern { parts, .. } => match_parts(parts, value),
        }
    }

    /// The most selective literal end every matching value must have: the
    /// whole value for an exact pattern, else the longer of the literal
    /// prefix and suffix (the prefix on a tie). `Any` for `*` and for
    /// patterns with no literal end (`*x*`), which the rule prefilter cannot
    /// narrow down.
    pub(crate) fn anchor(&self) -> Anchor<'_> {
        match self {
            Glob::Any => Anchor::Any,
            Glob::Exact(s) => Anchor::Exact(s),
            Glob::Pattern { parts, .. } => {
                let first = parts.first().map_or("", String::as_str);
                let last = parts.last().map_or("", String::as_str);
                if !first.is_empty() && first.len() >= last.len() {
                    Anchor::Prefix(first)
                } else if !last.is_empty() {
                    Anchor::Suffix(last)
                } else {
                    Anchor::Any
                }
            }
        }
    }

    /// True when every value matched by `other` is matched by `self`.
    /// Conservative: may say false for a real subsumption, never true for a
    /// false one (it feeds the shadowed-rule warning, which must be sure).
    pub(crate) fn covers(&self, other: &Glob) -> bool {
        match (self, other) {
            (Glob::Any, _) => true,
            (_, Glob::Exact(v)) => self.matches(v),
            _ => self.as_str() == other.as_str(),
        }
    }
}

/// See [`Glob::anchor`]: a value the glob matches equals `Exact`, starts
/// with `Prefix`, ends with `Suffix`; `Any` says nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Anchor<'a> {
    Any,
    Exact(&'a str),
    Prefix(&'a str),
    Suffix(&'a str),
}

/// Leftmost-first matching is exact for `*`-only globs: taking the earliest
/// occurrence of each middle part leaves the most room for the rest.
fn match_parts(parts: &[String], value: &str) -> bool {
    let (first, rest) = match parts.split_first() {
        Some(x) => x,
        None => return value.is_empty(),
    };
    let (last, middles) = match rest.split_last() {
        Some(x) => x,
        None => return first == value,
    };
    if value.len() < first.len() + last.len()
        || !value.starts_with(first.as_str())
        || !value.ends_with(last.as_str())
    {
        return false;
    }
    let mut hay = &value[first.len()..value.len() - last.len()];
    for m in middles {
        match hay.find(m.as_str()) {
            Some(i) => hay = &hay[i + m.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "anything", true),
            ("team-*", "team-", true),
            ("team-*", "team-a", true),
            ("team-*", "teams", false),
            ("*-prod", "eu-prod", true),
            ("*-prod", "-prod", true),
            ("*-prod", "prod", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "acb", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("a**b", "ab", true),
            ("*x*", "x", true),
            ("*x*", "y", false),
            ("exact", "exact", true),
            ("exact", "exacT", false),
            ("q?", "q?", true),
            ("q?", "qa", false),
        ];
        for (pattern, value, want) in cases {
            assert_eq!(
                Glob::new(pattern).matches(value),
                *want,
                "{pattern} ~ {value}"
            );
        }
    }

    #[test]
    fn anchors() {
        let cases: &[(&str, Anchor<'_>)] = &[
            ("*", Anchor::Any),
            ("**", Anchor::Any),
            ("*x*", Anchor::Any),
            ("exact", Anchor::Exact("exact")),
            ("", Anchor::Exact("")),
            ("team-*", Anchor::Prefix("team-")),
            ("*-prod", Anchor::Suffix("-prod")),
            ("t1-*-dev", Anchor::Suffix("-dev")),
            ("team-*-dev", Anchor::Prefix("team-")),
            ("t-*-prod", Anchor::Suffix("-prod")),
            ("ab*x*ab", Anchor::Prefix("ab")),
        ];
        for (pattern, want) in cases {
            assert_eq!(Glob::new(pattern).anchor(), *want, "{pattern}");
        }
    }

    #[test]
    fn covering() {
        assert!(Glob::new("*").covers(&Glob::new("team-*")));
        assert!(Glob::new("team-*").covers(&Glob::new("team-a")));
        assert!(Glob::new("team-*").covers(&Glob::new("team-*")));
        assert!(!Glob::new("team-a").covers(&Glob::new("team-*")));
        assert!(!Glob::new("team-*").covers(&Glob::new("*")));
        assert_eq!(Glob::new("a**").as_str(), "a*");
    }
}
