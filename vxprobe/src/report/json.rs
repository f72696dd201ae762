//! The report as one JSON document (the schema in the README's "Report" section).

use super::Report;

pub fn render(report: &Report) -> String {
    // Serializing plain data into a String cannot fail.
    let mut text = serde_json::to_string_pretty(report).unwrap_or_default();
    text.push('\n');
    text
}
