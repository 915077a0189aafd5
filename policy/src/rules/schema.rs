//! The policy file as written: serde types, unknown fields rejected, spans
//! kept so validation can point at the offending text.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub(crate) type List = Spanned<Vec<Spanned<String>>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyFile {
    pub(crate) default: Option<Spanned<String>>,
    #[serde(default, rename = "rule")]
    pub(crate) rules: Vec<Spanned<RuleSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleSpec {
    pub(crate) name: Spanned<String>,
    /// Free text for humans; ignored by the engine.
    #[allow(dead_code)]
    pub(crate) description: Option<String>,
    pub(crate) effect: Spanned<String>,
    pub(crate) subjects: Spanned<SubjectsSpec>,
    pub(crate) resources: Option<Spanned<Vec<Spanned<ResourceSpec>>>>,
    pub(crate) paths: Option<Spanned<Vec<Spanned<PathSpec>>>>,
    pub(crate) as_user: Option<Spanned<String>>,
    pub(crate) as_groups: Option<List>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubjectsSpec {
    pub(crate) users: Option<List>,
    pub(crate) groups: Option<List>,
    pub(crate) claims: Option<Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
    pub(crate) authenticated: Option<Spanned<bool>>,
    pub(crate) not_users: Option<List>,
    pub(crate) not_groups: Option<List>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResourceSpec {
    pub(crate) api_groups: List,
    pub(crate) resources: List,
    pub(crate) namespaces: Option<List>,
    pub(crate) names: Option<List>,
    pub(crate) verbs: List,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PathSpec {
    pub(crate) path: Spanned<String>,
    #[serde(default)]
    pub(crate) prefix: bool,
    pub(crate) methods: Option<List>,
}

/// Used only after a strict parse failed, to name the rule an error is in.
#[derive(Debug, Deserialize)]
pub(crate) struct LenientFile {
    #[serde(default)]
    pub(crate) rule: Vec<Spanned<toml::Value>>,
}
