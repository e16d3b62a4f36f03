//! SOQL subset: the queries the connector writes, edge cases of the
//! grammar, and a round trip of generated queries through text.

use chrono::TimeZone;
use proptest::prelude::*;

use super::*;

#[test]
fn the_connectors_change_query_round_trips() {
    let q = Query::select(["Id", "Email", "SystemModstamp"], "Lead")
        .and_where(Cond::cmp("SystemModstamp", Op::Ge, Literal::DateTime(Utc.with_ymd_and_hms(2024, 5, 1, 10, 20, 30).unwrap())))
        .order_by("SystemModstamp", Order::Asc)
        .order_by("Id", Order::Asc);
    let text = q.to_string();
    assert_eq!(
        text,
        "SELECT Id, Email, SystemModstamp FROM Lead WHERE SystemModstamp >= 2024-05-01T10:20:30Z ORDER BY SystemModstamp ASC, Id ASC"
    );
    assert_eq!(parse(&text).unwrap(), q);
}

#[test]
fn keywords_are_case_insensitive_and_strings_escape() {
    let q =
        parse("select Id from Contact where Email in ('o\\'brien@x.example', 'a@b.c') and not (IsDeleted = true) order by Id desc limit 5")
            .unwrap();
    assert_eq!(q.object, "Contact");
    assert_eq!(q.limit, Some(5));
    assert_eq!(q.order_by, vec![("Id".to_owned(), Order::Desc)]);
    let Some(Cond::And(parts)) = &q.filter else { panic!("{q:?}") };
    assert_eq!(parts[0], Cond::is_in("Email", [Literal::str("o'brien@x.example"), Literal::str("a@b.c")]));
    assert_eq!(parts[1], Cond::Not(Box::new(Cond::cmp("IsDeleted", Op::Eq, Literal::Bool(true)))));
}

#[test]
fn date_times_take_fractions_and_offsets() {
    let q = parse("SELECT Id FROM Lead WHERE SystemModstamp > 2024-05-01T12:20:30.250+02:00").unwrap();
    let Some(Cond::Cmp { value: Literal::DateTime(t), .. }) = q.filter else { panic!() };
    assert_eq!(t, Utc.with_ymd_and_hms(2024, 5, 1, 10, 20, 30).unwrap() + chrono::Duration::milliseconds(250));
}

#[test]
fn malformed_queries_say_where() {
    for (text, at) in [
        ("SELECT FROM Lead", 7),
        ("SELECT Id FROM Lead WHERE", 25),
        ("SELECT Id FROM Lead WHERE Email ~ 'x'", 32),
        ("SELECT Id FROM Lead LIMIT x", 26),
    ] {
        let e = parse(text).unwrap_err();
        assert_eq!(e.at, at, "{text}: {e}");
        assert!(e.to_string().starts_with("MALFORMED_QUERY"), "{e}");
    }
}

fn ident() -> impl Strategy<Value = String> {
    "[A-Z][A-Za-z0-9]{0,8}(__c)?".prop_filter("not a keyword", |s| !is_reserved(s))
}

fn literal() -> impl Strategy<Value = Literal> {
    prop_oneof![
        "[ -~]{0,12}".prop_map(Literal::Str),
        (-1_000_000i64..1_000_000).prop_map(|n| Literal::Num(n.to_string())),
        any::<bool>().prop_map(Literal::Bool),
        Just(Literal::Null),
        (0i64..4_000_000_000, 0u32..1000).prop_map(|(s, ms)| Literal::DateTime(Utc.timestamp_opt(s, ms * 1_000_000).unwrap())),
        (0i32..3650).prop_map(|d| Literal::Date(NaiveDate::from_ymd_opt(2000, 1, 1).unwrap() + chrono::Duration::days(d.into()))),
    ]
}

fn cond() -> impl Strategy<Value = Cond> {
    let leaf = prop_oneof![
        (ident(), prop_oneof![Just(Op::Eq), Just(Op::Ne), Just(Op::Lt), Just(Op::Le), Just(Op::Gt), Just(Op::Ge)], literal())
            .prop_map(|(field, op, value)| Cond::Cmp { field, op, value }),
        (ident(), prop::collection::vec(literal(), 1..4), any::<bool>()).prop_map(|(field, values, negated)| Cond::In {
            field,
            values,
            negated
        }),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(Cond::And),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Cond::Or),
            inner.prop_map(|c| Cond::Not(Box::new(c))),
        ]
    })
}

proptest! {
    #[test]
    fn generated_queries_survive_text(
        fields in prop::collection::vec(ident(), 1..5),
        object in ident(),
        filter in prop::option::of(cond()),
        order in prop::collection::vec((ident(), any::<bool>()), 0..3),
        limit in prop::option::of(1u64..5000),
    ) {
        let q = Query {
            fields,
            object,
            filter,
            order_by: order.into_iter().map(|(f, asc)| (f, if asc { Order::Asc } else { Order::Desc })).collect(),
            limit,
        };
        prop_assert_eq!(parse(&q.to_string()).unwrap(), q);
    }
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    // Each of these aborted the whole server before the bound.
    for (open, close) in [("(", ")"), ("NOT (", ")"), ("NOT ", "")] {
        let deep = format!("SELECT Id FROM Lead WHERE {}Email = 'a'{}", open.repeat(10_000), close.repeat(10_000));
        let e = parse(&deep).unwrap_err();
        assert!(e.message.contains("nests deeper"), "{open:?}: {e}");
    }
    // As deep as allowed still parses, and prints back to the same query.
    let ok = format!("SELECT Id FROM Lead WHERE {}Email = 'a'{}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
    parse(&ok).unwrap();
    let nots = format!("SELECT Id FROM Lead WHERE {}Email = 'a'", "NOT ".repeat(MAX_NESTING));
    let q = parse(&nots).unwrap();
    assert_eq!(parse(&q.to_string()).unwrap(), q);
}

#[test]
fn queries_over_salesforces_length_are_refused() {
    let long = format!("SELECT Id FROM Lead WHERE Email IN ({})", vec!["'a@b.example'"; 10_000].join(", "));
    assert!(long.len() > MAX_QUERY_CHARS);
    let e = parse(&long).unwrap_err();
    assert!(e.to_string().starts_with("MALFORMED_QUERY") && e.message.contains("longer than"), "{e}");
}

/// Text made of the query language's own pieces, in any order: what a
/// fuzzer finds fastest.
fn soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("SELECT "),
        Just("FROM "),
        Just("WHERE "),
        Just("AND "),
        Just("OR "),
        Just("NOT "),
        Just("IN "),
        Just("ORDER BY "),
        Just("LIMIT "),
        Just("NULLS "),
        Just("("),
        Just(")"),
        Just(","),
        Just("= "),
        Just("<= "),
        Just("!"),
        Just("'x' "),
        Just("'\\"),
        Just("'"),
        Just("12 "),
        Just("-"),
        Just("2024-05-01T10:20:30Z "),
        Just("2024-13-01 "),
        Just("Email "),
        Just("é"),
        Just("\u{1F600}"),
    ];
    prop::collection::vec(piece, 0..60).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// Whatever the text, the parser answers (a query or MALFORMED_QUERY)
    /// and never panics; what it accepts prints back to itself.
    #[test]
    fn any_text_is_answered_without_a_panic(text in prop_oneof![soup(), any::<String>()]) {
        if let Ok(q) = parse(&text) {
            prop_assert_eq!(parse(&q.to_string()).unwrap(), q);
        }
    }
}
