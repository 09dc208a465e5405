use super::*;

fn log(dir: &Path) -> AuditLog {
    AuditLog::open(dir, Some(SigningKey::from_bytes(&[3; 32]))).unwrap()
}

fn temp() -> PathBuf {
    std::env::temp_dir().join(format!("jg-audit-{}", crate::crypto::random_hex128()))
}

#[test]
fn lines_chain_across_writers_and_verify() {
    let dir = temp();
    let (a, b) = (log(&dir), log(&dir));
    a.append(&[Event::new("archive.login", "imap:u1").client("10.0.0.1")])
        .unwrap();
    b.append(&[Event::new("hold.add", "cli:root").target("case")])
        .unwrap();
    a.append(&[
        Event::new("archive.fetch", "imap:u1").detail(serde_json::json!({"items": [1, 2]})),
        Event::new("archive.login", "imap:?").result("failed"),
    ])
    .unwrap();
    let report = verify(&a, None).unwrap();
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!((report.lines, report.signed_up_to), (4, 4));
    let mut csv = Vec::new();
    assert_eq!(export(&a, 0, i64::MAX, Format::Csv, &mut csv).unwrap(), 4);
    let csv = String::from_utf8(csv).unwrap();
    assert!(csv.contains(",hold.add,ok,cli:root,,case,"), "{csv}");
    let mut json = Vec::new();
    export(&a, 0, i64::MAX, Format::Json, &mut json).unwrap();
    let parsed: Vec<serde_json::Value> = serde_json::from_slice(&json).unwrap();
    assert_eq!(parsed.len(), 4);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn changed_removed_and_cut_lines_are_found() {
    let dir = temp();
    let audit = log(&dir);
    for n in 0..5 {
        audit
            .append(&[Event::new("archive.select", format!("imap:u{n}"))])
            .unwrap();
    }
    let file = audit.files().unwrap().pop().unwrap();
    let original = fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = original.lines().collect();

    fs::write(&file, original.replace("imap:u2", "imap:u9")).unwrap();
    assert!(!verify(&audit, None).unwrap().ok);

    let without: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, l)| *l)
        .collect();
    fs::write(&file, without.join("\n") + "\n").unwrap();
    assert!(!verify(&audit, None).unwrap().ok);

    fs::write(&file, lines[..3].join("\n") + "\n").unwrap();
    let cut = verify(&audit, None).unwrap();
    assert!(
        !cut.ok && cut.problems[0].contains("cut short"),
        "{:?}",
        cut.problems
    );

    fs::write(&file, &original).unwrap();
    assert!(verify(&audit, None).unwrap().ok);
    assert!(!verify(&audit, Some(&"00".repeat(32))).unwrap().ok);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn csv_fields_are_quoted_and_never_formulas() {
    use super::verify::csv_field;
    assert_eq!(csv_field("a,b"), "\"a,b\"");
    assert_eq!(csv_field("=cmd()"), "'=cmd()");
    assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
    assert_eq!(csv_field("plain"), "plain");
}
