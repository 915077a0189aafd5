//! CEL as the API server's claim rules use it: one shared environment, and the load-time
//! checks that make a compiled expression safe to run on every token.
//!
//! The `cel` crate parses and evaluates but has no type checker and no cost tracking, so
//! this module walks each compiled program once: every variable must be `claims` (or
//! `user` for user validation rules) or bound by a macro, every function must be one the
//! environment has, the result's shape must fit the field when the expression's form
//! decides it (a string literal is not a boolean rule), and a worst-case cost estimate
//! must stay under [`COST_LIMIT`]. Input sizes are bounded because a token is at most
//! [`MAX_INPUT_BYTES`]: no list in the claims has more elements, no string more bytes.

use std::sync::{Arc, LazyLock};

use ::cel::common::ast::{Expr, IdedExpr, LiteralValue};
use ::cel::{Env, Program};

/// The largest token the gateway reads (`gateway/src/authn`): no claim string is longer
/// and no claim list has more elements.
pub const MAX_INPUT_BYTES: u64 = 16 * 1024;

/// Most elements a list in the claims can hold ("[1,1,...]" needs two bytes each).
const MAX_LIST: u64 = MAX_INPUT_BYTES / 2;

/// A string function's cost per started 256 bytes of its input.
const STRING_CHUNK: u64 = 256;

/// Most estimated cost units one expression may take: room for a pass over every claim
/// list element with a string function each (`claims.groups.map(g, g.lowerAscii())`), not
/// for a pass inside a pass.
pub const COST_LIMIT: u64 = 1_000_000;

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    // Both extensions declare fresh names only; failing would be a bug in the crate
    // versions pinned together, caught by every test that compiles an expression.
    let _ = env.add_extension(::cel::extensions::strings);
    let _ = env.add_extension(::cel::extensions::lists);
    Arc::new(env)
});

pub(crate) fn env() -> Arc<Env> {
    ENV.clone()
}

/// Which variables an expression may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Claim validation rules and claim mappings: `claims`.
    Claims,
    /// User validation rules: `user`.
    User,
}

/// What an expression evaluates to, as far as its form tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    String,
    Number,
    List,
    Map,
    Null,
    Optional,
    /// Decided by the claims at request time.
    Dyn,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Bool => "bool",
            Kind::String => "string",
            Kind::Number => "number",
            Kind::List => "list",
            Kind::Map => "map",
            Kind::Null => "null",
            Kind::Optional => "optional",
            Kind::Dyn => "dyn",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) program: Program,
    pub(crate) cost: u64,
}

/// Compiles and checks one expression; the error completes "expression "..." ...".
pub(crate) fn compile(source: &str, scope: Scope, want: &[Kind]) -> Result<Compiled, String> {
    let program = ENV.compile(source).map_err(|e| {
        let first = e.errors.first().map_or_else(
            || e.to_string(),
            |p| format!("at column {}: {}", p.pos.1 + 1, p.msg),
        );
        format!("does not compile: {first}")
    })?;
    let mut walk = Walk {
        scope,
        bound: Vec::new(),
        accumulators: Vec::new(),
    };
    let (kind, cost) = walk.expr(program.expression())?;
    if kind != Kind::Dyn && !want.contains(&kind) {
        let names: Vec<_> = want.iter().map(|k| k.name()).collect();
        return Err(format!(
            "evaluates to {}, but this field needs {}",
            kind.name(),
            names.join(" or ")
        ));
    }
    if cost.cost > COST_LIMIT {
        return Err(format!(
            "is too expensive: its estimated worst-case cost {} exceeds the limit {COST_LIMIT} (a pass inside a pass over claim lists?)",
            cost.cost
        ));
    }
    Ok(Compiled {
        program,
        cost: cost.cost,
    })
}

/// Whether the program reads `claims.<name>` (plain, optional or `has()` access).
pub(crate) fn reads_claim(program: &Program, name: &str) -> bool {
    fn visit(e: &IdedExpr, name: &str) -> bool {
        match &e.expr {
            Expr::Select(s) => {
                (s.field == name && matches!(&s.operand.expr, Expr::Ident(i) if i == "claims"))
                    || visit(&s.operand, name)
            }
            Expr::Call(c) => {
                let optional = c.func_name == "_?._"
                    && matches!(c.args.first().map(|a| &a.expr), Some(Expr::Ident(i)) if i == "claims")
                    && matches!(c.args.get(1).map(|a| &a.expr), Some(Expr::Literal(LiteralValue::String(s))) if s.inner() == name);
                let index = c.func_name == "_[_]"
                    && matches!(c.args.first().map(|a| &a.expr), Some(Expr::Ident(i)) if i == "claims")
                    && matches!(c.args.get(1).map(|a| &a.expr), Some(Expr::Literal(LiteralValue::String(s))) if s.inner() == name);
                optional
                    || index
                    || c.target.as_deref().is_some_and(|t| visit(t, name))
                    || c.args.iter().any(|a| visit(a, name))
            }
            Expr::Comprehension(c) => [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ]
            .into_iter()
            .any(|x| visit(x, name)),
            Expr::List(l) => l.elements.iter().any(|x| visit(x, name)),
            Expr::Map(m) => m.entries.iter().any(|en| match &en.expr {
                ::cel::common::ast::EntryExpr::MapEntry(me) => {
                    visit(&me.key, name) || visit(&me.value, name)
                }
                ::cel::common::ast::EntryExpr::StructField(f) => visit(&f.value, name),
            }),
            _ => false,
        }
    }
    visit(program.expression(), name)
}

/// A worst-case estimate: the cost of evaluating, and the size (bytes or elements) of the
/// value produced.
#[derive(Debug, Clone, Copy)]
struct Cost {
    cost: u64,
    size: u64,
}

impl Cost {
    fn unit(size: u64) -> Self {
        Cost { cost: 1, size }
    }
}

/// Functions whose cost grows with their input's size.
const LINEAR: &[&str] = &[
    "lowerAscii",
    "upperAscii",
    "split",
    "join",
    "replace",
    "trim",
    "matches",
    "contains",
    "indexOf",
    "lastIndexOf",
    "format",
    "reverse",
    "substring",
    "string",
    "quote",
    "charAt",
    "_+_",
    "@in",
    "_==_",
    "_!=_",
    "sort",
    "distinct",
    "flatten",
    "slice",
];

/// Every function an expression may call, with the kind it returns (`None`: the kind of
/// its argument or receiver, or dyn). Operators are named as the parser spells them.
fn function_kind(name: &str) -> Option<Option<Kind>> {
    use Kind::*;
    Some(match name {
        "_==_"
        | "_!=_"
        | "_<_"
        | "_<=_"
        | "_>_"
        | "_>=_"
        | "_&&_"
        | "_||_"
        | "!_"
        | "@in"
        | "@not_strictly_false"
        | "startsWith"
        | "endsWith"
        | "contains"
        | "matches"
        | "hasValue"
        | "bool" => Some(Bool),
        "lowerAscii" | "upperAscii" | "trim" | "replace" | "substring" | "charAt" | "join"
        | "format" | "reverse" | "string" | "strings.quote" => Some(String),
        "split" | "sort" | "distinct" | "flatten" | "slice" | "lists.range" => Some(List),
        "size" | "int" | "uint" | "double" | "indexOf" | "lastIndexOf" | "_-_" | "_*_" | "_/_"
        | "_%_" | "-_" => Some(Number),
        "_?._" | "_[?_]" | "optional.of" | "optional.none" | "optional.ofNonZeroValue" | "or" => {
            Some(Optional)
        }
        "_+_" | "_?_:_" | "orValue" | "_[_]" | "value" | "dyn" | "type" => None,
        _ => return None,
    })
}

struct Walk {
    scope: Scope,
    /// Variables bound by enclosing macros, with the size bound of their values.
    bound: Vec<(String, Kind, u64)>,
    /// The macros' accumulators: appending to one is the macro's own amortised step.
    accumulators: Vec<String>,
}

impl Walk {
    fn expr(&mut self, e: &IdedExpr) -> Result<(Kind, Cost), String> {
        Ok(match &e.expr {
            Expr::Unspecified => return Err("has an empty sub-expression".into()),
            Expr::Literal(l) => (
                match l {
                    LiteralValue::Boolean(_) => Kind::Bool,
                    LiteralValue::String(_) | LiteralValue::Bytes(_) => Kind::String,
                    LiteralValue::Null => Kind::Null,
                    _ => Kind::Number,
                },
                Cost::unit(match l {
                    LiteralValue::String(s) => s.len() as u64,
                    _ => 1,
                }),
            ),
            Expr::Ident(name) => {
                if let Some((_, kind, size)) = self.bound.iter().rev().find(|(n, ..)| n == name) {
                    (*kind, Cost::unit(*size))
                } else {
                    match (name.as_str(), self.scope) {
                        ("claims", Scope::Claims) | ("user", Scope::User) => {
                            (Kind::Map, Cost::unit(MAX_INPUT_BYTES))
                        }
                        ("claims", Scope::User) => {
                            return Err(
                                "reads claims, but user validation rules see only user".into()
                            );
                        }
                        ("user", Scope::Claims) => {
                            return Err("reads user, which only user validation rules see".into());
                        }
                        _ => {
                            return Err(format!(
                                "reads an undeclared variable {name:?} (only claims and user exist)"
                            ));
                        }
                    }
                }
            }
            Expr::Select(s) => {
                let (_, c) = self.expr(&s.operand)?;
                let kind = if s.test { Kind::Bool } else { Kind::Dyn };
                (
                    kind,
                    Cost {
                        cost: c.cost + 1,
                        size: c.size,
                    },
                )
            }
            Expr::List(l) => {
                let mut cost = 1u64;
                let mut size = 0u64;
                for x in &l.elements {
                    let (_, c) = self.expr(x)?;
                    cost = cost.saturating_add(c.cost);
                    size = size.saturating_add(c.size.max(1));
                }
                (Kind::List, Cost { cost, size })
            }
            Expr::Map(m) => {
                let mut cost = 1u64;
                for en in &m.entries {
                    if let ::cel::common::ast::EntryExpr::MapEntry(me) = &en.expr {
                        cost = cost
                            .saturating_add(self.expr(&me.key)?.1.cost)
                            .saturating_add(self.expr(&me.value)?.1.cost);
                    } else {
                        return Err("builds a message type, which claim rules have none of".into());
                    }
                }
                (
                    Kind::Map,
                    Cost {
                        cost,
                        size: MAX_INPUT_BYTES,
                    },
                )
            }
            Expr::Struct(_) => {
                return Err("builds a message type, which claim rules have none of".into());
            }
            Expr::Comprehension(c) => {
                let (_, range) = self.expr(&c.iter_range)?;
                let iterations = range.size.clamp(1, MAX_LIST);
                let (accu_kind, init) = self.expr(&c.accu_init)?;
                // The elements share the range's size: charging each iteration for an
                // even share bounds the total of any cost linear in the element.
                let element = range.size.div_ceil(iterations).max(1);
                self.bound.push((c.iter_var.clone(), Kind::Dyn, element));
                if let Some(v2) = &c.iter_var2 {
                    self.bound.push((v2.clone(), Kind::Dyn, element));
                }
                self.bound
                    .push((c.accu_var.clone(), accu_kind, MAX_INPUT_BYTES));
                self.accumulators.push(c.accu_var.clone());
                let cond = self.expr(&c.loop_cond);
                let step = self.expr(&c.loop_step);
                let result = self.expr(&c.result);
                self.bound
                    .truncate(self.bound.len() - 2 - usize::from(c.iter_var2.is_some()));
                self.accumulators.pop();
                let (_, cond) = cond?;
                let (_, step) = step?;
                let (kind, result) = result?;
                let per = cond.cost.saturating_add(step.cost);
                let cost = range
                    .cost
                    .saturating_add(init.cost)
                    .saturating_add(iterations.saturating_mul(per))
                    .saturating_add(result.cost);
                (
                    kind,
                    Cost {
                        cost,
                        size: MAX_INPUT_BYTES,
                    },
                )
            }
            Expr::Call(call) => {
                let name = call.func_name.as_str();
                let Some(returns) = function_kind(name) else {
                    return Err(format!("calls an unknown function {name:?}"));
                };
                let mut cost = 1u64;
                let mut input = 0u64;
                let mut kinds = Vec::new();
                if let Some(t) = &call.target {
                    let (k, c) = self.expr(t)?;
                    cost = cost.saturating_add(c.cost);
                    input = input.saturating_add(c.size);
                    kinds.push(k);
                }
                for a in &call.args {
                    let (k, c) = self.expr(a)?;
                    cost = cost.saturating_add(c.cost);
                    input = input.saturating_add(c.size);
                    kinds.push(k);
                }
                let appends_to_accumulator = name == "_+_"
                    && call.args.iter().any(
                        |a| matches!(&a.expr, Expr::Ident(i) if self.accumulators.contains(i)),
                    );
                if LINEAR.contains(&name) && !appends_to_accumulator {
                    cost = cost.saturating_add(input.div_ceil(STRING_CHUNK));
                }
                let kind = returns.unwrap_or_else(|| match name {
                    "_+_" if kinds.contains(&Kind::String) => Kind::String,
                    "_+_" if kinds.contains(&Kind::List) => Kind::List,
                    "_?_:_" if kinds.len() == 3 && kinds[1] == kinds[2] => kinds[1],
                    "orValue" => kinds.get(1).copied().unwrap_or(Kind::Dyn),
                    _ => Kind::Dyn,
                });
                (
                    kind,
                    Cost {
                        cost,
                        size: input.clamp(1, MAX_INPUT_BYTES),
                    },
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(src: &str, want: &[Kind]) -> Result<u64, String> {
        compile(src, Scope::Claims, want).map(|c| c.cost)
    }

    #[test]
    fn practical_expressions_compile() {
        for src in [
            "claims.sub",
            "claims.email.split('@')[0].lowerAscii()",
            "'kg:' + claims.sub",
            "claims.?name.orValue(claims.sub)",
            "has(claims.hd) ? claims.hd : 'none'",
        ] {
            check(src, &[Kind::String]).unwrap_or_else(|e| panic!("{src}: {e}"));
        }
        for src in [
            "claims.groups.filter(g, g.startsWith('kg:'))",
            "claims.groups.map(g, g.lowerAscii())",
            "claims.roles.split(',')",
        ] {
            check(src, &[Kind::List]).unwrap_or_else(|e| panic!("{src}: {e}"));
        }
        for src in [
            "claims.groups.all(g, g != 'x')",
            "claims.groups.exists(g, g == 'x')",
            "claims.?email_verified.orValue(false) == true",
        ] {
            check(src, &[Kind::Bool]).unwrap_or_else(|e| panic!("{src}: {e}"));
        }
    }

    #[test]
    fn wrong_result_kinds_unknown_names_and_cost_bombs_are_refused() {
        let e = check("'alice'", &[Kind::Bool]).unwrap_err();
        assert!(
            e.contains("evaluates to string, but this field needs bool"),
            "{e}"
        );
        let e = check("claims.sub == 'a'", &[Kind::String]).unwrap_err();
        assert!(e.contains("evaluates to bool"), "{e}");
        let e = check("request.user", &[Kind::String]).unwrap_err();
        assert!(e.contains("undeclared variable"), "{e}");
        let e = check("claims.sub.frobnicate()", &[Kind::String]).unwrap_err();
        assert!(e.contains("unknown function \"frobnicate\""), "{e}");
        let e = check("claims.sub +", &[Kind::String]).unwrap_err();
        assert!(e.contains("does not compile"), "{e}");
        let bomb = "claims.groups.map(a, claims.groups.map(b, claims.groups.map(c, a + b + c)))";
        let e = check(bomb, &[Kind::List]).unwrap_err();
        assert!(e.contains("too expensive"), "{e}");
        let e = compile("claims.sub == ''", Scope::User, &[Kind::Bool]).unwrap_err();
        assert!(e.contains("see only user"), "{e}");
    }

    #[test]
    fn email_reads_are_found() {
        let p = ENV
            .compile("claims.?email_verified.orValue(false)")
            .unwrap();
        assert!(reads_claim(&p, "email_verified"));
        let p = ENV.compile("claims.email").unwrap();
        assert!(reads_claim(&p, "email") && !reads_claim(&p, "email_verified"));
    }
}
