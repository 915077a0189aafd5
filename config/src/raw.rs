//! The file as written: serde structs that reject unknown keys and keep positions.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) policy: Spanned<String>,
    pub(crate) listen: Spanned<RawListen>,
    pub(crate) upstream: Spanned<RawUpstream>,
    pub(crate) auth: Spanned<RawAuth>,
    #[serde(default)]
    pub(crate) limits: RawLimits,
    pub(crate) admin: Option<Spanned<RawAdmin>>,
    pub(crate) audit: Option<Spanned<RawAudit>>,
    pub(crate) recording: Option<Spanned<RawRecording>>,
    pub(crate) login: Option<Spanned<RawLogin>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) address: Option<Spanned<String>>,
    pub(crate) port: Option<Spanned<u16>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListen {
    pub(crate) address: Option<Spanned<String>>,
    pub(crate) port: Option<Spanned<u16>>,
    pub(crate) tls_cert: Spanned<String>,
    pub(crate) tls_key: Spanned<String>,
    pub(crate) client_ca: Option<Spanned<String>>,
    pub(crate) handshake_timeout: Option<Spanned<String>>,
    pub(crate) header_read_timeout: Option<Spanned<String>>,
    pub(crate) idle_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub(crate) kubeconfig: Option<Spanned<String>>,
    pub(crate) context: Option<Spanned<String>>,
    pub(crate) in_cluster: Option<Spanned<bool>>,
    pub(crate) timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub(crate) oidc: Option<Spanned<Vec<Spanned<RawOidc>>>>,
    pub(crate) authentication_config: Option<Spanned<String>>,
    pub(crate) authentication_config_insecure_http: Option<Spanned<bool>>,
    pub(crate) token_cache_ttl: Option<Spanned<String>>,
    pub(crate) token_cache_size: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOidc {
    pub(crate) issuer: Spanned<String>,
    pub(crate) audiences: Spanned<Vec<String>>,
    pub(crate) jwks_file: Option<Spanned<String>>,
    pub(crate) discovery_url: Option<Spanned<String>>,
    pub(crate) username_claim: Option<Spanned<String>>,
    pub(crate) groups_claim: Option<Spanned<String>>,
    pub(crate) algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) leeway: Option<Spanned<String>>,
    pub(crate) username_prefix: Option<Spanned<String>>,
    pub(crate) groups_prefix: Option<Spanned<String>>,
    pub(crate) uid_claim: Option<Spanned<String>>,
    pub(crate) extra: Option<Spanned<BTreeMap<String, String>>>,
    pub(crate) required_claims: Option<Spanned<BTreeMap<String, String>>>,
    pub(crate) max_token_lifetime: Option<Spanned<String>>,
    pub(crate) insecure_http: Option<Spanned<bool>>,
    pub(crate) certificate_authority: Option<Spanned<String>>,
    pub(crate) key_refresh_cooldown: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub(crate) max_request_body: Option<Spanned<u64>>,
    pub(crate) stream_idle_timeout: Option<Spanned<String>>,
    pub(crate) requests_per_second: Option<Spanned<u32>>,
    pub(crate) burst: Option<Spanned<u32>>,
    pub(crate) unauthenticated_per_second: Option<Spanned<u32>>,
    pub(crate) unauthenticated_burst: Option<Spanned<u32>>,
    pub(crate) max_in_flight: Option<Spanned<u32>>,
    pub(crate) max_in_flight_per_user: Option<Spanned<u32>>,
    pub(crate) max_streams: Option<Spanned<u32>>,
    pub(crate) max_streams_per_user: Option<Spanned<u32>>,
    pub(crate) max_connections: Option<Spanned<u32>>,
    pub(crate) max_connections_per_address: Option<Spanned<u32>>,
    // Any TOML integer, so an out-of-range one gets our message, not serde's.
    pub(crate) ipv6_prefix_length: Option<Spanned<i64>>,
    #[serde(default, rename = "override")]
    pub(crate) overrides: Vec<Spanned<RawRateOverride>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateOverride {
    pub(crate) user: Option<Spanned<String>>,
    pub(crate) group: Option<Spanned<String>>,
    pub(crate) requests_per_second: Spanned<u32>,
    pub(crate) burst: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    pub(crate) stdout: Option<Spanned<bool>>,
    pub(crate) file: Option<Spanned<String>>,
    pub(crate) max_file_size: Option<Spanned<u64>>,
    pub(crate) max_backups: Option<Spanned<usize>>,
    pub(crate) queue_size: Option<Spanned<usize>>,
    pub(crate) omit_user_info: Option<Spanned<bool>>,
    pub(crate) webhook: Option<Spanned<RawAuditWebhook>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuditWebhook {
    pub(crate) config_file: Spanned<String>,
    pub(crate) mode: Option<Spanned<String>>,
    // Any TOML integer, so a negative or huge one gets our message, not serde's.
    pub(crate) batch_max_size: Option<Spanned<i64>>,
    pub(crate) batch_max_wait: Option<Spanned<String>>,
    pub(crate) buffer_size: Option<Spanned<i64>>,
    pub(crate) initial_backoff: Option<Spanned<String>>,
    pub(crate) max_retries: Option<Spanned<i64>>,
    pub(crate) request_timeout: Option<Spanned<String>>,
    pub(crate) flush_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRecording {
    pub(crate) dir: Spanned<String>,
    pub(crate) groups: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) users: Option<Spanned<Vec<Spanned<String>>>>,
    // Any TOML integer, so an out-of-range one gets our message, not serde's.
    pub(crate) max_buffered: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLogin {
    pub(crate) issuer: Spanned<String>,
    pub(crate) client_id: Spanned<String>,
    pub(crate) client_secret_file: Option<Spanned<String>>,
    pub(crate) redirect_url: Spanned<String>,
    pub(crate) scopes: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) plugin_client_id: Option<Spanned<String>>,
    pub(crate) plugin_extra_scopes: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) plugin_certificate_authority: Option<Spanned<String>>,
    pub(crate) cookie_key_file: Option<Spanned<String>>,
    pub(crate) server_url: Option<Spanned<String>>,
    pub(crate) certificate_authority: Option<Spanned<String>>,
    pub(crate) sign_in_timeout: Option<Spanned<String>>,
}
