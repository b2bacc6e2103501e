//! The verifier on hand-made answers and grants: each violation on its
//! own, changed answers, and the redis-lua exposure window.

use serde_json::json;

use super::*;

fn granted(pool: u8, slot: i32, seq: i64, code: &str) -> Seen {
    seen_from(
        200,
        &json!({"status": "granted", "slot": slot, "seq": seq, "code": code}),
        pool,
    )
}

fn sold_out(pool: u8, seq: i64) -> Seen {
    seen_from(
        409,
        &json!({"status": "rejected", "reason": "sold_out", "seq": seq}),
        pool,
    )
}

fn grant(user: &str, slot: i64, seq: i64, code: &str) -> Value {
    json!({"pool": "main", "user_id": user, "slot": slot, "seq": seq, "code": code})
}

fn at(s: Seen, ms: u32) -> Seen {
    Seen { at: ms, ..s }
}

const PLAIN: Check = Check {
    fairness: true,
    lua_loss: None,
};

fn check(seen: &[Seen], finals: &[Seen], grants: &[Value], c: &Check) -> (Violations, Exposure) {
    let pools = vec![("main".to_string(), 2, 1.0)];
    let names = vec!["main".to_string()];
    verify(&pools, &names, seen, finals, grants, c)
}

/// A clean run on one pool of 2: users a and b granted slots 1 and 2, c
/// refused; the answers seen and the grants stored.
fn clean_run() -> ([Seen; 3], [Value; 2]) {
    (
        [
            granted(0, 1, 1, "CODEA"),
            granted(0, 2, 2, "CODEB"),
            sold_out(0, 3),
        ],
        [grant("a", 1, 1, "CODEA"), grant("b", 2, 2, "CODEB")],
    )
}

/// One pool of 2: a clean run, then each kind of damage on its own.
#[test]
fn the_verifier_counts_each_violation() {
    let (seen, good) = clean_run();
    let v = |grants: &[Value], fairness: bool| {
        check(
            &seen,
            &seen,
            grants,
            &Check {
                fairness,
                lua_loss: None,
            },
        )
        .0
    };
    assert_eq!(v(&good, true).total(), 0);

    let r = v(
        &[good[0].clone(), good[1].clone(), grant("c", 3, 3, "CODEC")],
        true,
    );
    assert_eq!((r.oversold, r.double_booked), (1, 1), "{r:?}");

    let r = v(&[good[0].clone(), grant("a", 2, 2, "CODEB")], true);
    assert_eq!(r.duplicates, 1, "{r:?}");

    let r = v(&[good[0].clone()], true);
    assert_eq!((r.undersold, r.lost), (1, 1), "{r:?}");

    let r = v(&[good[0].clone(), grant("b", 1, 2, "CODEB")], true);
    assert_eq!(r.double_booked, 1, "{r:?}");

    // A sold_out answer before the last grant's arrival: unfair in
    // redis-queue (checked only where arrival order is promised).
    let late = [good[0].clone(), grant("b", 2, 4, "CODEB")];
    assert_eq!(v(&late, true).unfair, 1);
    assert_eq!(v(&late, false).unfair, 0);
}

/// A final answer (granted, sold_out) later contradicted by the user's
/// status: 404, another status, slot, code or seq; an own cancellation
/// must stay cancelled and is not a change.
#[test]
fn the_verifier_counts_changed_answers() {
    let (seen, good) = clean_run();
    let missing = Seen {
        kind: SeenKind::Missing,
        ..Default::default()
    };
    let changed = |finals: &[Seen]| check(&seen, finals, &good, &PLAIN).0.changed;
    assert_eq!(changed(&seen), 0);
    // Not checked (kind None): nothing to compare.
    assert_eq!(changed(&[]), 0);
    // sold_out forgotten (the FLUSHDB bug), or granted after all.
    assert_eq!(changed(&[seen[0], seen[1], missing]), 1);
    assert_eq!(changed(&[seen[0], seen[1], granted(0, 2, 3, "CODEC")]), 1);
    // sold_out with another seq.
    assert_eq!(changed(&[seen[0], seen[1], sold_out(0, 9)]), 1);
    // Granted: now 404, another slot, another code, another seq,
    // refused, or cancelled without asking.
    for now in [
        missing,
        granted(0, 2, 1, "CODEA"),
        granted(0, 1, 1, "CODEZ"),
        granted(0, 1, 7, "CODEA"),
        sold_out(0, 1),
        Seen {
            kind: SeenKind::Cancelled,
            ..seen[0]
        },
    ] {
        assert_eq!(changed(&[now, seen[1], seen[2]]), 1, "{now:?}");
    }
    // The time an answer was received is not part of it.
    assert_eq!(changed(&[at(seen[0], 99), seen[1], seen[2]]), 0);

    // Own cancellations: user b cancelled (slot 2 back in stock, the
    // bench's later user c took it); user a's DELETE got no answer.
    let cancelled = Seen {
        kind: SeenKind::Cancelled,
        ..seen[1]
    };
    let in_doubt = Seen {
        kind: SeenKind::CancelInDoubt,
        ..seen[0]
    };
    let told = [in_doubt, cancelled, granted(0, 2, 3, "CODEC")];
    let grants = [grant("a", 1, 1, "CODEA"), grant("c", 2, 3, "CODEC")];
    let r = check(&told, &[seen[0], cancelled, told[2]], &grants, &PLAIN).0;
    assert_eq!(r.total(), 0, "{r:?}");
    // In doubt, then found cancelled: fine too (and no grant is lost).
    let r = check(
        &told,
        &[cancelled, cancelled, told[2]],
        &grants[1..],
        &PLAIN,
    )
    .0;
    assert_eq!((r.changed, r.lost), (0, 0), "{r:?}");
    // A cancellation answered 200 but the user is granted again.
    let r = check(&told, &[seen[0], seen[1], told[2]], &grants, &PLAIN).0;
    assert_eq!(r.changed, 1, "{r:?}");
    // A cancelled user asked: 1 grant for a stock of 2 is undersold.
    let r = check(&told, &[], &grants[..1], &PLAIN).0;
    assert_eq!(r.undersold, 1, "{r:?}");
}

/// redis-lua after a Redis loss: answers received inside the
/// write-behind window are exposure, older ones still violations.
#[test]
fn the_verifier_splits_lua_exposure_by_time() {
    let seen = [
        at(granted(0, 1, 1, "CODEA"), 100),
        at(granted(0, 2, 2, "CODEB"), 1_000),
        at(sold_out(0, 3), 120),
        at(sold_out(0, 4), 10),
    ];
    let missing = Seen {
        kind: SeenKind::Missing,
        ..Default::default()
    };
    // Both grants and both sold_out answers gone; a later user holds
    // slot 1 (the state was rebuilt).
    let finals = [missing; 4];
    let grants = [grant("e", 1, 9, "CODEE"), grant("f", 2, 10, "CODEF")];
    let window = Check {
        fairness: false,
        lua_loss: Some((50, 200)),
    };
    let (v, e) = check(&seen, &finals, &grants, &window);
    assert_eq!((e.lua_unflushed_lost, e.lua_changed), (1, 2), "{e:?}");
    assert_eq!((v.lost, v.changed), (1, 2), "{v:?}");
    // Loss time unknown: everything is exposure.
    let all = Check {
        fairness: false,
        lua_loss: Some((i64::MIN, i64::MAX)),
    };
    let (v, e) = check(&seen, &finals, &grants, &all);
    assert_eq!((e.lua_unflushed_lost, e.lua_changed), (2, 4), "{e:?}");
    assert_eq!(v.total(), 0, "{v:?}");
    // Not redis-lua: all violations.
    let (v, e) = check(&seen, &finals, &grants, &PLAIN);
    assert_eq!((v.lost, v.changed), (2, 4), "{v:?}");
    assert_eq!((e.lua_unflushed_lost, e.lua_changed), (0, 0));
}
