//! JSON lines: each snapshot is one line, its serialization (schema in the README).

use std::io::{self, Write};

use super::Render;
use crate::snapshot::Snapshot;

pub struct Json;

impl Render for Json {
    fn snapshot(&mut self, snapshot: &Snapshot, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer(&mut *out, snapshot)?;
        out.write_all(b"\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{example, read_run};

    #[test]
    fn writes_one_line_that_reads_back() {
        let mut out = Vec::new();
        Json.snapshot(&example(), &mut out).unwrap();
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(read_run(&out[..]).unwrap(), [example()]);
    }
}
