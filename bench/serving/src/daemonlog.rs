//! The daemon's JSON log (`--log-format json`), read back for the cold-start breakdown: each
//! line's timestamp (microseconds, the same wall clock as the benchmark's), message and fields.

use std::path::Path;

/// One log line.
#[derive(Debug, Clone)]
pub struct LogEvent {
    pub at: jiff::Timestamp,
    pub message: String,
    /// The whole line (fields are top-level keys).
    pub fields: serde_json::Value,
}

/// Every line of the log that parses; others (a panic message, say) are skipped.
pub fn read(path: &Path) -> Vec<LogEvent> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let at = v["timestamp"].as_str()?.parse::<jiff::Timestamp>().ok()?;
            let message = v["message"].as_str()?.to_owned();
            Some(LogEvent {
                at,
                message,
                fields: v,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_json_lines() {
        let dir = std::env::temp_dir().join(format!("serving-bench-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("daemon.log");
        std::fs::write(
            &p,
            "{\"timestamp\":\"2026-11-25T13:18:24.280524Z\",\"level\":\"INFO\",\"message\":\"scale changed\",\"revision\":\"r-00001\",\"from\":0,\"to\":1}\nnot json\n",
        )
        .expect("write");
        let ev = read(&p);
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].message, "scale changed");
        assert_eq!(ev[0].fields["to"].as_u64(), Some(1));
        assert_eq!(ev[0].at.subsec_microsecond(), 280_524);
    }
}
