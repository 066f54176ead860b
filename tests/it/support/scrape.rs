//! Scraping a `--metrics-listen` endpoint over plain HTTP (one `GET` on a `TcpStream`), for the
//! metrics suite on the host and the LVM tests in the guest: the request, the address the
//! binary logs, and the exposition's samples.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::{Proc, Stream, READY_TIMEOUT};

/// One request to the endpoint: (status code, body).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot connect to the metrics endpoint {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {response:?}"));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (code, body.to_string())
}

/// The address in the `metrics on http://ADDR/metrics` log line.
pub fn metrics_addr(proc: &mut Proc) -> SocketAddr {
    let line = proc.wait_line(Stream::Stderr, READY_TIMEOUT, "the metrics line", |l| {
        l.contains("metrics on http://")
    });
    let rest = line.split("metrics on http://").nth(1).unwrap();
    let addr = rest.split("/metrics").next().unwrap();
    addr.parse()
        .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"))
}

/// One sample of an exposition.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The metric's name (with `_total` for a counter).
    pub name: String,
    /// The labels as printed, without braces: `source="/dev/x",dest="/t"`.
    pub labels: String,
    pub value: f64,
}

impl Sample {
    /// The value of label `name` (label values of the tests hold no quotes).
    pub fn label(&self, name: &str) -> Option<&str> {
        let start = self.labels.find(&format!("{name}=\""))? + name.len() + 2;
        let len = self.labels[start..].find('"')?;
        Some(&self.labels[start..start + len])
    }
}

/// Every sample of an OpenMetrics text exposition (comments and `# EOF` skipped).
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {line:?}"));
            Sample {
                name: name.to_string(),
                labels: labels.trim_end_matches('}').to_string(),
                value,
            }
        })
        .collect()
}
