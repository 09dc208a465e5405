//! Unit tests of `imap::thread`.

use super::super::sortkeys::{subject_key, SortFields};
use super::*;

/// A message: raw subject, Message-ID, references, Date.
fn msg(subject: &str, id: &str, refs: &[&str], date: i64) -> SortFields {
    let (subject, reply) = subject_key(subject);
    SortFields {
        date: Some(date),
        subject,
        reply,
        message_id: (!id.is_empty()).then(|| id.to_string()),
        references: refs.iter().map(|r| r.to_string()).collect(),
        ..SortFields::default()
    }
}

fn items(fields: &[SortFields]) -> Vec<SortItem<'_>> {
    fields
        .iter()
        .zip(1u32..)
        .map(|(fields, seq)| SortItem {
            seq,
            uid: seq * 10,
            arrival: 0,
            size: 0,
            fields,
        })
        .collect()
}

/// Threads rendered with sequence numbers.
fn refs(fields: &[SortFields]) -> String {
    render(&references(&items(fields)), |i| i as u32 + 1)
}

fn node(msg: Option<usize>, children: Vec<Node>) -> Node {
    Node { msg, children }
}

#[test]
fn renders_the_rfc_examples() {
    let chain = |ns: &[usize], tail: Vec<Node>| {
        ns.iter()
            .rev()
            .fold(tail, |kids, &n| vec![node(Some(n), kids)])
    };
    let threads = vec![
        Node::leaf(2),
        node(
            Some(3),
            chain(
                &[6],
                vec![
                    chain(&[4, 23], vec![]).remove(0),
                    chain(&[44, 7, 96], vec![]).remove(0),
                ],
            ),
        ),
    ];
    assert_eq!(render(&threads, |i| i as u32), "(2)(3 6 (4 23)(44 7 96))");
    let dummy = vec![node(None, vec![Node::leaf(3), Node::leaf(5)])];
    assert_eq!(render(&dummy, |i| i as u32), "((3)(5))");
    // Dummies inside a thread or with one child do not show; empty ones vanish.
    let odd = vec![
        node(None, vec![]),
        node(None, vec![node(None, vec![Node::leaf(1)])]),
        node(
            Some(2),
            vec![node(None, vec![Node::leaf(3), Node::leaf(4)])],
        ),
        node(Some(5), vec![node(None, vec![Node::leaf(6)])]),
    ];
    assert_eq!(render(&odd, |i| i as u32), "(1)(2 (3)(4))(5 6)");
    assert_eq!(render(&[], |i| i as u32), "");
}

#[test]
fn deep_chains_neither_overflow_nor_panic() {
    let mut chain = Node::leaf(10_000);
    for n in (1..10_000).rev() {
        chain = node(Some(n), vec![chain]);
    }
    let text = render(&[chain], |i| i as u32);
    assert!(text.starts_with("(1 2 3 ") && text.ends_with(" 9999 10000)"));

    let ids: Vec<String> = (0..10_000).map(|i| format!("m{i}@x")).collect();
    let fields: Vec<SortFields> = (0..10_000)
        .map(|i| match i {
            0 => msg("chain", &ids[0], &[], 0),
            _ => msg("Re: chain", &ids[i], &[ids[i - 1].as_str()], i as i64),
        })
        .collect();
    let text = refs(&fields);
    assert!(text.starts_with("(1 2 3 ") && text.ends_with(" 9999 10000)"));
    assert_eq!(text.matches(' ').count(), 9_999);
}

#[test]
fn missing_parents_become_dummies() {
    let fields = [
        msg("a", "1@x", &[], 1),
        msg("b", "2@x", &["gone@x"], 2),
        msg("c", "3@x", &["gone@x"], 3),
        msg("d", "4@x", &["lost@x"], 0),
    ];
    // One child of a missing parent takes its place; two stay under a dummy.
    assert_eq!(refs(&fields), "(4)(1)((2)(3))");
}

#[test]
fn references_link_and_sort_siblings() {
    let fields = [
        msg("t", "a@x", &[], 1),
        msg("Re: t", "b@x", &["a@x"], 2),
        msg("Re: t", "c@x", &["a@x", "b@x"], 4),
        msg("Re: t", "d@x", &["a@x"], 3),
        // Truncated References: d is known, the link to it wins.
        msg("Re: t", "e@x", &["d@x"], 5),
    ];
    assert_eq!(refs(&fields), "(1 (2 3)(4 5))");
}

#[test]
fn threads_merge_by_subject() {
    // A reply joins the original; two originals go under a dummy.
    let reply = [msg("Hello", "1@x", &[], 2), msg("Re: hello", "2@x", &[], 1)];
    assert_eq!(refs(&reply), "(1 2)");
    let same = [
        msg("x", "1@x", &[], 1),
        msg("X", "2@x", &[], 2),
        msg("y", "3@x", &[], 3),
    ];
    assert_eq!(refs(&same), "((1)(2))(3)");
    // Two dummies with one subject pool their children.
    let dummies = [
        msg("T", "1@x", &["p@x"], 1),
        msg("T", "2@x", &["p@x"], 2),
        msg("T", "3@x", &["q@x"], 3),
        msg("T", "4@x", &["q@x"], 4),
    ];
    assert_eq!(refs(&dummies), "((1)(2)(3)(4))");
    // A dummy takes a message with its subject; empty subjects never merge.
    let mixed = [
        msg("Re: T", "1@x", &[], 5),
        msg("T", "2@x", &["p@x"], 1),
        msg("T", "3@x", &["p@x"], 2),
        msg("", "4@x", &[], 3),
        msg("", "5@x", &[], 4),
    ];
    assert_eq!(refs(&mixed), "((2)(3)(1))(4)(5)");
}

#[test]
fn loops_are_broken() {
    let two = [msg("a", "a@x", &["b@x"], 1), msg("b", "b@x", &["a@x"], 2)];
    assert_eq!(refs(&two), "(2 1)");
    let three = [
        msg("a", "a@x", &["c@x"], 1),
        msg("b", "b@x", &["a@x"], 2),
        msg("c", "c@x", &["b@x"], 3),
    ];
    let text = refs(&three);
    assert_eq!(text.matches(char::is_numeric).count(), 3, "{text}");
    let own = [msg("a", "a@x", &["a@x", "z@x", "a@x"], 1)];
    assert_eq!(refs(&own), "(1)");
}

#[test]
fn duplicate_message_ids_are_distinct_messages() {
    let fields = [
        msg("one", "x@x", &[], 1),
        msg("two", "x@x", &[], 2),
        msg("three", "y@x", &["x@x"], 3),
        msg("four", "", &["x@x"], 4),
    ];
    assert_eq!(refs(&fields), "(1 (3)(4))(2)");
}

#[test]
fn ordered_subject_groups_flat() {
    let fields = [
        msg("A", "", &[], 3),
        msg("Re: B", "", &[], 1),
        msg("b", "", &[], 2),
        msg("re: a", "", &[], 4),
        msg("[fwd: a]", "", &[], 5),
        msg("C", "", &[], 3),
    ];
    let threads = ordered_subject(&items(&fields));
    assert_eq!(render(&threads, |i| i as u32 + 1), "(2 3)(1 (4)(5))(6)");
}

/// Every message index under `threads`, each once.
fn indexes(threads: &[Node]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut stack: Vec<&Node> = threads.iter().collect();
    while let Some(n) = stack.pop() {
        out.extend(n.msg);
        stack.extend(n.children.iter());
    }
    out.sort_unstable();
    out
}

#[test]
fn every_message_is_threaded_once() {
    let mut seed = 0x7e57_u64;
    let mut rng = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..300 {
        let n = (rng() % 20) as usize;
        let id = |r: u64| format!("{}@x", r % 8);
        let fields: Vec<SortFields> = (0..n)
            .map(|_| {
                let refs: Vec<String> = (0..rng() % 4).map(|_| id(rng())).collect();
                let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
                let subject = ["a", "Re: a", "b", ""][(rng() % 4) as usize];
                msg(subject, &id(rng()), &refs, (rng() % 5) as i64)
            })
            .collect();
        let it = items(&fields);
        let all: Vec<usize> = (0..n).collect();
        assert_eq!(indexes(&references(&it)), all);
        assert_eq!(indexes(&ordered_subject(&it)), all);
        let text = render(&references(&it), |i| i as u32 + 1);
        assert_eq!(text.matches('(').count(), text.matches(')').count());
    }
}
