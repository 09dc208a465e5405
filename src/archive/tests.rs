//! Unit tests of the archive: filing, duplicates, retention, bifurcated reports.

use super::*;

/// A spool and an archive in a fresh directory, the intake on (no worker thread: tests
/// call [`archive_all`]), and a gateway mailbox to deliver to.
fn setup(
    config: ArchiveConfig,
) -> (
    PathBuf,
    Arc<Spool>,
    Arc<Archive>,
    crate::mailbox::MailboxRecord,
) {
    let dir = std::env::temp_dir().join(format!("jg-archive-{}", crypto::random_hex128()));
    let spool = Spool::open(&dir).unwrap();
    let archive = Archive::open(&config, spool.clone()).unwrap();
    let (tx, _rx) = mpsc::channel();
    spool.set_intake(Intake {
        dir: archive.intake_dir.clone(),
        recipient: archive.intake_key.clone(),
        notify: tx,
        wants_copy: Box::new(|| true),
    });
    let (mbx, _) = spool.mailboxes().create("m", "").unwrap();
    (dir, spool, archive, mbx)
}

/// Removes a test's directory and the keys kept beside it (`<dir>.intake.key`,
/// `<dir>.chain.key`: outside the data directory, as in production).
fn cleanup(dir: &Path) {
    fs::remove_dir_all(dir).unwrap();
    for key in ["intake.key", "chain.key"] {
        let _ = fs::remove_file(format!("{}.{key}", dir.display()));
    }
}

/// Archives every intake file in one commit.
fn archive_all(archive: &Archive) {
    let mut pending = Pending::default();
    for name in archive.pending_files().unwrap() {
        archive.process(&name, &mut pending).unwrap();
    }
    archive.commit(&mut pending).unwrap();
    assert!(archive.pending_files().unwrap().is_empty());
}

/// Delivers `raw` from 127.0.0.1 to `mbx`, arrived at `received`.
async fn deliver(
    spool: &Arc<Spool>,
    mbx: &crate::mailbox::MailboxRecord,
    raw: &[u8],
    received: i64,
) {
    let target = crate::spool::Target {
        mailbox: mbx.id.clone(),
        recipient: crypto::parse_recipient(&mbx.public_key).unwrap(),
        envelope: Envelope {
            id: "t".into(),
            mail_from: String::new(),
            rcpt_to: vec![format!("{}@gw.test", mbx.id)],
            client: "127.0.0.1:1".into(),
            helo: "h".into(),
            tls: None,
            received,
        },
    };
    let mut d = spool.begin(vec![target]);
    d.write(raw);
    d.commit().await.unwrap();
}

fn bifurcated(recipient: &str, hub: &str) -> Vec<u8> {
    let original = format!("Received: from {hub}\r\nX-MS-Exchange-Organization-Id: {hub}\r\nFrom: alice@x.example\r\nSubject: one message\r\nMessage-ID: <m1@x.example>\r\n\r\nbody\r\n");
    format!("X-MS-Journal-Report:\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nSender: alice@x.example\r\nMessage-Id: <m1@x.example>\r\nRecipient: {recipient}\r\n\r\n--B\r\nContent-Type: message/rfc822\r\n\r\n{original}\r\n--B--\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bifurcated_reports_are_stored_once_within_and_across_commits() {
    let (dir, spool, archive, mbx) = setup(ArchiveConfig {
        journal_sources: vec!["127.0.0.0/8".parse().unwrap()],
        ..ArchiveConfig::default()
    });
    let mut people = Vec::new();
    for name in ["bob", "carol", "dave"] {
        people.push(
            archive
                .users()
                .add(&format!("{name}@x.example"), &[], "", false)
                .unwrap(),
        );
    }
    // bob and carol in one commit, dave in a later one; each copy passed different hubs.
    let now = chrono::Utc::now().timestamp();
    deliver(&spool, &mbx, &bifurcated("bob@x.example", "hub1"), now).await;
    deliver(&spool, &mbx, &bifurcated("carol@x.example", "hub2"), now).await;
    archive_all(&archive);
    deliver(&spool, &mbx, &bifurcated("dave@x.example", "hub3"), now).await;
    archive_all(&archive);
    let stats = archive.stats().unwrap();
    assert_eq!((stats.items, stats.duplicates_merged), (1, 2));
    assert_eq!(fs::read_dir(&archive.items_dir).unwrap().count(), 1);
    let mut seen = Vec::new();
    for ((user, password), name) in people.iter().zip(["bob", "carol", "dave"]) {
        let inbox = format!("{}/INBOX", user.id);
        let listed = archive.list(&inbox, user).unwrap();
        assert_eq!(listed.len(), 1, "{name}");
        let identity = crypto::unwrap_identity(
            &archive.users().wrapped_identity(&user.id).unwrap(),
            password,
        )
        .unwrap();
        let mut raw = String::new();
        archive
            .open_message(&inbox, listed[0].uid, &Keyring::new(identity.clone()))
            .unwrap()
            .read_to_string(&mut raw)
            .unwrap();
        seen.push(raw);
    }
    // Intake files are archived in order of arrival: the first copy is the one kept.
    assert!(seen[0].contains("hub1"), "{}", seen[0]);
    assert!(seen.iter().all(|r| *r == seen[0]));
    spool.shutdown();
    cleanup(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_copies_are_filed_and_retention_removes_old_ones() {
    let (dir, spool, archive, mbx) = setup(ArchiveConfig {
        retention_days: 1,
        envelope_headers: vec![crate::config::EnvelopeHeader {
            network: "127.0.0.0/8".parse().unwrap(),
            header: "X-Envelope-To".into(),
        }],
        ..ArchiveConfig::default()
    });
    let (bob, password) = archive
        .users()
        .add("bob@x.example", &[], "", false)
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    for (received, subject) in [(now - 3 * 86_400, "old"), (now, "new")] {
        let raw = format!("X-Envelope-To: <BOB@x.example>\r\nSubject: {subject}\r\n\r\nbody\r\n");
        deliver(&spool, &mbx, raw.as_bytes(), received).await;
    }
    archive_all(&archive);
    let inbox = format!("{}/INBOX", bob.id);
    let listed = archive.list(&inbox, &bob).unwrap();
    assert_eq!(listed.len(), 2);
    let identity = crypto::unwrap_identity(
        &archive.users().wrapped_identity(&bob.id).unwrap(),
        &password,
    )
    .unwrap();
    let mut first = String::new();
    archive
        .open_message(&inbox, listed[0].uid, &Keyring::new(identity.clone()))
        .unwrap()
        .read_to_string(&mut first)
        .unwrap();
    assert!(first.ends_with("Subject: old\r\n\r\nbody\r\n"), "{first}");
    assert_eq!(archive.apply_retention().unwrap(), 1);
    let left = archive.list(&inbox, &bob).unwrap();
    assert_eq!(
        left.iter().map(|m| m.uid).collect::<Vec<_>>(),
        vec![listed[1].uid]
    );
    // The pack they shared was compacted: only the kept item's bytes are left on disk.
    let files: Vec<_> = fs::read_dir(&archive.items_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let on_disk: u64 = files.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    let kept = archive.store.entry(&inbox, listed[1].uid).unwrap().unwrap();
    let kept = archive.store.item(kept.item).unwrap().unwrap();
    assert_eq!((files.len(), on_disk), (1, kept.location.unwrap().len));
    let mut second = String::new();
    archive
        .open_message(&inbox, listed[1].uid, &Keyring::new(identity.clone()))
        .unwrap()
        .read_to_string(&mut second)
        .unwrap();
    assert!(second.contains("Subject: new"), "{second}");
    assert_eq!(archive.stats().unwrap().retention_removed, 1);
    spool.shutdown();
    cleanup(&dir);
}

#[test]
fn intake_names() {
    assert_eq!(
        intake_time("1700000000.0123456789abcdef0123456789abcdef.age"),
        Some(1_700_000_000)
    );
    assert_eq!(
        intake_time("damaged-1.0123456789abcdef0123456789abcdef.age"),
        None
    );
    assert_eq!(intake_time("1.x.age"), None);
}

fn read_all(archive: &Archive, folder: &str, uid: u32, identity: &Identity) -> String {
    let mut raw = String::new();
    archive
        .open_message(folder, uid, &Keyring::new(identity.clone()))
        .unwrap()
        .read_to_string(&mut raw)
        .unwrap();
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_grant_restores_history_and_keeps_catch_all_mail() {
    let (dir, spool, archive, mbx) = setup(ArchiveConfig {
        envelope_headers: vec![crate::config::EnvelopeHeader {
            network: "127.0.0.0/8".parse().unwrap(),
            header: "X-Envelope-To".into(),
        }],
        ..ArchiveConfig::default()
    });
    let (bob, _) = archive
        .users()
        .add("bob@x.example", &[], "", false)
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    deliver(
        &spool,
        &mbx,
        b"X-Envelope-To: <bob@x.example>\r\nSubject: before\r\n\r\nb\r\n",
        now,
    )
    .await;
    archive_all(&archive);
    let (_, secret) = archive.recovery().create(false, None).unwrap();
    let recovery::Secret::Whole(secret) = secret else {
        panic!("whole")
    };
    let recovery_key = recovery::read_secret(&secret).unwrap();
    deliver(
        &spool,
        &mbx,
        b"X-Envelope-To: <bob@x.example>\r\nSubject: after\r\n\r\nb\r\n",
        now,
    )
    .await;
    // Nobody reads the catch-all yet: kept for the recovery key, not dropped.
    deliver(
        &spool,
        &mbx,
        b"X-Envelope-To: <nobody@x.example>\r\nSubject: lost?\r\n\r\nb\r\n",
        now,
    )
    .await;
    archive_all(&archive);
    assert_eq!(archive.stats().unwrap().unreadable_dropped, 0);

    let (bob, password) = archive.users().reset_password(&bob.login).unwrap();
    let inbox = format!("{}/INBOX", bob.id);
    assert!(archive.list(&inbox, &bob).unwrap().is_empty());
    let mut calls = Vec::new();
    let report = archive
        .grant(
            &bob,
            std::slice::from_ref(&recovery_key),
            GRANT_BATCH,
            &mut |d, t| calls.push((d, t)),
        )
        .unwrap();
    assert_eq!(
        (
            report.entitled,
            report.granted,
            report.already,
            report.unreachable
        ),
        (2, 1, 0, 1)
    );
    assert_eq!(calls.last(), Some(&(1, 1)));
    let identity = crypto::unwrap_identity(
        &archive.users().wrapped_identity(&bob.id).unwrap(),
        &password,
    )
    .unwrap();
    let listed = archive.list(&inbox, &bob).unwrap();
    assert_eq!(
        listed.len(),
        1,
        "the item from before the recovery key stays sealed"
    );
    assert!(read_all(&archive, &inbox, listed[0].uid, &identity).contains("Subject: after"));
    // The grant gave bob's new key the summaries too (no fallback to reading the item).
    let header = archive
        .summary_header(
            &inbox,
            listed[0].uid,
            &Keyring::new(identity.clone()),
            &summary::SummaryReader::default(),
        )
        .unwrap()
        .expect("the summary opens after the grant");
    assert!(String::from_utf8_lossy(&header).contains("Subject: after"));
    let again = archive
        .grant(
            &bob,
            std::slice::from_ref(&recovery_key),
            GRANT_BATCH,
            &mut |_, _| {},
        )
        .unwrap();
    assert_eq!((again.granted, again.already), (0, 1));

    // An auditor added later sees the past, the catch-all included, after a grant.
    let (auditor, apw) = archive
        .users()
        .add("audit@x.example", &[], "", true)
        .unwrap();
    assert!(archive.list(UNKNOWN_FOLDER, &auditor).unwrap().is_empty());
    let report = archive
        .grant(&auditor, &[recovery_key], GRANT_BATCH, &mut |_, _| {})
        .unwrap();
    // Three originals; and the journal envelopes of the two filed with a recovery key.
    assert_eq!(
        (
            report.entitled,
            report.granted,
            report.unreachable,
            report.envelopes
        ),
        (3, 2, 1, 2)
    );
    let aid = crypto::unwrap_identity(
        &archive.users().wrapped_identity(&auditor.id).unwrap(),
        &apw,
    )
    .unwrap();
    let unknown = archive.list(UNKNOWN_FOLDER, &auditor).unwrap();
    assert_eq!(unknown.len(), 1);
    assert!(read_all(&archive, UNKNOWN_FOLDER, unknown[0].uid, &aid).contains("Subject: lost?"));
    let summary_of = |folder: &str, uid: u32| {
        archive
            .summary_header(
                folder,
                uid,
                &Keyring::new(aid.clone()),
                &summary::SummaryReader::default(),
            )
            .unwrap()
    };
    assert!(summary_of(UNKNOWN_FOLDER, unknown[0].uid).is_some());
    assert!(summary_of(&inbox, listed[0].uid).is_some());
    // Bob's grant gave him only keysets whose items are all his: not the catch-all's.
    let bobs = archive
        .summary_header(
            UNKNOWN_FOLDER,
            unknown[0].uid,
            &Keyring::new(identity.clone()),
            &summary::SummaryReader::default(),
        )
        .unwrap();
    assert!(bobs.is_none());
    // Bob still reads his item: the grant only added a reader.
    assert!(read_all(&archive, &inbox, listed[0].uid, &identity).contains("Subject: after"));
    spool.shutdown();
    cleanup(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_altered_cut_and_missing_items_and_a_cut_chain() {
    let (dir, spool, archive, mbx) = setup(ArchiveConfig {
        envelope_headers: vec![crate::config::EnvelopeHeader {
            network: "127.0.0.0/8".parse().unwrap(),
            header: "X-Envelope-To".into(),
        }],
        ..ArchiveConfig::default()
    });
    archive.users().add("bob@x.example", &[], "", true).unwrap();
    let now = chrono::Utc::now().timestamp();
    for n in 0..4 {
        let raw = format!("X-Envelope-To: <bob@x.example>\r\nSubject: {n}\r\n\r\nbody {n}\r\n");
        deliver(&spool, &mbx, raw.as_bytes(), now).await;
    }
    archive_all(&archive);
    archive.checkpoint(true).unwrap();
    let report = archive.verify(&mut |_, _| {}).unwrap();
    assert!(report.ok, "{:?}", report.problems);
    // Four originals and their four journal envelopes (bob is an auditor).
    assert_eq!(
        (report.links, report.items_checked, report.signed_up_to),
        (8, 8, 8)
    );

    // All eight items are in one pack: alter two, cut the last one short.
    let at = |id: u64| archive.store.item(id).unwrap().unwrap().location.unwrap();
    let pack_path = pack::path(&archive.items_dir, at(1).pack);
    let mut bytes = fs::read(&pack_path).unwrap();
    for id in [2, 5] {
        let l = at(id);
        bytes[(l.offset + l.len / 2) as usize] ^= 1;
    }
    let eight = at(8);
    bytes.truncate((eight.offset + eight.len / 2) as usize);
    fs::write(&pack_path, &bytes).unwrap();
    let report = archive.verify(&mut |_, _| {}).unwrap();
    let found: Vec<(Option<u64>, &str)> =
        report.problems.iter().map(|p| (p.item, p.kind)).collect();
    assert_eq!(
        found,
        vec![
            (Some(2), "altered"),
            (Some(5), "altered"),
            (Some(8), "altered")
        ]
    );
    let moved = pack_path.with_extension("away");
    fs::rename(&pack_path, &moved).unwrap();
    let report = archive.verify(&mut |_, _| {}).unwrap();
    let missing = report.problems.iter().filter(|p| p.kind == "missing");
    assert_eq!(missing.count(), 8, "{:?}", report.problems);
    fs::rename(&moved, &pack_path).unwrap();
    // Removing the newest links is caught by the signed checkpoint.
    drop(archive);
    let store = Store::open(
        &dir.join("archive").join("archive.redb"),
        store::CACHE_BYTES,
    )
    .unwrap();
    store.truncate_chain_for_test(3);
    drop(store);
    let archive = Archive::open(&ArchiveConfig::default(), spool.clone()).unwrap();
    let report = archive.verify(&mut |_, _| {}).unwrap();
    assert!(report
        .problems
        .iter()
        .any(|p| p.kind == "checkpoint-beyond-chain"));
    spool.shutdown();
    cleanup(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summaries_open_for_readers_only_and_answer_like_the_message() {
    let (dir, spool, archive, mbx) = setup(ArchiveConfig {
        envelope_headers: vec![crate::config::EnvelopeHeader {
            network: "127.0.0.0/8".parse().unwrap(),
            header: "X-Envelope-To".into(),
        }],
        ..ArchiveConfig::default()
    });
    let users = archive.users();
    let (bob, bob_pw) = users.add("bob@x.example", &[], "", false).unwrap();
    let (carol, carol_pw) = users.add("carol@x.example", &[], "", false).unwrap();
    let keyring = |id: &str, pw: &str| {
        let wrapped = archive.users().wrapped_identity(id).unwrap();
        Keyring::new(crypto::unwrap_identity(&wrapped, pw).unwrap())
    };
    let raw =
        "X-Envelope-To: <bob@x.example>\r\nSubject: Quarterly figures\r\n\r\nrevenue grew\r\n";
    deliver(&spool, &mbx, raw.as_bytes(), chrono::Utc::now().timestamp()).await;
    archive_all(&archive);
    let inbox = format!("{}/INBOX", bob.id);
    let uid = archive.list(&inbox, &bob).unwrap()[0].uid;
    let whole = read_all(&archive, &inbox, uid, keyring(&bob.id, &bob_pw).identity());
    let reader = summary::SummaryReader::default();
    let bob_keys = keyring(&bob.id, &bob_pw);
    let header = archive
        .summary_header(&inbox, uid, &bob_keys, &reader)
        .unwrap()
        .expect("a summary for the reader");
    assert_eq!(
        header,
        whole.as_bytes()[..crate::mime::header_end(whole.as_bytes())]
    );
    let item = archive.items_of(&inbox, &[uid]).unwrap();
    let search = archive.summary_search(&item, &bob_keys, &reader).unwrap();
    assert_eq!(
        search,
        vec![Some(b"Subject: Quarterly figures\r\n\r\n".to_vec())],
        "only the SEARCH fields"
    );
    let verdicts = |needle: &str, text: bool| {
        archive
            .summary_verdicts(&item, needle.as_bytes(), text, &bob_keys, &reader)
            .unwrap()
    };
    use crate::textindex::Verdict;
    assert_eq!(verdicts("REVENUE", false), vec![Verdict::Yes]);
    assert_eq!(verdicts("quarterly", false), vec![Verdict::No]);
    assert_eq!(verdicts("quarterly", true), vec![Verdict::Yes]);
    assert_eq!(verdicts("absent", true), vec![Verdict::No]);
    assert_eq!(verdicts("revenue grew", true), vec![Verdict::Maybe]);
    // Another user's key opens nothing (not even through a fresh reader).
    let carol_keys = keyring(&carol.id, &carol_pw);
    let other = summary::SummaryReader::default();
    let got = archive
        .summary_header(&inbox, uid, &carol_keys, &other)
        .unwrap();
    assert!(got.is_none());
    let got = archive.summary_search(&item, &carol_keys, &other).unwrap();
    assert_eq!(got, vec![None]);
    // Nothing of the header or the words is in the database in the clear.
    drop(archive);
    let db = fs::read(dir.join("archive/archive.redb")).unwrap();
    for needle in [&b"Quarterly"[..], b"quarterly", b"revenue"] {
        assert!(memchr::memmem::find(&db, needle).is_none());
    }
    spool.shutdown();
    cleanup(&dir);
}
