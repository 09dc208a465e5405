//! The dashboard's chart: messages received and collected per hour as an inline SVG (no
//! script, no library; numbers only, so nothing in it needs escaping).

use crate::telemetry::activity::Hour;

const WIDTH: f64 = 840.0;
const HEIGHT: f64 = 160.0;

/// The SVG for hourly counts (oldest first), and the totals received and collected.
pub fn hourly(hours: &[(i64, Hour)]) -> (String, u64, u64) {
    let received: u64 = hours.iter().map(|(_, h)| h.received).sum();
    let collected: u64 = hours.iter().map(|(_, h)| h.collected).sum();
    let top = hours
        .iter()
        .map(|(_, h)| h.received.max(h.collected))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let step = WIDTH / hours.len().max(1) as f64;
    let bar = (step / 2.0).max(0.5);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {h}" width="100%" role="img" aria-label="messages received and collected per hour" data-received="{received}" data-collected="{collected}" data-hours="{n}">"#,
        h = HEIGHT + 14.0,
        n = hours.len()
    );
    for (i, (start, hour)) in hours.iter().enumerate() {
        let x = i as f64 * step;
        for (j, (value, class)) in [(hour.received, "received"), (hour.collected, "collected")]
            .into_iter()
            .enumerate()
        {
            if value == 0 {
                continue;
            }
            let height = (value as f64 / top * HEIGHT).max(1.0);
            svg.push_str(&format!(
                r#"<rect class="{class}" x="{:.2}" y="{:.2}" width="{bar:.2}" height="{height:.2}"><title>{} {class} {value}</title></rect>"#,
                x + j as f64 * bar,
                HEIGHT - height,
                crate::telemetry::rfc3339(*start),
            ));
        }
        if i % 24 == 0 {
            let day = chrono::DateTime::from_timestamp(*start, 0)
                .map(|d| d.format("%a %d").to_string())
                .unwrap_or_default();
            svg.push_str(&format!(
                r#"<text x="{x:.2}" y="{:.2}" font-size="10">{day}</text>"#,
                HEIGHT + 12.0
            ));
        }
    }
    svg.push_str(&format!(
        r#"<text x="{:.2}" y="10" font-size="10" text-anchor="end">max {top}/h</text></svg>"#,
        WIDTH - 2.0
    ));
    (svg, received, collected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_bars() {
        let hours = vec![
            (0, Hour::default()),
            (
                3600,
                Hour {
                    received: 4,
                    collected: 2,
                    ..Hour::default()
                },
            ),
        ];
        let (svg, received, collected) = hourly(&hours);
        assert_eq!((received, collected), (4, 2));
        assert!(svg.contains(r#"data-received="4""#));
        assert_eq!(svg.matches("<rect").count(), 2);
    }
}
