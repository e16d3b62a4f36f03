//! Standard output for every command: a reader that stops reading
//! (`crmsync errors list | head`) ends the command quietly, never with a
//! panic.
//!
//! Rust ignores SIGPIPE, so writing to a closed pipe is an `EPIPE` error,
//! and `println!` panics on it ("failed printing to stdout: Broken pipe").
//! Every command prints through [`outln!`] or writes to [`Stdout`] instead
//! (the crate denies `println!`), which turn a closed pipe into an error
//! carrying [`Closed`]. It unwinds the command like any other error, so the
//! command's clean-up still runs (the demo stops its tier processes), and
//! `main` ends such a run with success and without a word, as `head`'s
//! writer expects.
//!
//! Resetting SIGPIPE to its default instead would need `unsafe` (forbidden
//! in this workspace) or a crate doing it, and would kill the process on
//! the spot: the tiers (whose log reader may go away) and the demo (whose
//! children would be left running) must not die that way.

use std::fmt;
use std::io::{self, Write};

/// Standard output was closed by its reader: not a failure of the command.
#[derive(Debug, Clone, Copy)]
pub struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed by its reader")
    }
}

impl std::error::Error for Closed {}

/// Names a closed pipe as [`Closed`]; other errors pass unchanged.
fn name(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::BrokenPipe { io::Error::new(io::ErrorKind::BrokenPipe, Closed) } else { e }
}

/// Standard output as a writer whose closed pipe is a [`Closed`] error.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stdout().lock().write(buf).map_err(name)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        io::stdout().lock().write_all(buf).map_err(name)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().lock().flush().map_err(name)
    }
}

/// Writes one line to standard output (what [`outln!`] expands to).
pub fn line(args: fmt::Arguments<'_>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args).and_then(|()| out.write_all(b"\n")).map_err(name)
}

/// Writes one line to standard error, ignoring failure: there is nowhere
/// left to say that standard error is gone.
pub fn err_line(args: fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "{args}");
}

/// Whether an error is (or was caused by) standard output being closed.
pub fn is_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.is::<Closed>() || cause.downcast_ref::<io::Error>().and_then(|io| io.get_ref()).is_some_and(|inner| inner.is::<Closed>())
    })
}

/// `println!` for commands: writes a line to standard output and returns
/// early from the enclosing function with the write's error, as `?` would,
/// so a closed pipe ends the command instead of panicking.
macro_rules! outln {
    () => {
        $crate::out::line(format_args!(""))?
    };
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))?
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pipe_is_told_from_other_failures() {
        let closed = anyhow::Error::from(name(io::Error::from(io::ErrorKind::BrokenPipe))).context("printing the status");
        assert!(is_closed(&closed));
        let other = anyhow::Error::from(name(io::Error::from(io::ErrorKind::PermissionDenied)));
        assert!(!is_closed(&other));
        // A broken pipe elsewhere (a socket to PostgreSQL) is a real failure.
        assert!(!is_closed(&anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe))));
    }
}
