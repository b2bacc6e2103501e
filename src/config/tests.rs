//! The checks `ServeConfig::validate` makes, one test per refusal.

use super::*;

fn production() -> ServeConfig {
    ServeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        admin_token: Some("a-long-enough-admin-token".into()),
        confirm_token: None,
        role: Role::All,
        stores: StoreConfig {
            database_url: String::new(),
            redis_url: String::new(),
            redis_prefix: "fc".into(),
            redis_timeout: Duration::from_secs(1),
            db_max_connections: 1,
        },
        commit_max_batch: 1,
        commit_inflight: 1,
        commit_linger: Duration::ZERO,
        stream_batch: 1,
        pending_wait: Duration::ZERO,
        orphan_after: Duration::ZERO,
        sse_max: Duration::from_secs(1),
        stream_caps: StreamCaps {
            total: 1,
            per_user: 1,
            per_ip: 1,
        },
        reconcile_interval: Duration::ZERO,
        jwt: JwtConfig {
            secret: Some("s".repeat(MIN_JWT_SECRET_LEN)),
            public_key: None,
            audience: Some("firstcome".into()),
            issuer: Some("https://id.example".into()),
            trust_user_id: false,
        },
        production: true,
        rates: RateConfig {
            per_ip: 50,
            per_ip_burst: 100,
            per_user: 20,
            per_user_burst: 40,
            bad_tokens_per_ip: 10,
        },
        conns: ConnConfig {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1,
        },
        campaign_cache: Duration::from_secs(1),
        behind_proxy: None,
        ops_addr: Some("127.0.0.1:9090".parse().unwrap()),
        webhooks: WebhookConfig {
            allow: vec!["hooks.example".into()],
            timeout: Duration::from_secs(10),
            dead_after: Duration::from_secs(86_400),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(3600),
            per_endpoint: 4,
        },
    }
}

#[test]
fn a_database_other_than_postgres_is_refused_by_name() {
    let mut c = production();
    for ok in [
        "postgres://u@h/db",
        "postgresql://u@h:5432/db",
        "mysql://root@127.0.0.1:3306/firstcome",
        "mariadb://root@127.0.0.1:3306/firstcome",
    ] {
        c.stores.database_url = ok.into();
        assert_eq!(c.validate(), Ok(()), "{ok}");
    }
    c.stores.database_url = "sqlite://firstcome.db".into();
    assert_eq!(
        c.validate(),
        Err(ConfigError::UnsupportedDatabase("sqlite".into()))
    );
}

#[test]
fn production_requires_an_audience_and_an_issuer() {
    let mut c = production();
    assert_eq!(c.validate(), Ok(()));
    c.jwt.audience = None;
    assert_eq!(c.validate(), Err(ConfigError::ProductionWithoutAudience));
    c.jwt.audience = Some(String::new());
    assert_eq!(c.validate(), Err(ConfigError::ProductionWithoutAudience));
    c.jwt.audience = Some("firstcome".into());
    c.jwt.issuer = None;
    assert_eq!(c.validate(), Err(ConfigError::ProductionWithoutIssuer));
    c.jwt.issuer = Some("https://id.example".into());
    c.confirm_token = Some("short".into());
    assert_eq!(c.validate(), Err(ConfigError::WeakConfirmToken));
    c.confirm_token = c.admin_token.clone();
    assert_eq!(c.validate(), Err(ConfigError::WeakConfirmToken));
    c.confirm_token = Some("a-long-enough-payment-token".into());
    assert_eq!(c.validate(), Ok(()));
    c.jwt.issuer = None;
    // Outside production both stay optional.
    c.production = false;
    c.jwt.audience = None;
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn production_requires_an_address_limit_and_an_ops_listener() {
    let mut c = production();
    c.rates.per_ip = 0;
    assert_eq!(c.validate(), Err(ConfigError::ProductionWithoutIpLimit));
    c.rates.per_ip = 50;
    c.rates.bad_tokens_per_ip = 0;
    assert_eq!(
        c.validate(),
        Err(ConfigError::ProductionWithoutBadTokenLimit)
    );
    c.rates.bad_tokens_per_ip = 10;
    c.ops_addr = None;
    assert_eq!(c.validate(), Err(ConfigError::ProductionWithoutOpsAddr));
    c.ops_addr = Some("127.0.0.1:9090".parse().unwrap());
    c.behind_proxy = Some("x forwarded".into());
    assert_eq!(c.validate(), Err(ConfigError::BadProxyHeader));
    c.behind_proxy = Some("x-forwarded-for".into());
    assert_eq!(c.validate(), Ok(()));
    c.addr = "127.0.0.1:9090".parse().unwrap();
    assert_eq!(c.validate(), Err(ConfigError::OpsAddrIsPublic));
}

#[test]
fn production_requires_a_webhook_allow_list() {
    let mut c = production();
    c.webhooks.allow = vec![];
    assert_eq!(
        c.validate(),
        Err(ConfigError::ProductionWithoutWebhookAllow)
    );
    c.webhooks.allow = vec![" ".into()];
    assert_eq!(
        c.validate(),
        Err(ConfigError::ProductionWithoutWebhookAllow)
    );
    c.production = false;
    c.webhooks.per_endpoint = 0;
    assert_eq!(c.validate(), Err(ConfigError::BadWebhookDelivery));
}

#[test]
fn streams_leave_connections_free() {
    let mut c = production();
    c.conns.max_connections = 100;
    c.stream_caps.total = 5_000;
    assert_eq!(c.effective_stream_caps().total, 90);
    c.stream_caps.total = 10;
    assert_eq!(c.effective_stream_caps().total, 10);
    c.conns.max_connections = 1;
    assert_eq!(c.effective_stream_caps().total, 1);
}
