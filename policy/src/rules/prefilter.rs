//! The prefilter for the rules the literal index cannot key: rules whose
//! subjects are globs, claims or `authenticated`, limited to namespace globs
//! or to no namespace at all. Without it a policy of 1,000 such rules makes
//! every decision evaluate hundreds of them one by one.
//!
//! Every glob is filed under its literal anchor (see [`Glob::anchor`]): exact
//! values and prefixes in a byte trie walked forwards, suffixes in one walked
//! backwards. A request then marks, per dimension (subject, namespace,
//! resource, API group), the rules that could match it in a bit set, and the
//! sets are intersected. A set bit is only a candidate: the decision still
//! evaluates the whole rule, so the prefilter can only make rules cheaper to
//! skip, never change what matches. Bits are positions in file order, which
//! keeps the decision's first-allow order exact.

use crate::glob::{Anchor, Glob};
use crate::request::ResourceAttributes;
use crate::subject::Subject;

use super::model::{NamespacePattern, ResourcePattern, Rule, Target};

/// Bit sets up to this many words live on the stack during a decision
/// (4,096 prefiltered rules); larger policies allocate.
const STACK_WORDS: usize = 64;

#[derive(Debug, Default)]
struct Node {
    /// Sorted by byte.
    edges: Vec<(u8, u32)>,
    /// Positions of patterns whose literal prefix (suffix, backwards) ends here.
    anchored: Hits,
    /// Positions of exact patterns equal to the path to this node.
    exact: Hits,
}

/// Positions to mark: a list while building and while sparse, a bit set
/// once dense (`""` API group, `pods`: hundreds of rules), where or-ing words
/// beats setting bits one by one, in no more memory.
#[derive(Debug)]
enum Hits {
    Sparse(Vec<u32>),
    Dense(Vec<u64>),
}

impl Default for Hits {
    fn default() -> Self {
        Hits::Sparse(Vec::new())
    }
}

impl Hits {
    fn push(&mut self, pos: u32) {
        match self {
            Hits::Sparse(v) => v.push(pos),
            Hits::Dense(bits) => set(bits, &[pos]),
        }
    }

    fn mark(&self, out: &mut [u64]) {
        match self {
            Hits::Sparse(v) => set(out, v),
            Hits::Dense(bits) => {
                for (o, b) in out.iter_mut().zip(bits) {
                    *o |= b;
                }
            }
        }
    }

    fn freeze(&mut self, words: usize) {
        if let Hits::Sparse(v) = self {
            if v.len() >= 2 * words {
                let mut bits = vec![0; words];
                set(&mut bits, v);
                *self = Hits::Dense(bits);
            } else {
                v.shrink_to_fit();
            }
        }
    }
}

#[derive(Debug)]
struct Trie {
    nodes: Vec<Node>,
}

impl Default for Trie {
    fn default() -> Self {
        Trie {
            nodes: vec![Node::default()],
        }
    }
}

impl Trie {
    fn node(&mut self, key: impl Iterator<Item = u8>) -> &mut Node {
        let mut at = 0;
        for b in key {
            at = match self.nodes[at].edges.binary_search_by_key(&b, |e| e.0) {
                Ok(i) => self.nodes[at].edges[i].1 as usize,
                Err(i) => {
                    let next = self.nodes.len();
                    let id = u32::try_from(next).expect("fewer than 2^32 trie nodes");
                    self.nodes.push(Node::default());
                    self.nodes[at].edges.insert(i, (b, id));
                    next
                }
            };
        }
        &mut self.nodes[at]
    }

    /// Marks the anchored positions of every node on `value`'s path, and the
    /// exact ones at its end.
    fn mark(&self, value: impl Iterator<Item = u8>, out: &mut [u64]) {
        let mut node = &self.nodes[0];
        node.anchored.mark(out);
        for b in value {
            match node.edges.binary_search_by_key(&b, |e| e.0) {
                Ok(i) => node = &self.nodes[node.edges[i].1 as usize],
                Err(_) => return,
            }
            node.anchored.mark(out);
        }
        node.exact.mark(out);
    }

    fn freeze(&mut self, words: usize) {
        self.nodes.shrink_to_fit();
        for n in &mut self.nodes {
            n.edges.shrink_to_fit();
            n.anchored.freeze(words);
            n.exact.freeze(words);
        }
    }
}

fn set(out: &mut [u64], positions: &[u32]) {
    for &p in positions {
        out[p as usize / 64] |= 1 << (p % 64);
    }
}

/// One dimension: the positions that match any value, and the anchored globs.
#[derive(Debug)]
struct Dim {
    always: Vec<u64>,
    forward: Trie,
    backward: Trie,
}

impl Dim {
    fn new(words: usize) -> Dim {
        Dim {
            always: vec![0; words],
            forward: Trie::default(),
            backward: Trie::default(),
        }
    }

    fn always(&mut self, pos: u32) {
        set(&mut self.always, &[pos]);
    }

    fn insert(&mut self, glob: &Glob, pos: u32) {
        match glob.anchor() {
            Anchor::Any => self.always(pos),
            Anchor::Exact(s) => self.forward.node(s.bytes()).exact.push(pos),
            Anchor::Prefix(s) => self.forward.node(s.bytes()).anchored.push(pos),
            Anchor::Suffix(s) => self.backward.node(s.bytes().rev()).anchored.push(pos),
        }
    }

    /// Marks the globs `value` may match (not `always`).
    fn mark(&self, value: &str, out: &mut [u64]) {
        self.forward.mark(value.bytes(), out);
        self.backward.mark(value.bytes().rev(), out);
    }

    /// `out &= self(value)`, with `tmp` as scratch.
    fn narrow(&self, value: &str, out: &mut [u64], tmp: &mut [u64]) {
        tmp.copy_from_slice(&self.always);
        self.mark(value, tmp);
        for (o, t) in out.iter_mut().zip(tmp.iter()) {
            *o &= t;
        }
    }

    fn freeze(&mut self, words: usize) {
        self.forward.freeze(words);
        self.backward.freeze(words);
    }
}

/// The prefilter over one kind of rule (resource or path rules).
#[derive(Debug)]
pub(crate) struct Prefilter {
    /// Rule ids by position, ascending (file order).
    ids: Vec<u32>,
    /// Positive subject selectors: `users` globs here, with `authenticated`
    /// and claims in `always` (they are not narrowed).
    users: Dim,
    /// `groups` globs; its `always` is unused (`users.always` holds them all).
    groups: Dim,
    namespaces: Dim,
    resources: Dim,
    api_groups: Dim,
}

impl Prefilter {
    /// `ids` ascending, all of one kind.
    pub(crate) fn build(rules: &[Rule], ids: Vec<u32>) -> Prefilter {
        let words = ids.len().div_ceil(64);
        let mut p = Prefilter {
            ids: Vec::new(),
            users: Dim::new(words),
            groups: Dim::new(words),
            namespaces: Dim::new(words),
            resources: Dim::new(words),
            api_groups: Dim::new(words),
        };
        for (pos, &id) in ids.iter().enumerate() {
            let pos = u32::try_from(pos).expect("fewer than 2^32 rules");
            let rule = &rules[id as usize];
            let s = &rule.subjects;
            if s.authenticated || !s.claims.is_empty() {
                p.users.always(pos);
            }
            for g in &s.users {
                p.users.insert(g, pos);
            }
            for g in &s.groups {
                // A group `*` is filed with the user wildcards: one `always` set.
                match g.anchor() {
                    Anchor::Any => p.users.always(pos),
                    _ => p.groups.insert(g, pos),
                }
            }
            let Target::Resources(entries) = &rule.target else {
                continue;
            };
            for e in entries {
                match &e.namespaces {
                    None => p.namespaces.always(pos),
                    Some(nss) => {
                        for ns in nss {
                            match ns {
                                NamespacePattern::None => {
                                    p.namespaces.forward.node("".bytes()).exact.push(pos);
                                }
                                NamespacePattern::Glob(g) => p.namespaces.insert(g, pos),
                            }
                        }
                    }
                }
                for r in &e.resources {
                    match r {
                        ResourcePattern::All => p.resources.always(pos),
                        ResourcePattern::Plain(g) | ResourcePattern::Sub(g, _) => {
                            p.resources.insert(g, pos);
                        }
                    }
                }
                for g in &e.api_groups {
                    p.api_groups.insert(g, pos);
                }
            }
        }
        for d in [
            &mut p.users,
            &mut p.groups,
            &mut p.namespaces,
            &mut p.resources,
            &mut p.api_groups,
        ] {
            d.freeze(words);
        }
        p.ids = ids;
        p
    }

    /// A bit set over this prefilter's positions with the given rule ids set
    /// (ids not prefiltered here are ignored).
    pub(crate) fn mask(&self, ids: &[u32]) -> Vec<u64> {
        let mut out = vec![0; self.ids.len().div_ceil(64)];
        for id in ids {
            if let Ok(pos) = self.ids.binary_search(id) {
                out[pos / 64] |= 1 << (pos % 64);
            }
        }
        out
    }

    /// Calls `visit` with the id of every rule in `mask` that may match
    /// `subject` and `resource` (`None` for a non-resource request), in file
    /// order, until it returns `Some`.
    pub(crate) fn find_map<T>(
        &self,
        mask: &[u64],
        subject: &Subject,
        resource: Option<&ResourceAttributes>,
        mut visit: impl FnMut(u32) -> Option<T>,
    ) -> Option<T> {
        let words = mask.len();
        let mut stack = [0u64; 2 * STACK_WORDS];
        let mut heap = Vec::new();
        let buf: &mut [u64] = if words <= STACK_WORDS {
            &mut stack[..2 * words]
        } else {
            heap.resize(2 * words, 0);
            &mut heap
        };
        let (acc, tmp) = buf.split_at_mut(words);

        acc.copy_from_slice(&self.users.always);
        self.users.mark(&subject.user, acc);
        for g in &subject.groups {
            self.groups.mark(g, acc);
        }
        for (a, m) in acc.iter_mut().zip(mask) {
            *a &= m;
        }
        if let Some(r) = resource {
            self.namespaces.narrow(&r.namespace, acc, tmp);
            self.resources.narrow(&r.resource, acc, tmp);
            self.api_groups.narrow(&r.api_group, acc, tmp);
        }

        for (w, &word) in acc.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let pos = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if let Some(t) = visit(self.ids[pos]) {
                    return Some(t);
                }
            }
        }
        None
    }
}
