//! Runs the cargo-fuzz target bodies over deterministic pseudo-random inputs
//! so the harness code is exercised on stable.

use kubegate_policy::fuzzing::{parse_policy, resolve_path};

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

/// Builds inputs from a dictionary (like a fuzzer's), then mutates bytes.
fn generate(rng: &mut Rng, dict: &[&str], pieces: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(pieces) + 1 {
        out.extend_from_slice(rng.pick(dict).as_bytes());
    }
    for _ in 0..rng.below(3) {
        if out.is_empty() {
            break;
        }
        let i = rng.below(out.len());
        match rng.below(3) {
            0 => out[i] = rng.next() as u8,
            1 => {
                out.remove(i);
            }
            _ => out.insert(i, rng.next() as u8),
        }
    }
    out
}

const PATH_DICT: &[&str] = &[
    "/",
    "/api",
    "/apis",
    "/v1",
    "/apps",
    "/namespaces",
    "/dev",
    "/pods",
    "/web",
    "/log",
    "/exec",
    "/proxy",
    "/watch",
    "/services",
    "/web:80",
    "/nodes",
    "/n1",
    "/status",
    "/finalize",
    "/.",
    "/..",
    "/%2e",
    "/%2F",
    "%5c",
    "\\",
    "%00",
    "%zz",
    "%66",
    "%20",
    "%3A",
    "%C3%A9",
    "%ff",
    "?",
    "watch=1",
    "watch=false",
    "&",
    "fieldSelector=metadata.name%3Dweb",
    "follow=true",
    "limit=x",
    ";",
    "+",
    "=",
    "/version",
    "/healthz",
    "//",
];

const POLICY_DICT: &[&str] = &[
    "[[rule]]\n",
    "name = \"r\"\n",
    "name = \"s\"\n",
    "effect = \"allow\"\n",
    "effect = \"deny\"\n",
    "subjects = { authenticated = true }\n",
    "subjects = { groups = [\"devs\"] }\n",
    "subjects = { users = [\"alice\", \"a*\"], not_groups = [\"x\"] }\n",
    "subjects = { claims = { \"a.b\" = [\"c\"] } }\n",
    "resources = [{ api_groups = [\"\"], resources = [\"pods\"], verbs = [\"get\"] }]\n",
    "resources = [{ api_groups = [\"*\"], resources = [\"*\"], namespaces = [\"dev\", \"\"], names = [\"w*\"], verbs = [\"*\"] }]\n",
    "paths = [{ path = \"/api\", prefix = true, methods = [\"get\"] }]\n",
    "paths = [{ path = \"/version\" }]\n",
    "as_user = \"c:{username}\"\n",
    "as_groups = [\"{uid}\"]\n",
    "default = \"deny\"\n",
    "description = \"d\"\n",
    "[rule.subjects]\n",
    "bogus = 1\n",
    "\"",
    "[",
    "]",
    "{",
    "}",
    "=",
    "\n",
    "#c\n",
    "verbs = [\"gett\"]\n",
];

/// Whole rules built from valid parts (then byte-mutated by the caller), so
/// many inputs load and reach `decide`.
fn structured_policy(rng: &mut Rng) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..rng.below(5) + 1 {
        let effect = rng.pick(&["allow", "deny"]);
        out.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\neffect = \"{effect}\"\n"
        ));
        out.push_str(rng.pick(&POLICY_DICT[5..9]));
        out.push_str(rng.pick(&POLICY_DICT[9..13]));
        if effect == "allow" && rng.below(3) == 0 {
            out.push_str(rng.pick(&POLICY_DICT[13..15]));
        }
    }
    let mut bytes = out.into_bytes();
    if rng.below(4) == 0 {
        let i = rng.below(bytes.len());
        bytes[i] = rng.next() as u8;
    }
    bytes
}

#[test]
fn fuzz_target_bodies_on_pseudo_random_inputs() {
    let mut rng = Rng(0x5eed_cafe_f00d_beef);
    let mut accepted = 0;
    for _ in 0..4000 {
        accepted += usize::from(resolve_path(&generate(&mut rng, PATH_DICT, 10)));
    }
    let mut loaded = 0;
    for _ in 0..2000 {
        loaded += usize::from(parse_policy(&generate(&mut rng, POLICY_DICT, 14)));
        loaded += usize::from(parse_policy(&structured_policy(&mut rng)));
    }
    eprintln!("{accepted} paths accepted, {loaded} policies loaded");
    // The dictionaries must get inputs past the first checks, or the deep
    // invariants would never be exercised.
    assert!(accepted > 200, "only {accepted} paths accepted");
    assert!(loaded > 1000, "only {loaded} policies loaded");
    // Raw random bytes too.
    for _ in 0..1000 {
        let len = rng.below(64);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = resolve_path(&bytes);
        let _ = parse_policy(&bytes);
    }
}

/// Proxy targets, the legacy form included, to put backend paths behind.
const PROXY_TARGETS: &[&str] = &[
    "/api/v1/namespaces/dev/services/web:80/proxy",
    "/api/v1/namespaces/dev/services/https:web:443/proxy",
    "/api/v1/namespaces/dev/pods/web-0:8080/proxy",
    "/api/v1/nodes/n1/proxy",
    "/api/v1/proxy/namespaces/dev/services/web",
    "/api/v1/proxy/nodes/n1",
    "/api/v1/watch/namespaces/dev/pods/web/proxy",
];

#[test]
fn fuzz_resolve_body_on_backend_paths() {
    let mut rng = Rng(0x0bad_5eed_1234_5678);
    let mut accepted = 0;
    for _ in 0..3000 {
        let mut input = rng.pick(PROXY_TARGETS).as_bytes().to_vec();
        if rng.below(4) != 0 {
            input.extend(generate(&mut rng, PATH_DICT, 6));
        }
        if rng.below(3) == 0 {
            input.extend_from_slice(b"/");
        }
        accepted += usize::from(resolve_path(&input));
    }
    assert!(accepted > 600, "only {accepted} proxy paths accepted");
}
