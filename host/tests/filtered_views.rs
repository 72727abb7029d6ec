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
