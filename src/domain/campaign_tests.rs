//! Tests of campaign parsing and key lifetimes.

use super::*;

fn parse(pools: Vec<(&str, i64)>) -> Result<NewCampaign, NewCampaignError> {
    NewCampaign::parse(RawCampaign {
        name: "c".into(),
        pools: pools.into_iter().map(|(n, s)| (n.to_string(), s)).collect(),
        ..Default::default()
    })
}

#[test]
fn campaigns_are_checked() {
    assert!(parse(vec![("a", 1)]).is_ok());
    assert_eq!(parse(vec![]), Err(NewCampaignError::NoPools));
    assert_eq!(parse(vec![("a", 0)]), Err(NewCampaignError::BadStock(0)));
    assert_eq!(parse(vec![("a", -5)]), Err(NewCampaignError::BadStock(-5)));
    assert_eq!(
        parse(vec![("a", 1), ("a", 2)]),
        Err(NewCampaignError::DuplicatePool("a".into()))
    );
    let now = Utc::now();
    let err = NewCampaign::parse(RawCampaign {
        name: "c".into(),
        mode: Some(Mode::DbLock),
        pools: vec![("a".into(), 1)],
        opens_at: Some(now),
        closes_at: Some(now),
        ..Default::default()
    });
    assert_eq!(err, Err(NewCampaignError::BadWindow));
    let far = |opens: Option<DateTime<Utc>>, closes: Option<DateTime<Utc>>| {
        NewCampaign::parse(RawCampaign {
            name: "c".into(),
            pools: vec![("a".into(), 1)],
            opens_at: opens,
            closes_at: closes,
            ..Default::default()
        })
        .map_err(|e| e.code())
    };
    let years = |n: i64| now + chrono::Duration::days(365 * n);
    assert_eq!(far(None, Some(years(2))), Err("invalid_schedule"));
    assert_eq!(far(Some(years(200)), None), Err("invalid_schedule"));
    assert_eq!(far(Some(years(-30)), None), Err("invalid_schedule"));
    assert!(far(Some(years(50)), None).is_ok());
    assert!(far(None, Some(years(1))).is_ok());
}

#[test]
fn keys_outlive_the_hold_by_the_grace() {
    let now = Utc::now();
    let mut c = Campaign {
        id: CampaignId(1),
        name: "c".into(),
        mode: Mode::RedisLua,
        per_user_limit: 1,
        opens_at: None,
        closes_at: Some(now),
        hold_secs: 0,
        created_at: now,
        confirm_within_secs: None,
        shards: 1,
        pools: vec![],
        published: true,
        prequeue_secs: None,
        draw_seed: None,
        webhook_url: None,
        paused: false,
    };
    assert_eq!(
        c.keys_expire_at(),
        Some(now + chrono::Duration::seconds(KEY_GRACE_SECS))
    );
    c.closes_at = None;
    assert_eq!(c.keys_expire_at(), None, "open-ended keys slide");
}
