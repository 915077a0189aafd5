//! The rule index and the decision procedure.
//!
//! Rules are bucketed by verb (resource rules) or method (path rules), and
//! inside a bucket by literal user and group names, so a decision only looks
//! at rules that could name this subject: the ones keyed by its user or one
//! of its groups, plus the "general" ones (globs, claims, authenticated).
//! General resource rules limited to literal namespaces are further keyed by
//! namespace, so "everyone authenticated gets X in namespace N" policies
//! scale too. When a verb's general rules are many, the [`Prefilter`] picks
//! out the ones whose subject, namespace, resource and API group globs could
//! match before any is evaluated. Candidates are visited in file order, which
//! keeps the first-allow-wins semantics exact.

use foldhash::HashMap;
use std::sync::Arc;

use crate::path::normalize_path;
use crate::request::{RequestAttributes, ResourceAttributes};
use crate::subject::{ForwardIdentity, Subject};

use super::model::{Effect, METHODS, Rule, Target, VERBS, method_bit, verb_bit};
use super::prefilter::Prefilter;

/// A bucket with at least this many general rules goes through the
/// prefilter; below it, evaluating them one by one is cheaper.
pub(crate) const MIN_PREFILTERED: usize = 16;

#[derive(Debug, Default)]
struct Bucket {
    general: Vec<u32>,
    /// `general` as a set over the prefilter's positions, when it is used.
    general_mask: Option<Vec<u64>>,
    general_by_ns: HashMap<String, Vec<u32>>,
    by_user: HashMap<String, Vec<u32>>,
    by_group: HashMap<String, Vec<u32>>,
}

/// Buckets 0..VERBS.len() (resource) / 0..METHODS.len() (path) by bit; the
/// last bucket is for verbs outside the list, reachable only through `*`.
#[derive(Debug, Default)]
pub(crate) struct Index {
    resource: Vec<Bucket>,
    path: Vec<Bucket>,
    /// Over the general resource (path) rules, when some bucket has at least
    /// the threshold of them.
    resource_filter: Option<Prefilter>,
    path_filter: Option<Prefilter>,
}

impl Index {
    pub(crate) fn build(rules: &[Rule]) -> Index {
        Index::with_threshold(rules, MIN_PREFILTERED)
    }

    /// `min_prefiltered`: see [`MIN_PREFILTERED`] (tests use 0 to send every
    /// general rule through the prefilter).
    pub(crate) fn with_threshold(rules: &[Rule], min_prefiltered: usize) -> Index {
        let mut index = Index {
            resource: (0..=VERBS.len()).map(|_| Bucket::default()).collect(),
            path: (0..=METHODS.len()).map(|_| Bucket::default()).collect(),
            resource_filter: None,
            path_filter: None,
        };
        for (i, rule) in rules.iter().enumerate() {
            let i = u32::try_from(i).expect("fewer than 2^32 rules");
            let (buckets, sets): (&mut Vec<Bucket>, Vec<_>) = match &rule.target {
                Target::Resources(es) => {
                    (&mut index.resource, es.iter().map(|e| e.verbs).collect())
                }
                Target::Paths(es) => (&mut index.path, es.iter().map(|e| e.methods).collect()),
            };
            let keys = rule.subjects.literal_keys();
            let namespaces = rule.target.literal_namespaces();
            let n = buckets.len();
            for (b, bucket) in buckets.iter_mut().enumerate() {
                let bit = (b < n - 1).then_some(b);
                if !sets.iter().any(|s| s.contains(bit)) {
                    continue;
                }
                match (&keys, &namespaces) {
                    (None, None) => bucket.general.push(i),
                    (None, Some(nss)) => {
                        for ns in nss {
                            push_once(bucket.general_by_ns.entry((*ns).to_owned()).or_default(), i);
                        }
                    }
                    (Some((users, groups)), _) => {
                        for u in users {
                            push_once(bucket.by_user.entry((*u).to_owned()).or_default(), i);
                        }
                        for g in groups {
                            push_once(bucket.by_group.entry((*g).to_owned()).or_default(), i);
                        }
                    }
                }
            }
        }
        index.resource_filter = prefilter(rules, &mut index.resource, min_prefiltered);
        index.path_filter = prefilter(rules, &mut index.path, min_prefiltered);
        index
    }
}

/// Builds the prefilter over the buckets' general rules if any bucket has
/// at least `min` of them, and the masks of those buckets.
fn prefilter(rules: &[Rule], buckets: &mut [Bucket], min: usize) -> Option<Prefilter> {
    if !buckets
        .iter()
        .any(|b| !b.general.is_empty() && b.general.len() >= min)
    {
        return None;
    }
    let mut ids: Vec<u32> = buckets.iter().flat_map(|b| b.general.clone()).collect();
    ids.sort_unstable();
    ids.dedup();
    let filter = Prefilter::build(rules, ids);
    for b in buckets {
        if !b.general.is_empty() && b.general.len() >= min {
            b.general_mask = Some(filter.mask(&b.general));
        }
    }
    Some(filter)
}

fn push_once(v: &mut Vec<u32>, i: u32) {
    if v.last() != Some(&i) {
        v.push(i);
    }
}

/// Outcome of [`crate::Policy::decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may be forwarded.
    pub allowed: bool,
    /// The deciding rule: the first matching deny rule, else the first
    /// matching allow rule; `None` when nothing matched (default deny).
    pub rule: Option<String>,
    /// Who to forward as (rendered); `Some` exactly when allowed. Shared, because the
    /// request, its audit record and its log line all keep it.
    pub forward_as: Option<Arc<ForwardIdentity>>,
}

impl Decision {
    /// `allowed by rule "x"`, `denied by rule "x"` or `no rule allowed`.
    pub fn reason(&self) -> String {
        match (&self.rule, self.allowed) {
            (Some(r), true) => format!("allowed by rule {r:?}"),
            (Some(r), false) => format!("denied by rule {r:?}"),
            (None, _) => "no rule allowed".to_owned(),
        }
    }
}

pub(crate) fn decide(
    rules: &[Rule],
    index: &Index,
    subject: &Subject,
    attrs: &RequestAttributes,
) -> Decision {
    let segments;
    let mut resource = None;
    let (bucket, filter, target) = match attrs {
        RequestAttributes::Resource(r) => {
            let bit = verb_bit(&r.verb);
            let b = &index.resource[bit.unwrap_or(VERBS.len())];
            resource = Some(r);
            (b, &index.resource_filter, Req::Resource(r, bit))
        }
        RequestAttributes::NonResource(n) => {
            // Re-validated here because attributes are plain data; a path
            // that is not canonical matches no path rule.
            segments = match normalize_path(&n.path) {
                Ok(p) => p.segments().to_vec(),
                Err(_) => return Decision::no_rule(),
            };
            let bit = method_bit(&n.verb);
            let b = &index.path[bit.unwrap_or(METHODS.len())];
            (b, &index.path_filter, Req::Path(&segments, bit))
        }
    };

    let mut first_allow: Option<(u32, ForwardIdentity)> = None;
    let mut visit = |i: u32| -> Option<Decision> {
        let rule = &rules[i as usize];
        if rule.effect == Effect::Allow && first_allow.is_some() {
            return None;
        }
        if !rule.subjects.matches(subject) || !target.matches(rule) {
            return None;
        }
        match rule.effect {
            Effect::Deny => Some(Decision {
                allowed: false,
                rule: Some(rule.name.clone()),
                forward_as: None,
            }),
            Effect::Allow => {
                if let Some(fwd) = rule.forward(subject) {
                    first_allow = Some((i, fwd));
                }
                None
            }
        }
    };

    let user_hits = bucket.by_user.get(subject.user.as_str());
    let group_hits: Vec<&Vec<u32>> = subject
        .groups
        .iter()
        .filter_map(|g| bucket.by_group.get(g.as_str()))
        .collect();
    let ns_hits = resource.and_then(|r| bucket.general_by_ns.get(r.namespace.as_str()));
    let filtered = filter.as_ref().zip(bucket.general_mask.as_deref());
    if user_hits.is_none() && group_hits.is_empty() && ns_hits.is_none() {
        // Common case: only general rules, already in file order.
        let decided = match filtered {
            Some((f, mask)) => f.find_map(mask, subject, resource, &mut visit),
            None => bucket.general.iter().find_map(|&i| visit(i)),
        };
        if let Some(d) = decided {
            return d;
        }
    } else {
        let mut cands: Vec<u32> = match filtered {
            Some((f, mask)) => {
                let mut out = Vec::new();
                f.find_map(mask, subject, resource, |i| {
                    out.push(i);
                    None::<()>
                });
                out
            }
            None => bucket.general.clone(),
        };
        cands.extend(user_hits.into_iter().flatten());
        cands.extend(group_hits.into_iter().flatten());
        cands.extend(ns_hits.into_iter().flatten());
        cands.sort_unstable();
        cands.dedup();
        for i in cands {
            if let Some(d) = visit(i) {
                return d;
            }
        }
    }
    match first_allow {
        Some((i, fwd)) => Decision {
            allowed: true,
            rule: Some(rules[i as usize].name.clone()),
            forward_as: Some(Arc::new(fwd)),
        },
        None => Decision::no_rule(),
    }
}

enum Req<'a> {
    Resource(&'a ResourceAttributes, Option<usize>),
    Path(&'a [compact_str::CompactString], Option<usize>),
}

impl Req<'_> {
    fn matches(&self, rule: &Rule) -> bool {
        match self {
            Req::Resource(r, bit) => rule.matches_resource(r, *bit),
            Req::Path(segs, bit) => rule.matches_path(segs, *bit),
        }
    }
}

impl Decision {
    fn no_rule() -> Decision {
        Decision {
            allowed: false,
            rule: None,
            forward_as: None,
        }
    }
}
