//! Reading stdin line by line with a bound, for the tools' `--local` modes (kcl-tail,
//! kcl-multilang), which turn each line into one record: a line is never longer than the
//! largest record the local stream accepts (up to 10 MiB), so a runaway input cannot grow a
//! buffer without limit.
//!
//! Stdin is read on a thread of its own, not on Tokio's blocking pool: a read from a terminal
//! or a pipe left open cannot be cancelled, and a pending one on the pool would hold up the
//! runtime's shutdown (a SIGTERM would not end the process until the next line came).

use std::io::{self, BufRead};

use tokio::sync::mpsc;

/// Reads the next line of `reader` into `line` (cleared first), without its `\n` (nor a `\r`
/// before it). Returns `false` at the end of the input (nothing read). A line longer than
/// `limit` bytes is an [`io::ErrorKind::InvalidData`] error naming the limit; the buffer never
/// holds more than `limit` bytes plus one read chunk.
pub fn read_line_bounded<R: BufRead>(reader: &mut R, line: &mut Vec<u8>, limit: usize) -> io::Result<bool> {
    line.clear();
    let mut read_any = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        read_any = true;
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        // One byte more than the limit may be a `\r` before the `\n`.
        if line.len() + part.len() > limit + 1 {
            return Err(too_long(limit));
        }
        line.extend_from_slice(part);
        let used = done.unwrap_or(part.len());
        reader.consume(used);
        if done.is_some() {
            break;
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if line.len() > limit {
        return Err(too_long(limit));
    }
    Ok(read_any)
}

fn too_long(limit: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the line is longer than the largest record of the local stream ({limit} bytes)"),
    )
}

/// The lines of stdin, each at most `limit` bytes, read on a thread of their own and handed
/// over through a channel of `capacity` lines (back-pressure: the thread waits while it is
/// full). The channel ends after the last line, or with the first error.
pub fn stdin_lines(limit: usize, capacity: usize) -> mpsc::Receiver<io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let spawned = std::thread::Builder::new()
        .name("stdin-lines".into())
        .spawn(move || {
            let stdin = io::stdin();
            let mut reader = io::BufReader::with_capacity(64 * 1024, stdin.lock());
            loop {
                let mut line = Vec::new();
                match read_line_bounded(&mut reader, &mut line, limit) {
                    Ok(true) => {
                        if tx.blocking_send(Ok(line)).is_err() {
                            return;
                        }
                    }
                    Ok(false) => return,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        // No thread: the channel ends at once with the reason.
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(Err(e));
        return rx;
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], limit: usize) -> io::Result<Vec<Vec<u8>>> {
        // A small buffer: lines span many chunks.
        let mut reader = io::BufReader::with_capacity(4, input);
        let mut line = Vec::new();
        let mut out = Vec::new();
        while read_line_bounded(&mut reader, &mut line, limit)? {
            out.push(line.clone());
        }
        Ok(out)
    }

    #[test]
    fn lines_are_split_at_newlines_and_bounded() {
        let got = lines(b"one\r\ntwo\n\nlast-without-newline", 100).unwrap();
        assert_eq!(got, [&b"one"[..], b"two", b"", b"last-without-newline"]);
        assert_eq!(lines(b"exactly\n", 7).unwrap(), [&b"exactly"[..]]);
        assert_eq!(lines(b"exactly\r\n", 7).unwrap(), [&b"exactly"[..]]);
        let err = lines(b"ok\ntoo long a line\n", 7).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("7 bytes"), "{err}");
        assert!(lines(b"", 7).unwrap().is_empty());
        // Bytes that are not UTF-8 are a record's bytes like any others.
        assert_eq!(lines(b"\xff\xfe\n", 7).unwrap(), [&b"\xff\xfe"[..]]);
    }
}
