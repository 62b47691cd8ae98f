//! Progress of `entitled reconcile` on stderr, and its summary on stdout.
//!
//! Stripe's lists carry no totals, so there is no percentage to draw: each object type gets a
//! line with its counts and rate, redrawn in place on a terminal; elsewhere (CI logs, pipes)
//! a line is printed every few seconds and when a type is done.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::reconcile::Run;
use crate::stripe::reconcile::{Counts, Object, Progress};

const REDRAW: Duration = Duration::from_millis(100);
const LOG_EVERY: Duration = Duration::from_secs(5);
const SPINNER: [char; 4] = ['|', '/', '-', '\\'];

pub struct Terminal {
    tty: bool,
    state: Mutex<State>,
}

struct State {
    lines: Vec<Line>,
    drawn: usize,
    last_draw: Option<Instant>,
    frame: usize,
    events: Option<(u64, u64)>,
}

struct Line {
    object: Object,
    counts: Counts,
    started: Option<Instant>,
    elapsed: Option<Duration>,
}

impl Terminal {
    pub fn new() -> Self {
        Terminal {
            tty: std::io::stderr().is_terminal(),
            state: Mutex::new(State {
                lines: Object::ALL
                    .iter()
                    .map(|o| Line {
                        object: *o,
                        counts: Counts::default(),
                        started: None,
                        elapsed: None,
                    })
                    .collect(),
                drawn: 0,
                last_draw: None,
                frame: 0,
                events: None,
            }),
        }
    }

    /// Draws the final state.
    pub fn finish(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.tty {
            draw(&mut s);
        }
    }
}

impl Default for Terminal {
    fn default() -> Self {
        Self::new()
    }
}

fn render(line: &Line, frame: usize) -> String {
    let c = line.counts;
    let (mark, rate) = match (line.started, line.elapsed) {
        (_, Some(e)) => ('✓', per_sec(c.seen, e)),
        (Some(t), None) => (SPINNER[frame % SPINNER.len()], per_sec(c.seen, t.elapsed())),
        (None, None) => (' ', String::new()),
    };
    format!(
        "  {mark} {:<14}{:>9} seen{:>9} created{:>9} updated{:>9} deleted  {rate}",
        line.object.name(),
        c.seen,
        c.created,
        c.updated,
        c.deleted
    )
}

fn per_sec(n: u64, d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 0.05 || n == 0 {
        return String::new();
    }
    format!("{:.0}/s", n as f64 / secs)
}

fn draw(s: &mut State) {
    let mut out = String::new();
    if s.drawn > 0 {
        let _ = write!(out, "\x1b[{}A", s.drawn);
    }
    s.frame += 1;
    for line in &s.lines {
        let _ = writeln!(out, "\r\x1b[2K{}", render(line, s.frame));
    }
    if let Some((listed, new)) = s.events {
        let _ = writeln!(
            out,
            "\r\x1b[2K  ✓ events        {listed:>9} listed{new:>9} new (missed by webhooks)"
        );
        s.drawn = s.lines.len() + 1;
    } else {
        s.drawn = s.lines.len();
    }
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(out.as_bytes());
    let _ = err.flush();
    s.last_draw = Some(Instant::now());
}

impl Progress for Terminal {
    fn update(&self, object: Object, counts: Counts, done: bool) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(line) = s.lines.iter_mut().find(|l| l.object == object) else {
            return;
        };
        line.counts = counts;
        let started = *line.started.get_or_insert_with(Instant::now);
        if done {
            line.elapsed = Some(started.elapsed());
        }
        let rendered = render(line, 0);
        let due = s
            .last_draw
            .is_none_or(|t| t.elapsed() >= if self.tty { REDRAW } else { LOG_EVERY });
        if self.tty {
            if due || done {
                draw(&mut s);
            }
        } else if due || done {
            eprintln!("{}", rendered.trim_start());
            s.last_draw = Some(Instant::now());
        }
    }

    fn events(&self, listed: u64, new: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.events = Some((listed, new));
        if self.tty {
            draw(&mut s);
        } else {
            eprintln!("events: {listed} listed, {new} new (missed by webhooks)");
        }
    }
}

/// The summary printed on stdout when a run ends.
pub fn summary(run: &Run, elapsed: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "reconcile {} of environment {}: {} in {:.1} s, {} Stripe requests",
        run.id,
        run.environment,
        run.status,
        elapsed.as_secs_f64(),
        run.requests
    );
    let _ = writeln!(
        out,
        "  {:<14}{:>9}{:>9}{:>9}{:>9}",
        "object", "seen", "created", "updated", "deleted"
    );
    let mut total = Counts::default();
    for o in Object::ALL {
        let c: Counts = run
            .counts
            .0
            .get(o.name())
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        total.seen += c.seen;
        total.created += c.created;
        total.updated += c.updated;
        total.deleted += c.deleted;
        let _ = writeln!(
            out,
            "  {:<14}{:>9}{:>9}{:>9}{:>9}",
            o.name(),
            c.seen,
            c.created,
            c.updated,
            c.deleted
        );
    }
    let _ = writeln!(
        out,
        "  {:<14}{:>9}{:>9}{:>9}{:>9}",
        "total", total.seen, total.created, total.updated, total.deleted
    );
    let _ = writeln!(out, "  events caught up: {}", run.events_caught_up);
    let errors = run.errors.0.as_array().cloned().unwrap_or_default();
    if errors.is_empty() {
        let _ = writeln!(out, "  errors: none");
    } else {
        let _ = writeln!(out, "  errors: {}", errors.len());
        for e in errors {
            let _ = writeln!(out, "    - {}", e.as_str().unwrap_or_default());
        }
    }
    out
}
