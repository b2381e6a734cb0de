//! Mixed precision to a bits budget: pick one candidate scheme per linear so that the
//! summed estimated loss is smallest while the stored bits stay within the budget (a
//! multiple-choice knapsack). The loss of a linear at a scheme is its measured relative
//! output error; summing them across linears is ExLlamaV2's measure (the product of the
//! modules' accuracies).
//!
//! Greedy on each linear's lower convex hull of (bits, error): every linear starts at its
//! cheapest candidate, then the upgrade that lowers the error most per added bit is taken
//! while it fits; an upgrade that does not fit is dropped and the next best is tried.
//! Ties go to the earlier linear, so the choice is deterministic.

use crate::error::{Error, Result};

/// One linear's option: stored bits (the whole tensor) and estimated loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    pub bits: f64,
    pub loss: f64,
}

/// Indices of the lower convex hull of `choices` by bits (cheapest first), dropping any
/// option that costs more bits without lowering the loss.
fn hull(choices: &[Choice]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..choices.len()).collect();
    idx.sort_by(|&a, &b| choices[a].bits.total_cmp(&choices[b].bits).then(choices[a].loss.total_cmp(&choices[b].loss)));
    let mut h: Vec<usize> = Vec::new();
    for i in idx {
        let c = choices[i];
        if h.last().is_some_and(|&j| choices[j].loss <= c.loss) {
            continue; // no better than a cheaper option
        }
        if h.last().is_some_and(|&j| choices[j].bits == c.bits) {
            h.pop();
        }
        // Keep the slopes (loss saved per bit) decreasing.
        while h.len() >= 2 {
            let (a, b) = (choices[h[h.len() - 2]], choices[h[h.len() - 1]]);
            let s_ab = (a.loss - b.loss) / (b.bits - a.bits);
            let s_bc = (b.loss - c.loss) / (c.bits - b.bits);
            if s_bc >= s_ab {
                h.pop();
            } else {
                break;
            }
        }
        h.push(i);
    }
    h
}

/// The choice (index into each linear's options) minimizing the summed loss with the
/// summed bits at most `budget`. Refused when even the cheapest options exceed it.
pub fn allocate(options: &[Vec<Choice>], budget: f64) -> Result<Vec<usize>> {
    let hulls: Vec<Vec<usize>> = options.iter().map(|o| hull(o)).collect();
    if let Some(l) = hulls.iter().position(|h| h.is_empty()) {
        return Err(Error::other_msg(format!("mixed precision: linear {l} has no candidate scheme")));
    }
    let mut at = vec![0usize; options.len()]; // position on each hull
    let mut used: f64 = hulls.iter().zip(options).map(|(h, o)| o[h[0]].bits).sum();
    if used > budget {
        return Err(Error::option(
            "--target-bpw",
            format!(
                "the cheapest candidate of every linear already takes {:.0} bits, over the budget of {budget:.0}",
                used
            ),
        ));
    }
    let mut blocked = vec![false; options.len()];
    loop {
        let mut best: Option<(f64, usize)> = None;
        for (l, h) in hulls.iter().enumerate() {
            if blocked[l] || at[l] + 1 >= h.len() {
                continue;
            }
            let (a, b) = (options[l][h[at[l]]], options[l][h[at[l] + 1]]);
            let slope = (a.loss - b.loss) / (b.bits - a.bits);
            if best.is_none_or(|(s, _)| slope > s) {
                best = Some((slope, l));
            }
        }
        let Some((_, l)) = best else { break };
        let (a, b) = (options[l][hulls[l][at[l]]], options[l][hulls[l][at[l] + 1]]);
        if used + (b.bits - a.bits) <= budget {
            used += b.bits - a.bits;
            at[l] += 1;
        } else {
            blocked[l] = true;
        }
    }
    Ok(at.iter().zip(&hulls).map(|(&a, h)| h[a]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(bits: f64, loss: f64) -> Choice {
        Choice { bits, loss }
    }

    /// Every assignment, for small cases.
    fn brute(options: &[Vec<Choice>], budget: f64) -> f64 {
        let mut best = f64::INFINITY;
        let mut idx = vec![0usize; options.len()];
        loop {
            let bits: f64 = idx.iter().zip(options).map(|(&i, o)| o[i].bits).sum();
            if bits <= budget {
                best = best.min(idx.iter().zip(options).map(|(&i, o)| o[i].loss).sum());
            }
            let mut k = 0;
            while k < idx.len() {
                idx[k] += 1;
                if idx[k] < options[k].len() {
                    break;
                }
                idx[k] = 0;
                k += 1;
            }
            if k == idx.len() {
                return best;
            }
        }
    }

    #[test]
    fn the_hull_drops_dominated_and_concave_options() {
        let o = [c(3.0, 10.0), c(4.0, 4.0), c(4.5, 4.5), c(8.0, 0.1), c(5.0, 3.9)];
        // (4.5, 4.5) costs more than (4, 4) for more loss; (5, 3.9) lies above the chord 4 -> 8.
        assert_eq!(hull(&o), vec![0, 1, 3]);
    }

    #[test]
    fn allocation_spends_the_budget_where_it_saves_most() {
        // Linear 0 is sensitive, linear 1 not: the extra bits go to linear 0.
        let options = vec![
            vec![c(300.0, 9.0), c(400.0, 1.0), c(800.0, 0.01)],
            vec![c(300.0, 0.2), c(400.0, 0.1), c(800.0, 0.001)],
        ];
        assert_eq!(allocate(&options, 700.0).unwrap(), vec![1, 0]);
        assert_eq!(allocate(&options, 1100.0).unwrap(), vec![2, 0]);
        assert_eq!(allocate(&options, 1600.0).unwrap(), vec![2, 2]);
        assert!(allocate(&options, 500.0).unwrap_err().to_string().contains("--target-bpw"));
    }

    #[test]
    fn allocation_is_close_to_the_exhaustive_optimum_on_random_cases() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for _ in 0..200 {
            let n = rng.random_range(1..6);
            let options: Vec<Vec<Choice>> = (0..n)
                .map(|_| {
                    let size = rng.random_range(1.0..4.0);
                    let sens = rng.random_range(0.01..10.0);
                    [3.0, 4.0, 4.5, 8.0].iter().map(|&b| c(b * size, sens * 2f64.powf(-2.0 * b))).collect()
                })
                .collect();
            let min: f64 = options.iter().map(|o| o[0].bits).sum();
            let max: f64 = options.iter().map(|o| o[3].bits).sum();
            let budget = rng.random_range(min..max);
            let got = allocate(&options, budget).unwrap();
            let bits: f64 = got.iter().zip(&options).map(|(&i, o)| o[i].bits).sum();
            assert!(bits <= budget + 1e-9);
            let loss: f64 = got.iter().zip(&options).map(|(&i, o)| o[i].loss).sum();
            let opt = brute(&options, budget);
            // Greedy on convex hulls is optimal up to the last, partly affordable step.
            let worst_step = options.iter().map(|o| o[0].loss).fold(0.0, f64::max);
            assert!(loss <= opt + worst_step + 1e-12, "greedy {loss} vs optimum {opt}");
        }
    }
}
