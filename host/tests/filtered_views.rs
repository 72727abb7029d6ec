//! Filtered sub-views through the real `Store` and `Views`: a reload that
//! redefines a derived view re-places filtered subscriptions in their own
//! filtered copy (the delete/upsert diff respects the filter), and the
//! copy is shared by equal filters and dropped with its last subscriber.

use serde_json::{json, Value};
use vista_host::filters::Filters;
use vista_host::frame::Frame;
use vista_host::store::Store;
use vista_host::views::{Notice, SubscribeRequest, Views};
use vista_plugin_api::view::view;
use vista_plugin_api::Mutation;

fn frame_json(frame: &Frame) -> Value {
    serde_json::from_slice(&frame.bytes).expect("plain JSON frame")
}

#[test]
fn a_redefined_view_keeps_filtered_subscribers_inside_their_filter() {
    let mut store = Store::new();
    let mut views = Views::new();
    for (key, team, score) in [
        ("a", "red", 5),
        ("b", "blue", 4),
        ("c", "red", 3),
        ("d", "red", 2),
    ] {
        store.apply(Mutation::patch(
            "P",
            key,
            json!({"team": team, "score": score}),
        ));
    }
    let top = |n| view("P/top").from("P").sort_desc("score").take(n);
    views.add_derived(top(2), &"test".into(), &store, &mut |_, _| {});
    let filters = Filters::parse(Some(&json!({"team": "red"}))).unwrap();
    let request = SubscribeRequest {
        view: "P/top".into(),
        with_snapshot: true,
        filters,
        ..SubscribeRequest::default()
    };
    let start = views.subscribe(1, &request, &store).unwrap();
    let keys: Vec<&str> = start
        .snapshot
        .as_ref()
        .unwrap()
        .entries
        .iter()
        .map(|e| e.key.as_str())
        .collect();
    assert_eq!(keys, ["a", "c"], "the best 2 red ones");
    views.subscribe(2, &request, &store).unwrap();
    assert_eq!(views.filtered_views(), 1, "equal filters share");

    let mut sent: Vec<(u64, Value)> = Vec::new();
    views.redefine("P/top", top(3), &store, &mut |conn, notice| {
        if let Notice::Frame(frame) = notice {
            sent.push((conn, frame_json(&frame)));
        }
    });
    // Each red subscriber gains d (the third red), never b (blue).
    for conn in [1, 2] {
        let got: Vec<(&str, &str)> = sent
            .iter()
            .filter(|(c, _)| *c == conn)
            .map(|(_, f)| (f["op"].as_str().unwrap(), f["key"].as_str().unwrap()))
            .collect();
        assert_eq!(got, [("upsert", "d")], "conn {conn}");
    }
    // Live changes after the redefinition still go through the filter.
    let mut live = Vec::new();
    let change = store.apply(Mutation::patch("P", "b", json!({"score": 9})));
    views.apply(&change, &store, &mut |conn, frame| {
        live.push((conn, frame_json(frame)))
    });
    assert!(live.is_empty(), "blue b is outside the filter: {live:?}");
    let change = store.apply(Mutation::patch("P", "c", json!({"team": "blue"})));
    views.apply(&change, &store, &mut |conn, frame| {
        live.push((conn, frame_json(frame)))
    });
    assert_eq!(live.len(), 2, "{live:?}");
    assert!(live
        .iter()
        .all(|(_, f)| f["op"] == "delete" && f["key"] == "c"));

    views.unsubscribe(1, "P/top", None);
    assert_eq!(views.filtered_views(), 1);
    views.remove_conn(2);
    assert_eq!(
        views.filtered_views(),
        0,
        "dropped with its last subscriber"
    );
}

/// Many distinct filters (indexed string entries, a number entry that is
/// not indexed, two entries): after a long run of enters, moves between
/// filters, leaves and deletes, every subscriber's view of its filter is
/// exactly the store's matching entities; only concerned sub-views are
/// asked about a change (the filter index), and none may miss one.
#[test]
fn every_filtered_subscriber_ends_with_exactly_its_matching_entities() {
    use std::collections::{BTreeSet, HashMap};
    let mut store = Store::new();
    let mut views = Views::new();
    let all = view("P/all").from("P").sort_desc("score");
    views.add_derived(all, &"test".into(), &store, &mut |_, _| {});
    let teams = [
        json!("red"),
        json!("blue"),
        json!(5),
        json!(true),
        json!("5"),
    ];
    let filters: Vec<Value> = vec![
        json!({"team": "red"}),
        json!({"team": "blue"}),
        json!({"team": "5"}),
        json!({"team": "true"}),
        json!({"team": 5}),
        json!({"team": "red", "score": 3}),
        json!({"meta.tag": "x"}),
    ];
    let mut seen: HashMap<u64, BTreeSet<String>> = HashMap::new();
    for (conn, f) in filters.iter().enumerate() {
        let request = SubscribeRequest {
            view: "P/all".into(),
            with_snapshot: true,
            filters: Filters::parse(Some(f)).unwrap(),
            ..SubscribeRequest::default()
        };
        views.subscribe(conn as u64, &request, &store).unwrap();
        seen.insert(conn as u64, BTreeSet::new());
    }
    assert_eq!(views.filtered_views(), filters.len());
    let mut rng = 7u64;
    let mut next = |n: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % n
    };
    for _ in 0..3000 {
        let key = format!("k{}", next(40));
        let mutation = match next(10) {
            0 => Mutation::delete("P", key),
            1 => Mutation::patch(
                "P",
                key,
                json!({"meta": {"tag": if next(2) == 0 { "x" } else { "y" }}}),
            ),
            2 => Mutation::patch("P", key, json!({"score": next(5)})),
            _ => Mutation::patch(
                "P",
                key,
                json!({"team": teams[next(5) as usize], "score": next(5)}),
            ),
        };
        let change = store.apply(mutation);
        views.apply(&change, &store, &mut |conn, frame| {
            let frame = frame_json(frame);
            let key = frame["key"].as_str().unwrap().to_owned();
            let members = seen.get_mut(&conn).unwrap();
            match frame["op"].as_str().unwrap() {
                "upsert" => members.insert(key),
                "delete" => members.remove(&key),
                other => panic!("unexpected {other}"),
            };
        });
    }
    for (conn, f) in filters.iter().enumerate() {
        let filter = Filters::parse(Some(f)).unwrap().unwrap();
        let expected: BTreeSet<String> = store
            .table("P")
            .filter(|(_, entity)| filter.matches(&entity.tree()))
            .map(|(key, _)| key.to_string())
            .collect();
        assert_eq!(seen[&(conn as u64)], expected, "filters {f}");
        assert!(
            !expected.is_empty(),
            "filters {f} matched something at the end"
        );
    }
}

/// The engine lets views fall behind the store only while no `skip`/`take`
/// window is subscribed; the count must follow every way a window group
/// ends, in base views and filtered sub-views alike.
#[test]
fn windows_are_counted_until_their_group_ends_however_it_ends() {
    let mut store = Store::new();
    let mut views = Views::new();
    store.apply(Mutation::patch(
        "P",
        "a",
        json!({"team": "red", "score": 1}),
    ));
    views.add_base_views("P", &"test".into(), &store, &mut |_, _| {});
    views.add_derived(
        view("P/top").from("P").sort_desc("score").take(5),
        &"test".into(),
        &store,
        &mut |_, _| {},
    );
    let window = |view: &str, filters: Option<Value>| SubscribeRequest {
        view: view.into(),
        take: Some(2),
        with_snapshot: true,
        filters: Filters::parse(filters.as_ref()).unwrap(),
        ..SubscribeRequest::default()
    };
    let whole = SubscribeRequest {
        view: "P/list".into(),
        with_snapshot: true,
        ..SubscribeRequest::default()
    };
    views.subscribe(1, &whole, &store).unwrap();
    assert!(
        !views.windows_exist(),
        "a whole-view subscription is no window"
    );

    views.subscribe(1, &window("P/list", None), &store).unwrap();
    assert!(views.windows_exist());
    views.unsubscribe(1, "P/list", None);
    assert!(!views.windows_exist(), "its last subscriber unsubscribed");

    views
        .subscribe(2, &window("P/list", Some(json!({"team": "red"}))), &store)
        .unwrap();
    assert!(views.windows_exist(), "a window of a filtered sub-view");
    views.remove_conn(2);
    assert!(!views.windows_exist(), "its connection closed");

    views.subscribe(3, &window("P/top", None), &store).unwrap();
    assert!(views.windows_exist());
    views.remove_view("P/top", &mut |_, _| {});
    assert!(!views.windows_exist(), "its view removed");
}
