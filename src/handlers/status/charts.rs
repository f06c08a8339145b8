//! The status page's two small charts, as inline SVG: markup, not a loaded image or a script,
//! so the page's policy (`img-src 'none'`, `script-src 'none'`, no inline style) stays as strict
//! as it was. Colours are presentation attributes; every label is escaped; each bar carries a
//! `<title>` a pointer or a screen reader can read.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, TimeDelta, Utc};

use crate::handlers::pages::escape;
use crate::webhook::counters::{hour_key, HourLandings};

const PUSHED: &str = "#2f6fb3";
const SYNCED: &str = "#1a7f37";
const BUDGET_LEFT: &str = "#e4e7eb";
const SPENT: &str = "#9a6700";

/// Landings per hour over the last 24 hours, pushed stacked on synced.
pub fn landings(by_hour: &BTreeMap<String, HourLandings>, now: DateTime<Utc>) -> String {
    let hours: Vec<(String, HourLandings)> = (0..24)
        .rev()
        .map(|back| {
            let key = hour_key(now - TimeDelta::hours(back));
            let landed = by_hour.get(&key).copied().unwrap_or_default();
            (key, landed)
        })
        .collect();
    let most = hours.iter().map(|(_, h)| h.pushed + h.synced).max().unwrap_or(0).max(1);
    let (width, height, bar) = (480u64, 100u64, 20u64);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"chart-landings\" role=\"img\" width=\"{width}\" height=\"{}\" \
         viewBox=\"0 0 {width} {}\"><title>Submissions landed per hour, last 24 hours</title>",
        height + 20,
        height + 20
    );
    for (i, (key, landed)) in hours.iter().enumerate() {
        let x = i as u64 * bar;
        let synced = landed.synced * height / most;
        let pushed = landed.pushed * height / most;
        let label = format!("{key}:00 UTC: {} pushed, {} synced", landed.pushed, landed.synced);
        let _ = write!(svg, "<g><title>{}</title>", escape(&label));
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{synced}\" fill=\"{SYNCED}\"/>",
            height - synced,
            bar - 2
        );
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{pushed}\" fill=\"{PUSHED}\"/></g>",
            height - synced - pushed,
            bar - 2
        );
    }
    let _ = write!(
        svg,
        "<text x=\"0\" y=\"{}\" font-size=\"11\" fill=\"#555\">24 h ago</text>\
         <text x=\"{width}\" y=\"{}\" font-size=\"11\" fill=\"#555\" text-anchor=\"end\">now · most in an hour: {most}</text></svg>",
        height + 15,
        height + 15
    );
    svg
}

/// Each team's calls today against its budget, one bar per team.
pub fn calls(teams: &[(String, u64, u64)]) -> String {
    let (width, row) = (480u64, 22u64);
    let height = row * teams.len().max(1) as u64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"chart-calls\" role=\"img\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\"><title>TrueContext calls today against each team's budget</title>"
    );
    let track = width - 190;
    for (i, (team, calls, budget)) in teams.iter().enumerate() {
        let y = i as u64 * row;
        let spent = (*calls).min(*budget) * track / (*budget).max(1);
        let label = format!("team {team}: {calls} of {budget} calls today");
        let _ = write!(svg, "<g><title>{}</title>", escape(&label));
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\" font-size=\"12\" fill=\"#1b1b1b\">{}</text>",
            y + 15,
            escape(&crate::telemetry::printable(team, 18))
        );
        let _ = write!(
            svg,
            "<rect x=\"120\" y=\"{}\" width=\"{track}\" height=\"14\" fill=\"{BUDGET_LEFT}\"/>\
             <rect x=\"120\" y=\"{}\" width=\"{spent}\" height=\"14\" fill=\"{SPENT}\"/>",
            y + 4,
            y + 4
        );
        let _ = write!(
            svg,
            "<text x=\"{width}\" y=\"{}\" font-size=\"11\" fill=\"#555\" text-anchor=\"end\">{calls}/{budget}</text></g>",
            y + 15
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_charts_are_svg_with_escaped_labels_and_no_style() {
        let now = Utc::now();
        let mut by_hour = BTreeMap::new();
        by_hour.insert(hour_key(now), HourLandings { pushed: 3, synced: 5 });
        let svg = landings(&by_hour, now);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("3 pushed, 5 synced"));
        assert_eq!(svg.matches("<g>").count(), 24);
        let teams = calls(&[("<team>".into(), 150, 100), ("b".into(), 0, 0)]);
        assert!(teams.contains("&lt;team&gt;") && !teams.contains("<team>"));
        assert!(!svg.contains("style") && !teams.contains("style"), "no inline style: the policy forbids it");
    }
}
