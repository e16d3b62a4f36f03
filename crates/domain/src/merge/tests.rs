//! Tests of the field behaviours: one example per rule, then a property test
//! that simulates users editing both sides while the engine receives their
//! edits in any order, with duplicates.

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::mapping::{FieldMapping, SyncBehaviour};

fn t(micros: i64) -> Timestamp {
    Utc.timestamp_micros(1_700_000_000_000_000 + micros).unwrap()
}

fn mapping(sync: SyncBehaviour, blank_overwrites: bool) -> FieldMapping {
    FieldMapping {
        ma: "f".into(),
        lead: Some("F".into()),
        contact: Some("F".into()),
        sync,
        blank_overwrites,
        source: (sync == SyncBehaviour::ReadOnly).then_some(Side::Crm),
    }
}

fn state(edits: &[(Side, i64, Value)]) -> FieldState {
    let mut s = FieldState::default();
    for (side, at, v) in edits {
        s.observe(*side, &Versioned::new(t(*at), v.clone()));
    }
    s
}

fn desired(m: &FieldMapping, edits: &[(Side, i64, Value)]) -> (Option<Value>, Option<Value>) {
    let d = state(edits).desired(m);
    (d.ma, d.crm)
}

#[test]
fn most_recent_takes_the_later_edit_from_either_side() {
    let m = mapping(SyncBehaviour::MostRecent, false);
    let both = |v: &str| (Some(json!(v)), Some(json!(v)));
    assert_eq!(desired(&m, &[(Side::Ma, 1, json!("a")), (Side::Crm, 2, json!("c"))]), both("c"));
    assert_eq!(desired(&m, &[(Side::Crm, 1, json!("c")), (Side::Ma, 2, json!("a"))]), both("a"));
}

#[test]
fn most_recent_is_judged_per_field_not_per_record() {
    // Two fields of one identity: each takes its own latest edit.
    let m1 = FieldMapping { ma: "f1".into(), ..mapping(SyncBehaviour::MostRecent, false) };
    let m2 = FieldMapping { ma: "f2".into(), lead: Some("F2".into()), contact: None, ..mapping(SyncBehaviour::MostRecent, false) };
    let map = crate::mapping::FieldMap::new(vec![
        m1.clone(),
        m2.clone(),
        FieldMapping { ma: "email".into(), lead: Some("Email".into()), contact: None, ..mapping(SyncBehaviour::MostRecent, false) },
    ])
    .unwrap();
    let mut fields = IdentityFields::default();
    let obs = |field: &str, side, at, v: &str| Observation { field: field.into(), side, at: t(at), value: json!(v), coarse: false };
    fields.observe_all(
        &map,
        &[obs("f1", Side::Ma, 1, "ma1"), obs("f2", Side::Ma, 4, "ma2"), obs("f1", Side::Crm, 3, "crm1"), obs("f2", Side::Crm, 2, "crm2")],
    );
    assert_eq!(fields.get("f1").unwrap().desired(&m1).ma, Some(json!("crm1")));
    assert_eq!(fields.get("f2").unwrap().desired(&m2).crm, Some(json!("ma2")));
}

#[test]
fn a_blank_never_erases_a_filled_value_by_default() {
    let m = mapping(SyncBehaviour::MostRecent, false);
    let d = desired(&m, &[(Side::Crm, 1, json!("c")), (Side::Ma, 2, Value::Null)]);
    assert_eq!(d, (Some(json!("c")), Some(json!("c"))));
    let d = desired(&m, &[(Side::Crm, 1, json!("c")), (Side::Ma, 2, json!("   "))]);
    assert_eq!(d, (Some(json!("c")), Some(json!("c"))));
}

#[test]
fn blank_overwrites_lets_a_later_blank_erase() {
    let m = mapping(SyncBehaviour::MostRecent, true);
    let d = desired(&m, &[(Side::Crm, 1, json!("c")), (Side::Ma, 2, Value::Null)]);
    assert_eq!(d, (Some(Value::Null), Some(Value::Null)));
}

#[test]
fn crm_wins_over_a_later_ma_edit() {
    let m = mapping(SyncBehaviour::CrmWins, false);
    let d = desired(&m, &[(Side::Crm, 1, json!("crm")), (Side::Ma, 2, json!("ma"))]);
    assert_eq!(d, (Some(json!("crm")), Some(json!("crm"))));
}

#[test]
fn crm_wins_lets_an_ma_value_fill_a_blank_crm_field() {
    let m = mapping(SyncBehaviour::CrmWins, false);
    assert_eq!(desired(&m, &[(Side::Ma, 2, json!("ma"))]), (Some(json!("ma")), Some(json!("ma"))));
    assert_eq!(desired(&m, &[(Side::Crm, 1, Value::Null), (Side::Ma, 2, json!("ma"))]), (Some(json!("ma")), Some(json!("ma"))));
}

#[test]
fn crm_wins_with_blank_overwrites_lets_a_crm_blank_erase_the_ma_value() {
    let m = mapping(SyncBehaviour::CrmWins, true);
    assert_eq!(desired(&m, &[(Side::Ma, 1, json!("ma")), (Side::Crm, 2, Value::Null)]), (Some(Value::Null), Some(Value::Null)));
}

#[test]
fn ma_wins_mirrors_crm_wins() {
    let m = mapping(SyncBehaviour::MaWins, false);
    assert_eq!(desired(&m, &[(Side::Ma, 1, json!("ma")), (Side::Crm, 2, json!("crm"))]), (Some(json!("ma")), Some(json!("ma"))));
    assert_eq!(desired(&m, &[(Side::Crm, 2, json!("crm"))]), (Some(json!("crm")), Some(json!("crm"))));
}

#[test]
fn read_only_flows_one_way_and_ignores_the_other_side() {
    let m = mapping(SyncBehaviour::ReadOnly, false); // source: CRM
    let map = crate::mapping::FieldMap::new(vec![FieldMapping { ma: "email".into(), ..m }]).unwrap();
    let m = map.by_ma_field("email").unwrap();
    let mut fields = IdentityFields::default();
    let obs = |side, at, v: &str| Observation { field: "email".into(), side, at: t(at), value: json!(v), coarse: false };
    fields.observe_all(&map, &[obs(Side::Crm, 1, "crm"), obs(Side::Ma, 2, "ma edit")]);
    let s = fields.get("email").unwrap();
    assert_eq!(s.desired(m), Desired { ma: Some(json!("crm")), crm: None });
    // The MA edit was ignored entirely: the engine still thinks MA holds nothing.
    assert!(s.ma.last.is_none() && s.ma.known.is_none());
    assert_eq!(fields.plan([m], Side::Crm), vec![]);
}

#[test]
fn an_older_edit_never_overwrites_a_newer_one() {
    let m = mapping(SyncBehaviour::MostRecent, false);
    let mut s = state(&[(Side::Ma, 5, json!("new"))]);
    assert!(!s.observe(Side::Ma, &Versioned::new(t(3), json!("old"))));
    assert_eq!(s.desired(&m).crm, Some(json!("new")));
}

#[test]
fn redelivered_edits_change_nothing() {
    let mut s = state(&[(Side::Ma, 5, json!("x"))]);
    let before = s.clone();
    assert!(!s.observe(Side::Ma, &Versioned::new(t(5), json!("x"))));
    assert_eq!(s, before);
}

#[test]
fn the_engines_writes_are_not_edits() {
    let m = mapping(SyncBehaviour::CrmWins, false);
    let mut s = state(&[(Side::Ma, 1, json!("a"))]);
    assert_eq!(s.needed_write(&m, Side::Crm), Some(json!("a")));
    s.wrote(Side::Crm, t(2), json!("a"));
    assert_eq!(s.needed_write(&m, Side::Crm), None);
    // The CRM still has no user edit of its own, so a later MA edit still flows.
    s.observe(Side::Ma, &Versioned::new(t(3), json!("b")));
    assert_eq!(s.needed_write(&m, Side::Crm), Some(json!("b")));
}

/// A record-level stamp only (a real API): `coarse` observations of one
/// mapped field `f`, most recent wins.
fn coarse_world() -> (crate::mapping::FieldMap, IdentityFields) {
    let map = crate::mapping::FieldMap::new(vec![
        FieldMapping { ma: "f".into(), ..mapping(SyncBehaviour::MostRecent, false) },
        FieldMapping { ma: "email".into(), lead: Some("Email".into()), contact: None, ..mapping(SyncBehaviour::MostRecent, false) },
    ])
    .unwrap();
    (map, IdentityFields::default())
}

fn coarse(side: Side, at: i64, v: &str) -> Observation {
    Observation { field: "f".into(), side, at: t(at), value: json!(v), coarse: true }
}

#[test]
fn a_coarse_field_that_did_not_change_is_no_edit_even_with_a_newer_record_stamp() {
    let (map, mut fields) = coarse_world();
    // The MA user edits f at 5; the engine writes it to the CRM at 6.
    fields.observe_all(&map, &[Observation { coarse: false, ..coarse(Side::Ma, 5, "ma edit") }]);
    fields.wrote(Side::Crm, "f", t(6), json!("ma edit"));
    // A CRM user edits another field at 9: the record's stamp moves, f does not.
    assert_eq!(fields.observe_all(&map, &[coarse(Side::Crm, 9, "ma edit")]), 0);
    let m = map.by_ma_field("f").unwrap();
    assert_eq!(fields.get("f").unwrap().desired(m).crm, Some(json!("ma edit")));
    assert!(fields.get("f").unwrap().crm.last.is_none(), "no CRM edit of f was recorded");
}

#[test]
fn a_stale_coarse_re_read_older_than_the_engines_write_is_no_edit() {
    let (map, mut fields) = coarse_world();
    fields.observe_all(&map, &[coarse(Side::Ma, 5, "v2")]);
    fields.wrote(Side::Crm, "f", t(8), json!("v2"));
    // A snapshot of the CRM record taken at 7, before the write, read late.
    assert_eq!(fields.observe_all(&map, &[coarse(Side::Crm, 7, "v1")]), 0);
    assert_eq!(fields.get("f").unwrap().desired(map.by_ma_field("f").unwrap()).ma, Some(json!("v2")));
}

#[test]
fn a_coarse_change_newer_than_what_the_engine_knows_is_an_edit() {
    let (map, mut fields) = coarse_world();
    fields.observe_all(&map, &[coarse(Side::Ma, 5, "ma")]);
    fields.wrote(Side::Crm, "f", t(6), json!("ma"));
    // The engine's write at 6 came back with a CRM user's edit of f at 10
    // (the record was last saved by the engine, but f changed since).
    assert_eq!(fields.observe_all(&map, &[coarse(Side::Crm, 10, "crm")]), 1);
    let m = map.by_ma_field("f").unwrap();
    assert_eq!(fields.get("f").unwrap().desired(m).ma, Some(json!("crm")));
    // Unknown sides take any value as an edit.
    let (map, mut fresh) = coarse_world();
    assert_eq!(fresh.observe_all(&map, &[coarse(Side::Crm, 1, "first")]), 1);
}

#[test]
fn numbers_and_blanks_compare_by_meaning() {
    assert!(same_value(&json!(1), &json!(1.0)));
    assert!(same_value(&Value::Null, &json!("")));
    assert!(!same_value(&json!("a"), &json!("A")));
    assert!(!same_value(&json!(0), &Value::Null));
}

#[test]
fn field_state_serialises_compactly_and_round_trips() {
    let s = state(&[(Side::Ma, 1, json!("a")), (Side::Ma, 2, Value::Null)]);
    let text = serde_json::to_string(&s).unwrap();
    assert!(!text.contains("crm"), "{text}");
    assert_eq!(serde_json::from_str::<FieldState>(&text).unwrap(), s);
}

// --- Property: any interleaving, any delivery order, duplicates -------------

/// One step of a simulated timeline.
#[derive(Debug, Clone)]
enum Step {
    /// A user edits the field on a side.
    Edit(Side, Option<u8>),
    /// The engine receives (again, perhaps) the n-th edit made so far, modulo.
    Deliver(usize),
}

fn step() -> impl Strategy<Value = Step> {
    let side = prop_oneof![Just(Side::Ma), Just(Side::Crm)];
    prop_oneof![
        (side, proptest::option::weighted(0.75, 0u8..4)).prop_map(|(s, v)| Step::Edit(s, v)),
        any::<usize>().prop_map(Step::Deliver),
    ]
}

fn behaviour() -> impl Strategy<Value = (SyncBehaviour, bool)> {
    (
        prop_oneof![
            Just(SyncBehaviour::MostRecent),
            Just(SyncBehaviour::CrmWins),
            Just(SyncBehaviour::MaWins),
            Just(SyncBehaviour::ReadOnly)
        ],
        any::<bool>(),
    )
}

/// One side of the simulated world: its value and who wrote it last.
#[derive(Debug, Clone)]
struct Cell {
    value: Value,
    by_engine: bool,
}

/// The engine as the applier runs it for one field: merge, plan, write.
fn engine_apply(m: &FieldMapping, st: &mut FieldState, world: &mut [Cell; 2], clock: &mut i64, side: Side, at: i64, v: &Value) {
    if m.accepts_edits_from(side) {
        st.observe(side, &Versioned::new(t(at), v.clone()));
    }
    for target in [Side::Ma, Side::Crm] {
        if let Some(w) = st.needed_write(m, target) {
            *clock += 1;
            world[target as usize] = Cell { value: w.clone(), by_engine: true };
            st.wrote(target, t(*clock), w);
        }
    }
}

/// What the rules say, computed from the edit history alone, independently of
/// the engine's registers: the value each side must end with.
fn expected(m: &FieldMapping, edits: &[(Side, i64, Value)]) -> [Option<Value>; 2] {
    let latest = |side: Side, filled_only: bool| {
        edits
            .iter()
            .filter(|(s, _, v)| *s == side && (!filled_only || !is_blank(v)))
            .max_by(|a, b| a.1.cmp(&b.1))
            .map(|(_, at, v)| (*at, v.clone()))
    };
    let lf = |side| latest(side, true).or_else(|| latest(side, false));
    let bo = m.blank_overwrites;
    let pick = |side: Side| if bo { latest(side, false) } else { lf(side) };
    let value = match m.sync {
        SyncBehaviour::MostRecent => {
            let cands: Vec<(i64, Value)> = if bo {
                [latest(Side::Ma, false), latest(Side::Crm, false)].into_iter().flatten().collect()
            } else {
                let filled: Vec<_> = [latest(Side::Ma, true), latest(Side::Crm, true)].into_iter().flatten().collect();
                if filled.is_empty() { [latest(Side::Ma, false), latest(Side::Crm, false)].into_iter().flatten().collect() } else { filled }
            };
            cands.into_iter().max_by(|a, b| a.0.cmp(&b.0)).map(|c| c.1)
        }
        SyncBehaviour::CrmWins if bo => latest(Side::Crm, false).or(latest(Side::Ma, false)).map(|c| c.1),
        SyncBehaviour::CrmWins => latest(Side::Crm, true).or(latest(Side::Ma, true)).or(lf(Side::Crm)).or(lf(Side::Ma)).map(|c| c.1),
        SyncBehaviour::MaWins if bo => latest(Side::Ma, false).or(latest(Side::Crm, false)).map(|c| c.1),
        SyncBehaviour::MaWins => latest(Side::Ma, true).or(latest(Side::Crm, true)).or(lf(Side::Ma)).or(lf(Side::Crm)).map(|c| c.1),
        SyncBehaviour::ReadOnly => {
            let v = pick(Side::Crm).map(|c| c.1);
            return [v, None];
        }
    };
    [value.clone(), value]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// For any interleaving of edits on both sides, delivered in any order and
    /// with duplicates, both sides end with the values the behaviour defines,
    /// and one more delivery of anything causes no write (no loop).
    #[test]
    fn both_sides_converge_to_the_behaviours_values(
        (sync, blank_overwrites) in behaviour(),
        steps in proptest::collection::vec(step(), 1..40),
        final_order in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let m = mapping(sync, blank_overwrites);
        let value_of = |v: Option<u8>| v.map_or(Value::Null, |n| json!(format!("v{n}")));
        let mut world = [Cell { value: Value::Null, by_engine: false }, Cell { value: Value::Null, by_engine: false }];
        let mut st = FieldState::default();
        let mut edits: Vec<(Side, i64, Value)> = Vec::new();
        let mut delivered = vec![];
        let mut clock = 0i64;
        for s in &steps {
            match s {
                Step::Edit(side, v) => {
                    clock += 1;
                    let v = value_of(*v);
                    world[*side as usize] = Cell { value: v.clone(), by_engine: false };
                    edits.push((*side, clock, v));
                }
                Step::Deliver(n) if !edits.is_empty() => {
                    let (side, at, v) = edits[n % edits.len()].clone();
                    delivered.push(n % edits.len());
                    engine_apply(&m, &mut st, &mut world, &mut clock, side, at, &v);
                }
                Step::Deliver(_) => {}
            }
        }
        // Every edit is delivered at least once, the undelivered ones in a
        // shuffled order, then a few more duplicates.
        let mut rest: Vec<usize> = (0..edits.len()).filter(|i| !delivered.contains(i)).collect();
        for (i, k) in final_order.iter().enumerate() {
            if !rest.is_empty() { let n = rest.len(); rest.swap(i % n, k % n); }
        }
        rest.extend(final_order.iter().filter(|_| !edits.is_empty()).map(|k| k % edits.len()));
        for i in rest {
            let (side, at, v) = edits[i].clone();
            engine_apply(&m, &mut st, &mut world, &mut clock, side, at, &v);
        }

        let want = expected(&m, &edits);
        for side in [Side::Ma, Side::Crm] {
            let cell = &world[side as usize];
            match &want[side as usize] {
                // Read-only: a user edit on the non-source side made after the
                // engine's last write there stays until the next source change.
                _ if sync == SyncBehaviour::ReadOnly && side == Side::Ma && !cell.by_engine => {}
                Some(w) => prop_assert!(same_value(&cell.value, w), "{side:?} holds {:?}, rules say {w:?}; edits {edits:?}", cell.value),
                None => prop_assert!(!cell.by_engine, "{side:?} was written though the rules have no opinion"),
            }
        }
        // Quiescence: redelivering any edit causes no further write.
        let before = world.clone();
        for (side, at, v) in edits.clone() {
            let writes_before = clock;
            engine_apply(&m, &mut st, &mut world, &mut clock, side, at, &v);
            prop_assert_eq!(clock, writes_before, "a redelivery caused a write");
        }
        prop_assert_eq!(format!("{before:?}"), format!("{world:?}"));
    }
}

#[test]
fn a_versioned_value_reads_back_its_own_time_and_a_relaxed_one() {
    let v = Versioned::new(t(1_764_870_000_123_456), json!("x"));
    let text = serde_json::to_string(&v).unwrap();
    assert_eq!(serde_json::from_str::<Versioned>(&text).unwrap(), v);
    assert_eq!(serde_json::from_value::<Versioned>(serde_json::to_value(&v).unwrap()).unwrap(), v);
    // A space for the T, which chrono reads too.
    let relaxed: Versioned = serde_json::from_value(json!({"at": "2026-12-04 17:38:15.5+00:00", "v": 1})).unwrap();
    assert_eq!(relaxed.at, Utc.with_ymd_and_hms(2026, 12, 4, 17, 38, 15).unwrap() + chrono::Duration::milliseconds(500));
    assert!(serde_json::from_value::<Versioned>(json!({"at": "yesterday", "v": 1})).is_err());
}

#[test]
fn a_tie_in_time_goes_to_the_same_value_in_any_order_and_a_repeat_moves_nothing() {
    let (a, b) = (Versioned::new(t(5), json!("Acme")), Versioned::new(t(5), json!("Zeta")));
    for (first, second) in [(&a, &b), (&b, &a)] {
        let mut slot = Some(first.clone());
        keep_newest(&mut slot, second);
        assert_eq!(slot.as_ref(), Some(&b), "\"Zeta\" prints greater, whichever came first");
    }
    let mut slot = Some(a.clone());
    assert!(!keep_newest(&mut slot, &a), "the same value at the same time is not news");
}

#[test]
fn a_value_the_engine_put_there_itself_is_not_blanked_without_blank_overwrites() {
    // A new lead's placeholder: written by the engine, no filled edit anywhere.
    for sync in [SyncBehaviour::CrmWins, SyncBehaviour::MostRecent, SyncBehaviour::MaWins] {
        let mut s = state(&[(Side::Ma, 1, Value::Null)]);
        s.wrote(Side::Crm, t(2), json!("[[unknown]]"));
        assert_eq!(s.needed_write(&mapping(sync, false), Side::Crm), None, "{sync:?}");
        // A field that says blanks overwrite does blank it.
        assert_eq!(s.needed_write(&mapping(sync, true), Side::Crm), Some(Value::Null), "{sync:?}");
        // A real value, once there is one, replaces it.
        s.observe(Side::Ma, &Versioned::new(t(3), json!("Acme")));
        assert_eq!(s.needed_write(&mapping(sync, false), Side::Crm), Some(json!("Acme")), "{sync:?}");
    }
}
