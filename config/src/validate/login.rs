//! `[login]`: the sign-in page's settings, validated against the issuers and the listener
//! they depend on.

use std::time::Duration;

use toml::Spanned;
use url::Url;

use super::{Validator, checked_url};
use crate::raw::RawLogin;
use crate::{Auth, ConfigError, LOGIN_PREFIX, Listen, Login};

/// Where the provider sends the browser back: the gateway answers only this path.
const CALLBACK_PATH: &str = "/kubegate/callback";
const DEFAULT_SIGN_IN_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const MAX_SIGN_IN_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// A client id or scope as RFC 6749 allows it (`scope-token`: printable ASCII without
/// space, `"` and `\`), so it can go into a URL, a kubeconfig and a page as it is.
fn token_chars(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == b'!' || ((0x23..=0x7e).contains(&b) && b != b'\\'))
}

impl Validator<'_> {
    pub(crate) fn login(
        &self,
        raw: Spanned<RawLogin>,
        auth: &Auth,
        listen: &Listen,
    ) -> Result<Login, ConfigError> {
        let location = self.map.location(raw.span(), "login");
        let raw = raw.into_inner();
        if !auth.oidc.iter().any(|i| &i.issuer == raw.issuer.get_ref()) {
            return Err(self.err(
                &raw.issuer,
                "login.issuer",
                "must be one of the configured issuers ([[auth.oidc]] or the authentication_config file), so the ID token is verified as API tokens are",
            ));
        }
        let id = |s: &Spanned<String>, field: &str| {
            if token_chars(s.get_ref()) {
                Ok(s.get_ref().clone())
            } else {
                Err(self.err(
                    s,
                    field,
                    "must be non-empty printable ASCII without spaces, quotes or backslashes",
                ))
            }
        };
        let client_id = id(&raw.client_id, "login.client_id")?;
        let client_secret_file = raw
            .client_secret_file
            .as_ref()
            .map(|f| self.readable_file(f, "login.client_secret_file"))
            .transpose()?;

        let redirect = self.https_url(&raw.redirect_url, "login.redirect_url")?;
        if redirect.path() != CALLBACK_PATH {
            return Err(self.err(
                &raw.redirect_url,
                "login.redirect_url",
                format!("must be the gateway's external URL of {CALLBACK_PATH}"),
            ));
        }
        let scopes_of = |list: &Option<Spanned<Vec<Spanned<String>>>>, field: &str| {
            let mut out: Vec<String> = Vec::new();
            for (i, s) in list.iter().flat_map(|l| l.get_ref()).enumerate() {
                let scope = id(s, &format!("{field}[{i}]"))?;
                if !out.contains(&scope) {
                    out.push(scope);
                }
            }
            Ok::<_, ConfigError>(out)
        };
        let scopes = match &raw.scopes {
            None => vec!["openid".to_string()],
            Some(list) => {
                let scopes = scopes_of(&raw.scopes, "login.scopes")?;
                if !scopes.iter().any(|s| s == "openid") {
                    return Err(self.err(
                        list,
                        "login.scopes",
                        "must include \"openid\": the page signs in with an ID token",
                    ));
                }
                scopes
            }
        };
        let plugin_client_id = match (&raw.plugin_client_id, &client_secret_file) {
            (Some(p), _) => id(p, "login.plugin_client_id")?,
            (None, None) => client_id.clone(),
            (None, Some(_)) => {
                return Err(location.error(
                    "plugin_client_id is required with client_secret_file: the kubeconfig's plugin needs a public client, and the web page's secret must not go into a kubeconfig",
                ));
            }
        };
        let plugin_extra_scopes = match &raw.plugin_extra_scopes {
            Some(_) => scopes_of(&raw.plugin_extra_scopes, "login.plugin_extra_scopes")?,
            None => scopes.iter().filter(|s| *s != "openid").cloned().collect(),
        };
        let plugin_certificate_authority = match &raw.plugin_certificate_authority {
            None => None,
            Some(p)
                if p.get_ref().starts_with('/') && !p.get_ref().chars().any(char::is_control) =>
            {
                Some(p.get_ref().clone())
            }
            Some(p) => {
                return Err(self.err(
                    p,
                    "login.plugin_certificate_authority",
                    "must be an absolute path (on users' machines)",
                ));
            }
        };
        let cookie_key_file = raw
            .cookie_key_file
            .as_ref()
            .map(|f| self.readable_file(f, "login.cookie_key_file"))
            .transpose()?;
        let server_url = match &raw.server_url {
            Some(s) => {
                let url = self.https_url(s, "login.server_url")?;
                if url.path().starts_with(LOGIN_PREFIX) {
                    return Err(self.err(
                        s,
                        "login.server_url",
                        format!("must not be under {LOGIN_PREFIX}, the gateway's own pages"),
                    ));
                }
                url.as_str().trim_end_matches('/').to_string()
            }
            None => redirect.origin().ascii_serialization(),
        };
        let certificate_authority = match &raw.certificate_authority {
            Some(f) => self.readable_file(f, "login.certificate_authority")?,
            None => listen.tls_cert.clone(),
        };
        let sign_in_timeout = self.duration(
            raw.sign_in_timeout.as_ref(),
            "login.sign_in_timeout",
            DEFAULT_SIGN_IN_TIMEOUT,
        )?;
        if sign_in_timeout > MAX_SIGN_IN_TIMEOUT
            && let Some(t) = &raw.sign_in_timeout
        {
            return Err(self.err(t, "login.sign_in_timeout", "must be at most 1h"));
        }
        Ok(Login {
            issuer: raw.issuer.into_inner(),
            client_id,
            client_secret_file,
            redirect_url: redirect.to_string(),
            scopes,
            plugin_client_id,
            plugin_extra_scopes,
            plugin_certificate_authority,
            cookie_key_file,
            server_url,
            certificate_authority,
            sign_in_timeout,
            location,
        })
    }

    /// An https URL without query, fragment or credentials (browsers keep `Secure`
    /// cookies for https only, and the gateway listens with TLS).
    fn https_url(&self, raw: &Spanned<String>, field: &str) -> Result<Url, ConfigError> {
        checked_url(raw.get_ref(), false, "").map_err(|_| {
            self.err(
                raw,
                field,
                "must be an https URL without query, fragment or credentials",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Dir, GOOD};

    const LOGIN: &str = "[login]\nissuer = \"https://idp.example.com/realms/ops\"\nclient_id = \"kubegate-web\"\nredirect_url = \"https://gw.example.com/kubegate/callback\"\n";

    #[test]
    fn a_public_client_needs_little_and_gets_safe_defaults() {
        let d = Dir::new();
        assert!(d.parse(GOOD).unwrap().login.is_none());
        let c = d.parse(&format!("{GOOD}\n{LOGIN}")).unwrap();
        let l = c.login.unwrap();
        assert_eq!(l.scopes, ["openid"]);
        assert_eq!(l.plugin_client_id, "kubegate-web");
        assert!(l.plugin_extra_scopes.is_empty());
        assert_eq!(l.server_url, "https://gw.example.com");
        assert_eq!(l.certificate_authority, c.listen.tls_cert);
        assert_eq!(l.sign_in_timeout, super::DEFAULT_SIGN_IN_TIMEOUT);
        assert!(l.client_secret_file.is_none() && l.cookie_key_file.is_none());
    }

    #[test]
    fn a_confidential_client_with_every_setting() {
        let d = Dir::new();
        let c = d
            .parse(&format!(
                "{GOOD}\n{LOGIN}client_secret_file = \"jwks.json\"\nplugin_client_id = \"kubectl\"\nscopes = [\"openid\", \"groups\", \"openid\"]\ncookie_key_file = \"tls.key\"\nserver_url = \"https://api.example.com:6443/\"\ncertificate_authority = \"kubeconfig\"\nplugin_certificate_authority = \"/etc/ssl/corp.pem\"\nsign_in_timeout = \"2m\"\n"
            ))
            .unwrap();
        let l = c.login.unwrap();
        assert_eq!(l.scopes, ["openid", "groups"]);
        assert_eq!(l.plugin_extra_scopes, ["groups"]);
        assert_eq!(l.plugin_client_id, "kubectl");
        assert_eq!(l.server_url, "https://api.example.com:6443");
        assert!(l.certificate_authority.value.ends_with("kubeconfig"));
        assert_eq!(
            l.plugin_certificate_authority.as_deref(),
            Some("/etc/ssl/corp.pem")
        );
        assert_eq!(l.sign_in_timeout, std::time::Duration::from_secs(120));
        // The secret's contents never show in Debug.
        assert!(!format!("{l:?}").contains("x\""));
    }

    #[test]
    fn bad_login_settings_are_located() {
        let d = Dir::new();
        let cases = [
            (
                "issuer = \"https://other.example.com\"",
                "login.issuer",
                "configured issuers",
            ),
            (
                "redirect_url = \"http://gw.example.com/kubegate/callback\"",
                "login.redirect_url",
                "https",
            ),
            (
                "redirect_url = \"https://gw.example.com/callback\"",
                "login.redirect_url",
                "/kubegate/callback",
            ),
            (
                "redirect_url = \"https://gw.example.com/kubegate/callback?x=1\"",
                "login.redirect_url",
                "https",
            ),
            ("client_id = \"a b\"", "login.client_id", "printable"),
            ("scopes = [\"email\"]", "login.scopes", "openid"),
            (
                "scopes = [\"openid\", \"\"]",
                "login.scopes[1]",
                "printable",
            ),
            (
                "client_secret_file = \"missing\"",
                "login.client_secret_file",
                "cannot read",
            ),
            (
                "client_secret_file = \"jwks.json\"",
                "login",
                "plugin_client_id is required",
            ),
            (
                "server_url = \"https://gw.example.com/kubegate/x\"",
                "login.server_url",
                "/kubegate/",
            ),
            (
                "plugin_certificate_authority = \"ca.pem\"",
                "login.plugin_certificate_authority",
                "absolute",
            ),
            (
                "sign_in_timeout = \"2h\"",
                "login.sign_in_timeout",
                "at most 1h",
            ),
            ("cookie_key = \"x\"", "login.cookie_key", "unknown field"),
        ];
        for (line, field, message) in cases {
            let key = line.split(" = ").next().unwrap();
            let table: String = LOGIN
                .lines()
                .filter(|l| !l.starts_with(&format!("{key} =")))
                .map(|l| format!("{l}\n"))
                .collect();
            let e = d
                .parse(&format!("{GOOD}\n{table}{line}\n"))
                .expect_err(line)
                .to_string();
            assert!(e.contains(field) && e.contains(message), "{line}: {e}");
        }
    }
}
