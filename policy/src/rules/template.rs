//! `as_user` / `as_groups` templates: literal text with `{username}` and
//! `{uid}` placeholders; `{{` and `}}` stand for literal braces.

use crate::subject::Subject;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Lit(String),
    Username,
    Uid,
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub(crate) fn parse(source: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err("unclosed `{` in template".to_owned()),
                        }
                    }
                    let part = match name.as_str() {
                        "username" => Part::Username,
                        "uid" => Part::Uid,
                        other => {
                            return Err(format!(
                                "unknown placeholder {{{other}}}; expected {{username}} or {{uid}}"
                            ));
                        }
                    };
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(part);
                }
                '}' => {
                    return Err(
                        "unmatched `}` in template (write `}}` for a literal brace)".to_owned()
                    );
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        if parts.is_empty() {
            return Err("template is empty".to_owned());
        }
        Ok(Template { parts })
    }

    /// Renders for `subject`; `None` when a placeholder has no value (no uid,
    /// empty user name), so the rule does not apply rather than forwarding a
    /// half-rendered identity shared by unrelated people.
    pub(crate) fn render(&self, subject: &Subject) -> Option<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Username if !subject.user.is_empty() => out.push_str(&subject.user),
                Part::Uid => match subject.uid.as_deref() {
                    Some(uid) if !uid.is_empty() => out.push_str(uid),
                    _ => return None,
                },
                Part::Username => return None,
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_render() {
        let mut s = Subject::new("dave", ["c"]);
        let t = Template::parse("contractor:{username}").unwrap();
        assert_eq!(t.render(&s).as_deref(), Some("contractor:dave"));
        let t = Template::parse("{{x}}-{uid}").unwrap();
        assert_eq!(t.render(&s), None);
        s.uid = Some("42".into());
        assert_eq!(t.render(&s).as_deref(), Some("{x}-42"));
        assert!(
            Template::parse("{email}")
                .unwrap_err()
                .contains("unknown placeholder {email}")
        );
        assert!(Template::parse("{username").is_err());
        assert!(Template::parse("a}b").is_err());
        assert!(Template::parse("").is_err());
    }
}
