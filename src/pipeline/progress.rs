//! The progress of a run through its blocks: one bar that moves at every event of a block
//! (a chunk of windows through a stage, a site quantized), with elapsed time and ETA.
//!
//! Every block runs the same events in the same order, so the bar places event `k` of
//! block `b` at `b + t_k / t_end` blocks, where `t_k` is when event `k` finished in the
//! previous block: the bar then moves at an even pace and the ETA is right from the second
//! block on. Block 0 spaces its events evenly over the expected count.
//!
//! On a terminal the bar redraws itself every second; otherwise (a log file, CI) one line
//! per block is printed instead.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Bar positions per block.
const STEPS: u64 = 1000;

pub struct BlockProgress {
    bar: indicatif::ProgressBar,
    label: String,
    blocks: usize,
    /// Expected events per block (for block 0's spacing).
    expected: usize,
    block: usize,
    block_start: Instant,
    run_start: Instant,
    /// Seconds from the start of the block to each event, this block and the last.
    times: Vec<f64>,
    last_times: Vec<f64>,
    /// Print a line per block (no terminal to redraw a bar on).
    lines: bool,
}

impl BlockProgress {
    /// `expected`: events per block (chunks × stages per pass, plus sites quantized).
    pub fn new(label: &str, blocks: usize, expected: usize, visible: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = if visible && terminal {
            indicatif::ProgressBar::new(blocks as u64 * STEPS)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {percent:>3}% {elapsed_precise} eta {eta_precise} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_secs(1));
        let now = Instant::now();
        Self {
            bar,
            label: label.to_string(),
            blocks,
            expected: expected.max(1),
            block: 0,
            block_start: now,
            run_start: now,
            times: Vec::new(),
            last_times: Vec::new(),
            lines: visible && !terminal,
        }
    }

    pub fn start_block(&mut self, block: usize) {
        self.block = block;
        self.block_start = Instant::now();
        self.last_times = std::mem::take(&mut self.times);
        self.bar.set_message(format!("block {}/{}", block + 1, self.blocks));
    }

    /// An event of the current block finished; `what` says what runs next.
    pub fn event(&mut self, what: &str) {
        self.times.push(self.block_start.elapsed().as_secs_f64());
        let k = self.times.len();
        let frac = match self.last_times.last() {
            Some(&end) if self.last_times.len() >= k && end > 0.0 => self.last_times[k - 1] / end,
            _ => k as f64 / self.expected.max(k + 1) as f64,
        };
        let pos = self.block as u64 * STEPS + (frac.clamp(0.0, 1.0) * STEPS as f64) as u64;
        self.bar.set_position(pos.min((self.block as u64 + 1) * STEPS));
        self.bar.set_message(format!("block {}/{} {what}", self.block + 1, self.blocks));
    }

    pub fn end_block(&mut self) {
        self.bar.set_position((self.block as u64 + 1) * STEPS);
        if self.lines {
            let done = self.block + 1;
            let elapsed = self.run_start.elapsed().as_secs_f64();
            let eta = elapsed / done as f64 * (self.blocks - done) as f64;
            eprintln!(
                "{}: block {done}/{} done in {:.1}s; elapsed {}, eta {}",
                self.label,
                self.blocks,
                self.block_start.elapsed().as_secs_f64(),
                clock(elapsed),
                clock(eta)
            );
        }
    }

    /// A line above the bar (or on stderr when there is no bar).
    pub fn println(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// `1h02m03s`, `4m05s`, `6s`.
pub fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_reads_as_hours_minutes_seconds() {
        assert_eq!(clock(0.4), "0s");
        assert_eq!(clock(65.0), "1m05s");
        assert_eq!(clock(3723.0), "1h02m03s");
    }

    #[test]
    fn events_place_the_bar_by_the_previous_block_times() {
        let mut p = BlockProgress::new("t", 3, 4, false);
        p.start_block(0);
        for k in 1..=3 {
            std::thread::sleep(Duration::from_millis(2));
            p.event("x");
            // Block 0: evenly spaced over the expected count (4), never past the block.
            assert_eq!(p.bar.position(), k * STEPS / 4);
        }
        p.end_block();
        assert_eq!(p.bar.position(), STEPS);
        p.start_block(1);
        let first = p.last_times[0] / p.last_times[2];
        p.event("y");
        assert_eq!(p.bar.position(), STEPS + (first * STEPS as f64) as u64);
        p.event("y");
        p.event("y");
        assert_eq!(p.bar.position(), 2 * STEPS, "the last event of a block ends it");
    }
}
