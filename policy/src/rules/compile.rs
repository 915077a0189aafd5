//! Schema to compiled rules, with every load-time check. The first problem
//! found is returned, located at the offending text.

use std::collections::HashMap;
use std::ops::Range;

use toml::Spanned;

use crate::error::{Locator, PolicyError, PolicyWarning};
use crate::glob::Glob;
use crate::path::normalize_path;
use crate::request::{RequestAttributes, resolve};

use super::escalation::escalation_warnings;
use super::model::{
    ClaimMatcher, Effect, METHODS, Mapping, NamespacePattern, PathEntry, ResourceEntry,
    ResourcePattern, Rule, SubjectMatcher, Target, VERBS, VerbSet, method_bit, verb_bit,
};
use super::schema::{
    LenientFile, List, PathSpec, PolicyFile, ResourceSpec, RuleSpec, SubjectsSpec,
};
use super::template::Template;
use super::validate::{API_GROUP, NAME, NAMESPACE, RESOURCE, Shape, shadowed};

type Result<T> = std::result::Result<T, PolicyError>;

pub(crate) fn compile(loc: Locator<'_>) -> Result<(Vec<Rule>, Vec<PolicyWarning>)> {
    let file: PolicyFile =
        toml::from_str(loc.text).map_err(|e| loc.toml_error(&e, |at| rule_at(loc.text, at)))?;
    if let Some(d) = &file.default
        && d.get_ref() != "deny"
    {
        return Err(loc.error(
            Some(d.span()),
            None,
            Some("default"),
            format!(
                "unsupported default {:?}: the only default is \"deny\" (anything no rule allows is denied)",
                d.get_ref()
            ),
        ));
    }
    let mut rules = Vec::with_capacity(file.rules.len());
    // Name -> offset; lines are computed only on error (line_col is O(file)).
    let mut seen: HashMap<String, usize> = HashMap::new();
    for spec in file.rules {
        let rule = RuleCompiler {
            loc,
            name: spec.get_ref().name.get_ref().clone(),
        }
        .compile(spec)?;
        if let Some(&first) = seen.get(&rule.name) {
            let line = loc.line_col(first).0;
            return Err(loc.error(
                Some(rule.name_span.clone()),
                Some(&rule.name),
                Some("name"),
                format!("duplicate rule name (first defined on line {line})"),
            ));
        }
        seen.insert(rule.name.clone(), rule.name_span.start);
        rules.push(rule);
    }
    let mut warnings = Vec::new();
    if rules.is_empty() {
        warnings.push(loc.warning(
            None,
            None,
            None,
            "policy has no rules: every request is denied",
        ));
    }
    for rule in &rules {
        let Target::Paths(entries) = &rule.target else {
            continue;
        };
        for (i, e) in entries.iter().enumerate() {
            if let Some(span) = &e.resource_path {
                warnings.push(loc.warning(
                    Some(span.clone()),
                    Some(&rule.name),
                    Some(&format!("paths[{i}].path")),
                    "this is a resource path, and path rules only match non-resource requests; use resources = [...]",
                ));
            }
        }
    }
    let shadowed = shadowed(&rules);
    for &(a, d) in &shadowed {
        warnings.push(loc.warning(
            Some(rules[a].name_span.clone()),
            Some(&rules[a].name),
            None,
            format!(
                "rule never allows anything: every request it matches is denied by rule {:?}",
                rules[d].name
            ),
        ));
    }
    // A wholly shadowed rule allows nothing, so it grants no escalation either.
    let mut dead: Vec<usize> = shadowed.iter().map(|&(a, _)| a).collect();
    dead.sort_unstable();
    warnings.extend(escalation_warnings(loc, &rules, &dead));
    Ok((rules, warnings))
}

/// Names the rule an error offset falls in, from a lenient re-parse.
fn rule_at(text: &str, at: usize) -> Option<String> {
    let file: LenientFile = toml::from_str(text).ok()?;
    entry_at(text, &file.rule, "rule", at)
}

/// Which `[[table]]` entry (by its `name`) contains byte offset `at`. For
/// `[[table]]` headers the span is the header only, so an entry extends to
/// the next header that is not one of its own sub-tables.
pub(crate) fn entry_at(
    text: &str,
    entries: &[Spanned<toml::Value>],
    table: &str,
    at: usize,
) -> Option<String> {
    let mut best = None;
    for (i, r) in entries.iter().enumerate() {
        let span = r.span();
        let end = entries.get(i + 1).map_or(text.len(), |n| n.span().start);
        let region_end = if text.get(span.clone())?.starts_with("[[") {
            next_foreign_header(text, span.end, end, table)
        } else {
            span.end
        };
        if span.start <= at && at < region_end.max(span.end) {
            best = r
                .get_ref()
                .get("name")
                .and_then(|n| n.as_str())
                .map(str::to_owned);
        }
    }
    best
}

fn next_foreign_header(text: &str, from: usize, limit: usize, table: &str) -> usize {
    let (sub, array_sub) = (format!("[{table}."), format!("[[{table}."));
    let mut pos = from;
    for line in text.get(from..limit).unwrap_or("").split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with('[') && !t.starts_with(&sub) && !t.starts_with(&array_sub) {
            return pos;
        }
        pos += line.len();
    }
    limit
}

struct RuleCompiler<'a> {
    loc: Locator<'a>,
    name: String,
}

impl RuleCompiler<'_> {
    fn err(&self, span: Range<usize>, field: &str, msg: impl Into<String>) -> PolicyError {
        let rule = (!self.name.is_empty()).then_some(self.name.as_str());
        self.loc.error(Some(span), rule, Some(field), msg)
    }

    fn compile(&self, spec: Spanned<RuleSpec>) -> Result<Rule> {
        let spec = spec.into_inner();
        let name = &spec.name;
        if name.get_ref().trim().is_empty() {
            return Err(self.err(name.span(), "name", "rule name must not be empty"));
        }
        if name.get_ref().chars().any(char::is_control) || name.get_ref().len() > 253 {
            return Err(self.err(
                name.span(),
                "name",
                "rule name must be at most 253 bytes without control characters",
            ));
        }
        let effect = match spec.effect.get_ref().as_str() {
            "allow" => Effect::Allow,
            "deny" => Effect::Deny,
            other => {
                return Err(self.err(
                    spec.effect.span(),
                    "effect",
                    format!("unknown effect {other:?}; expected \"allow\" or \"deny\""),
                ));
            }
        };
        let subjects = self.subjects(&spec.subjects)?;
        let target = match (&spec.resources, &spec.paths) {
            (Some(r), None) => Target::Resources(self.resources(r)?),
            (None, Some(p)) => Target::Paths(self.paths(p)?),
            (Some(r), Some(_)) => {
                return Err(self.err(
                    r.span(),
                    "resources",
                    "a rule has either resources or paths, not both",
                ));
            }
            (None, None) => {
                return Err(self.err(
                    name.span(),
                    "resources",
                    "a rule needs resources or paths (exactly one of them)",
                ));
            }
        };
        let mapping = self.mapping(&spec, effect)?;
        Ok(Rule {
            name: name.get_ref().clone(),
            effect,
            name_span: name.span(),
            subjects,
            target,
            mapping,
        })
    }

    fn mapping(&self, spec: &RuleSpec, effect: Effect) -> Result<Option<Mapping>> {
        if effect == Effect::Deny {
            if let Some(u) = &spec.as_user {
                return Err(self.err(
                    u.span(),
                    "as_user",
                    "as_user is only allowed on allow rules",
                ));
            }
            if let Some(g) = &spec.as_groups {
                return Err(self.err(
                    g.span(),
                    "as_groups",
                    "as_groups is only allowed on allow rules",
                ));
            }
            return Ok(None);
        }
        if spec.as_user.is_none() && spec.as_groups.is_none() {
            return Ok(None);
        }
        let user = match &spec.as_user {
            Some(u) => {
                Some(Template::parse(u.get_ref()).map_err(|m| self.err(u.span(), "as_user", m))?)
            }
            None => None,
        };
        let groups = match &spec.as_groups {
            Some(list) => {
                let mut out = Vec::new();
                for (i, g) in list.get_ref().iter().enumerate() {
                    out.push(
                        Template::parse(g.get_ref())
                            .map_err(|m| self.err(g.span(), &format!("as_groups[{i}]"), m))?,
                    );
                }
                Some(out)
            }
            None => None,
        };
        Ok(Some(Mapping { user, groups }))
    }

    fn subjects(&self, spec: &Spanned<SubjectsSpec>) -> Result<SubjectMatcher> {
        let s = spec.get_ref();
        let mut m = SubjectMatcher::default();
        if let Some(a) = &s.authenticated {
            if !*a.get_ref() {
                return Err(self.err(
                    a.span(),
                    "subjects.authenticated",
                    "authenticated can only be true (omit it otherwise)",
                ));
            }
            m.authenticated = true;
        }
        m.users = self.names(&s.users, "subjects.users")?;
        m.groups = self.names(&s.groups, "subjects.groups")?;
        m.not_users = self.names(&s.not_users, "subjects.not_users")?;
        m.not_groups = self.names(&s.not_groups, "subjects.not_groups")?;
        if let Some(claims) = &s.claims {
            if claims.get_ref().is_empty() {
                return Err(self.err(claims.span(), "subjects.claims", "must not be empty"));
            }
            for (path, value) in claims.get_ref() {
                self.claim(path, value.get_ref(), value.span(), &mut m.claims)?;
            }
        }
        if !m.authenticated && m.users.is_empty() && m.groups.is_empty() && m.claims.is_empty() {
            return Err(self.err(
                spec.span(),
                "subjects",
                "subject set selects nobody: give users, groups, claims or authenticated = true",
            ));
        }
        Ok(m)
    }

    /// One `claims` entry. Nested tables flatten into dotted paths, so an
    /// unquoted `realm_access.roles = "x"` (a TOML dotted key) means the same
    /// as the quoted `"realm_access.roles" = "x"`.
    fn claim(
        &self,
        path: &str,
        value: &toml::Value,
        span: Range<usize>,
        out: &mut Vec<ClaimMatcher>,
    ) -> Result<()> {
        let field = format!("subjects.claims.{path}");
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(self.err(span, &field, "claim path must not have empty parts"));
        }
        let values = match value {
            toml::Value::Table(t) if !t.is_empty() => {
                for (k, v) in t {
                    self.claim(&format!("{path}.{k}"), v, span.clone(), out)?;
                }
                return Ok(());
            }
            toml::Value::String(v) => vec![v.clone()],
            toml::Value::Array(items) if !items.is_empty() => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.err(span.clone(), &field, "claim values must be strings"))?,
            _ => {
                return Err(self.err(
                    span,
                    &field,
                    "claim value must be a string or a non-empty list of strings",
                ));
            }
        };
        out.push(ClaimMatcher {
            path: path.to_owned(),
            values,
        });
        Ok(())
    }

    /// A user or group list: non-empty, no empty strings; any text is a valid name.
    fn names(&self, list: &Option<List>, field: &str) -> Result<Vec<Glob>> {
        let Some(list) = list else {
            return Ok(Vec::new());
        };
        self.non_empty(list, field)?;
        list.get_ref()
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if v.get_ref().is_empty() {
                    Err(self.err(v.span(), &format!("{field}[{i}]"), "must not be empty"))
                } else {
                    Ok(Glob::new(v.get_ref()))
                }
            })
            .collect()
    }

    fn non_empty(&self, list: &List, field: &str) -> Result<()> {
        if list.get_ref().is_empty() {
            return Err(self.err(list.span(), field, "list must not be empty"));
        }
        Ok(())
    }

    fn globs(&self, list: &List, field: &str, shape: &Shape) -> Result<Vec<Glob>> {
        self.non_empty(list, field)?;
        let mut out = Vec::new();
        for (i, v) in list.get_ref().iter().enumerate() {
            let g = Glob::new(v.get_ref());
            shape
                .check(&g)
                .map_err(|m| self.err(v.span(), &format!("{field}[{i}]"), m))?;
            out.push(g);
        }
        Ok(out)
    }

    fn resources(&self, list: &Spanned<Vec<Spanned<ResourceSpec>>>) -> Result<Vec<ResourceEntry>> {
        if list.get_ref().is_empty() {
            return Err(self.err(list.span(), "resources", "list must not be empty"));
        }
        let mut out = Vec::new();
        for (i, e) in list.get_ref().iter().enumerate() {
            out.push(self.resource_entry(e, &format!("resources[{i}]"))?);
        }
        Ok(out)
    }

    fn resource_entry(&self, spec: &Spanned<ResourceSpec>, f: &str) -> Result<ResourceEntry> {
        let e = spec.get_ref();
        let verbs = self.verbs(&e.verbs, &format!("{f}.verbs"), &VERBS, "verb", verb_bit)?;
        let field = format!("{f}.api_groups");
        self.non_empty(&e.api_groups, &field)?;
        let mut api_groups = Vec::new();
        for (i, g) in e.api_groups.get_ref().iter().enumerate() {
            let glob = Glob::new(g.get_ref());
            if !g.get_ref().is_empty() {
                API_GROUP
                    .check(&glob)
                    .map_err(|m| self.err(g.span(), &format!("{field}[{i}]"), m))?;
            }
            api_groups.push(glob);
        }
        let field = format!("{f}.resources");
        self.non_empty(&e.resources, &field)?;
        let mut resources = Vec::new();
        for (i, r) in e.resources.get_ref().iter().enumerate() {
            let fi = format!("{field}[{i}]");
            let text = r.get_ref();
            let pat = match text.split('/').collect::<Vec<_>>()[..] {
                ["*"] => ResourcePattern::All,
                [res] => ResourcePattern::Plain(self.resource_part(res, r, &fi)?),
                [res, sub] => ResourcePattern::Sub(
                    self.resource_part(res, r, &fi)?,
                    self.resource_part(sub, r, &fi)?,
                ),
                _ => {
                    return Err(self.err(
                        r.span(),
                        &fi,
                        "expected \"resource\" or \"resource/subresource\"",
                    ));
                }
            };
            resources.push(pat);
        }
        let namespaces = match &e.namespaces {
            None => None,
            Some(list) => {
                let field = format!("{f}.namespaces");
                self.non_empty(list, &field)?;
                let mut out = Vec::new();
                for (i, n) in list.get_ref().iter().enumerate() {
                    if n.get_ref().is_empty() {
                        out.push(NamespacePattern::None);
                        continue;
                    }
                    let g = Glob::new(n.get_ref());
                    NAMESPACE
                        .check(&g)
                        .map_err(|m| self.err(n.span(), &format!("{field}[{i}]"), m))?;
                    out.push(NamespacePattern::Glob(g));
                }
                Some(out)
            }
        };
        let names = match &e.names {
            None => None,
            Some(list) => {
                let field = format!("{f}.names");
                for (i, n) in list.get_ref().iter().enumerate() {
                    if n.get_ref().is_empty() {
                        return Err(self.err(
                            n.span(),
                            &format!("{field}[{i}]"),
                            "empty name; omit names to match any name",
                        ));
                    }
                }
                Some(self.globs(list, &field, &NAME)?)
            }
        };
        Ok(ResourceEntry {
            span: spec.span(),
            verbs,
            api_groups,
            resources,
            namespaces,
            names,
        })
    }

    fn resource_part(&self, part: &str, at: &Spanned<String>, field: &str) -> Result<Glob> {
        if part.is_empty() {
            return Err(self.err(
                at.span(),
                field,
                "expected \"resource\" or \"resource/subresource\"",
            ));
        }
        let g = Glob::new(part);
        RESOURCE
            .check(&g)
            .map_err(|m| self.err(at.span(), field, m))?;
        Ok(g)
    }

    fn verbs(
        &self,
        list: &List,
        field: &str,
        known: &[&str],
        what: &str,
        bit: fn(&str) -> Option<usize>,
    ) -> Result<VerbSet> {
        self.non_empty(list, field)?;
        let mut set = VerbSet::default();
        for (i, v) in list.get_ref().iter().enumerate() {
            if v.get_ref() == "*" {
                set.all = true;
                continue;
            }
            match bit(v.get_ref()) {
                Some(b) => set.bits |= 1 << b,
                None => {
                    return Err(self.err(
                        v.span(),
                        &format!("{field}[{i}]"),
                        format!(
                            "unknown {what} {:?}; expected one of {} or \"*\"",
                            v.get_ref(),
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(set)
    }

    fn paths(&self, list: &Spanned<Vec<Spanned<PathSpec>>>) -> Result<Vec<PathEntry>> {
        if list.get_ref().is_empty() {
            return Err(self.err(list.span(), "paths", "list must not be empty"));
        }
        let mut out = Vec::new();
        for (i, e) in list.get_ref().iter().enumerate() {
            let e = e.get_ref();
            let f = format!("paths[{i}]");
            let path = normalize_path(e.path.get_ref()).map_err(|err| {
                self.err(
                    e.path.span(),
                    &format!("{f}.path"),
                    format!("path is not canonical: {err}"),
                )
            })?;
            let methods = match &e.methods {
                None => VerbSet { bits: 0, all: true },
                Some(m) => {
                    self.verbs(m, &format!("{f}.methods"), &METHODS, "method", method_bit)?
                }
            };
            out.push(PathEntry {
                segments: path.segments().to_vec(),
                prefix: e.prefix,
                methods,
                resource_path: matches!(
                    resolve("GET", &path, None),
                    RequestAttributes::Resource(_)
                )
                .then(|| e.path.span()),
            });
        }
        Ok(out)
    }
}
