//! What the sign-in pages look like: plain HTML that works without JavaScript, one small
//! stylesheet, every value escaped, and the headers that keep the pages to themselves
//! (a strict Content-Security-Policy, no framing, no caching, no referrer). Also the
//! kubeconfig the page hands out: it calls the credential plugin and holds no token and no
//! secret, so the same file serves every member of a team.

use axum::body::Body;
use axum::response::Response;
use base64::Engine as _;
use http::{HeaderValue, StatusCode, header};
use kubegate_config::Login;
use kubegate_policy::RuleDescription;

use crate::authn::Identity;

/// No scripts, no frames, no forms, nothing from elsewhere: only our own stylesheet.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The one stylesheet, served at `/kubegate/style.css`.
pub const STYLESHEET: &str = "\
body{font:16px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
main{max-width:52rem;margin:2rem auto;padding:0 1rem}
h1{font-size:1.6rem;margin:.2rem 0 1rem}h2{font-size:1.15rem;margin:1.6rem 0 .5rem}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:1rem 1.25rem;margin:1rem 0}
.who dt{font-weight:600;float:left;width:7rem;clear:left}.who dd{margin:0 0 .3rem 7rem}
pre{background:#1d2330;color:#e8ecf3;padding:.8rem 1rem;border-radius:6px;overflow-x:auto;font-size:.85rem}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
.allow{color:#176b2c;font-weight:600}.deny{color:#a11d1d;font-weight:600}
.error{border-color:#e3a3a3;background:#fff6f6}
a.button{display:inline-block;background:#2855c7;color:#fff;padding:.5rem 1rem;border-radius:6px;text-decoration:none}
ul{padding-left:1.2rem}li{margin:.2rem 0}.muted{color:#5b6475;font-size:.9rem}
";

/// HTML-escapes text for element content and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Sets the headers every page and file under the prefix carries.
pub fn secure(response: &mut Response) {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The callback's URL holds the code: no link may carry it on as a referrer.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// A page response.
pub fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let text = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{title} · kubegate</title><link rel=\"stylesheet\" href=\"/kubegate/style.css\"></head>\n<body><main>\n{body}\n<p class=\"muted\">kubegate · <a href=\"/kubegate/\">start page</a></p></main></body></html>\n",
        title = escape(title),
    );
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure(&mut response);
    response
}

/// The page for a sign-in that did not succeed: what happened, and the way back in.
pub fn refused(status: StatusCode, title: &str, why: &str) -> Response {
    html(
        status,
        title,
        &format!(
            "<h1>{}</h1>\n<section class=\"error\"><p>{}</p><p>Nothing was changed, and nothing from this attempt was kept.</p></section>\n<p><a class=\"button\" href=\"/kubegate/login\">Sign in again</a></p>",
            escape(title),
            escape(why)
        ),
    )
}

/// The start page.
pub fn start(login: &Login) -> Response {
    html(
        StatusCode::OK,
        "Sign in",
        &format!(
            "<h1>Sign in to {server}</h1>\n<section><p>Sign in with your organisation's account to see who the gateway takes you for, what you may do, and get a kubeconfig for <code>kubectl</code>.</p><p><a class=\"button\" href=\"/kubegate/login\">Sign in</a></p></section>\n<section><p>Already set up? The kubeconfig is the same for everyone: <a href=\"/kubegate/kubeconfig\">download it</a>.</p></section>",
            server = escape(&login.server_url)
        ),
    )
}

/// The page after a sign-in: the identity, the rules, the kubeconfig and the commands.
pub fn signed_in(
    login: &Login,
    identity: &Identity,
    rules: &[RuleDescription],
    kubeconfig: &str,
) -> Response {
    let name = cluster_name(login);
    let mut body = format!(
        "<h1>Signed in as {user}</h1>\n<section class=\"who\"><h2>Who you are, as the gateway sees you</h2><dl><dt>Username</dt><dd><code id=\"username\">{user}</code></dd>",
        user = escape(&identity.user)
    );
    if let Some(uid) = &identity.uid {
        body.push_str(&format!(
            "<dt>UID</dt><dd><code>{}</code></dd>",
            escape(uid)
        ));
    }
    let groups = if identity.groups.is_empty() {
        "none".to_string()
    } else {
        identity
            .groups
            .iter()
            .map(|g| format!("<code class=\"group\">{}</code>", escape(g)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    body.push_str(&format!("<dt>Groups</dt><dd id=\"groups\">{groups}</dd>"));
    for (key, values) in &identity.extra {
        body.push_str(&format!(
            "<dt>{}</dt><dd><code>{}</code></dd>",
            escape(key),
            escape(&values.join(", "))
        ));
    }
    body.push_str("</dl><p class=\"muted\">This is the identity every request you send through the gateway carries, after the issuer's claim mappings.</p></section>\n");

    body.push_str("<section><h2>What the policy lets you do</h2>");
    if rules.is_empty() {
        body.push_str("<p>No rule of the policy names you: every request will be refused. Ask the cluster's operators for access.</p>");
    } else {
        body.push_str("<p>These rules apply to you. A <span class=\"deny\">deny</span> rule wins over every allow; among the <span class=\"allow\">allow</span> rules the first that matches a request decides. Anything no rule allows is refused. The cluster's own RBAC still applies to the identity forwarded.</p><ul id=\"rules\">");
        for rule in rules {
            let (class, effect) = if rule.allow {
                ("allow", "allow")
            } else {
                ("deny", "deny")
            };
            body.push_str(&format!(
                "<li><span class=\"{class}\">{effect}</span> <code>{}</code><ul>",
                escape(&rule.name)
            ));
            for entry in &rule.entries {
                body.push_str(&format!("<li>{}</li>", escape(entry)));
            }
            if let Some(who) = &rule.forwarded_as {
                body.push_str(&format!(
                    "<li>forwarded as <code>{}</code></li>",
                    escape(who)
                ));
            }
            body.push_str("</ul></li>");
        }
        body.push_str("</ul>");
    }
    body.push_str("</section>\n");

    let file = format!("~/.kube/kubegate-{name}.yaml");
    body.push_str(&format!(
        "<section><h2>Your kubeconfig</h2><p>It holds no token and no secret: <code>kubectl</code> runs <code>kubegate get-token</code>, which signs you in with your browser when needed and keeps your tokens in <code>~/.kube/cache/kubegate</code>. <a href=\"/kubegate/kubeconfig\" download=\"kubegate-{name_attr}.yaml\">Download it</a>, or copy it:</p>\n<pre id=\"kubeconfig\">{kc}</pre>\n<h2>Then</h2><pre>{cmds}</pre></section>",
        name_attr = escape(&name),
        kc = escape(kubeconfig),
        cmds = escape(&format!(
            "# 1. Install kubegate (the credential plugin) on your PATH, then check:\nkubegate --version\n\n# 2. Save the file above as {file}\nchmod 600 {file}\n\n# 3. Use it\nkubectl --kubeconfig {file} auth whoami\nkubectl --kubeconfig {file} get pods -n <namespace>\n"
        )),
    ));
    html(StatusCode::OK, "Signed in", &body)
}

/// The kubeconfig as a file download.
pub fn kubeconfig_file(login: &Login, kubeconfig: String) -> Response {
    let mut response = Response::new(Body::from(kubeconfig));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/yaml"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"kubegate-{}.yaml\"",
        cluster_name(login)
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    secure(&mut response);
    response
}

/// The cluster's name in the kubeconfig: the server's host (and port), in characters
/// that are safe in a file name.
pub fn cluster_name(login: &Login) -> String {
    let host = login
        .server_url
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap_or("kubegate");
    host.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The kubeconfig: the cluster (server URL and CA), a context, and an exec user calling
/// `kubegate get-token` with kubelogin's flag names. `ca_pem` is the CA bundle's text.
pub fn kubeconfig(login: &Login, ca_pem: &[u8]) -> String {
    // JSON strings are YAML double-quoted scalars: every value is quoted safely.
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let name = cluster_name(login);
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mut args = vec![
        "get-token".to_string(),
        format!("--oidc-issuer-url={}", login.issuer),
        format!("--oidc-client-id={}", login.plugin_client_id),
    ];
    for scope in &login.plugin_extra_scopes {
        args.push(format!("--oidc-extra-scope={scope}"));
    }
    if let Some(ca) = &login.plugin_certificate_authority {
        args.push(format!("--certificate-authority={ca}"));
    }
    let args: String = args.iter().map(|a| format!("      - {}\n", q(a))).collect();
    let hint = format!(
        "kubectl needs the kubegate credential plugin on your PATH to sign you in. Install the kubegate binary (from your platform team, or `cargo install --locked --path gateway` in its source), then run kubectl again. Instructions: {}/kubegate/",
        login.server_url
    );
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {n}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: {n}\n  context:\n    cluster: {n}\n    user: {user}\ncurrent-context: {n}\nusers:\n- name: {user}\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: kubegate\n      args:\n{args}      interactiveMode: IfAvailable\n      provideClusterInfo: false\n      installHint: {hint}\n",
        n = q(&name),
        server = q(&login.server_url),
        ca = q(&ca),
        user = q(&format!("{name}-oidc")),
        hint = q(&hint),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_content_and_attributes() {
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn pages_carry_the_strict_headers() {
        let r = refused(StatusCode::BAD_REQUEST, "Nope", "<script>");
        assert_eq!(r.headers()["content-security-policy"], CSP);
        assert!(CSP.contains("default-src 'none'") && !CSP.contains("script-src"));
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    }
}
