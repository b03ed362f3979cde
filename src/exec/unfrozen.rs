//! `unfrozen_parameters` at run time: after loading, every parameter no pattern matches is frozen
//! (before the optimizer is built, so state exists only for the trained ones), and each step the
//! gradient rows outside a pattern's row range are zeroed before clipping, as Axolotl's
//! `freeze_layers_except` does with a gradient hook. Weight decay still moves those rows, as it
//! does in Axolotl.

use crate::config::unfrozen::{RowRange, UnfreezePattern};
use crate::model::llama::CausalLm;
use crate::plan::unfrozen::UnfrozenPlan;
use tch::Tensor;

/// Trained parameters whose gradient is kept only on some rows: (tensor, row ranges to zero).
#[derive(Default)]
pub struct FrozenRows {
    rows: Vec<(Tensor, Vec<(i64, i64)>)>,
}

impl FrozenRows {
    /// Zeroes the frozen rows' gradients (after the gradients are complete, before clipping).
    pub fn zero_gradients(&self) {
        for (tensor, ranges) in &self.rows {
            let grad = tensor.grad();
            if !grad.defined() {
                continue;
            }
            for &(start, end) in ranges {
                let _ = grad.narrow(0, start, end - start).zero_();
            }
        }
    }
}

/// Freezes what `plan` does not select; returns the row masks of what it selects in part.
pub fn apply(plan: &UnfrozenPlan, model: &CausalLm) -> Result<FrozenRows, String> {
    let patterns: Vec<UnfreezePattern> =
        plan.patterns.iter().map(|p| UnfreezePattern::parse(&p.pattern)).collect::<Result<_, _>>()?;
    let mut out = FrozenRows::default();
    let mut trained = 0usize;
    for p in model.base_params() {
        let matched: Vec<&UnfreezePattern> = patterns.iter().filter(|q| q.matches(&p.name)).collect();
        if matched.is_empty() {
            let _ = p.tensor.set_requires_grad(false);
            continue;
        }
        trained += 1;
        // Axolotl: only patterns with a range restrict the rows (their union); none: every row.
        let rows = p.tensor.size()[0];
        let kept = merge(matched.iter().filter_map(|q| q.rows).collect(), rows)
            .map_err(|e| format!("unfrozen_parameters: {}: {e}", p.name))?;
        if !kept.is_empty() {
            out.rows.push((p.tensor.shallow_clone(), invert(&kept, rows)));
        }
    }
    if trained == 0 {
        return Err("unfrozen_parameters: no parameter of the loaded model matches".into());
    }
    Ok(out)
}

/// The union of `ranges` over `rows` rows, sorted (Axolotl's `_merge_ranges`).
fn merge(ranges: Vec<RowRange>, rows: i64) -> Result<Vec<(i64, i64)>, String> {
    let mut spans: Vec<(i64, i64)> =
        ranges.into_iter().map(|r| (r.start as i64, r.end.map_or(rows, |e| e as i64))).collect();
    for &(s, e) in &spans {
        if s >= e || e > rows {
            return Err(format!("rows {s}..{e} do not fit its {rows} rows"));
        }
    }
    spans.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::new();
    for (s, e) in spans {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    Ok(out)
}

/// The rows of `0..rows` outside the sorted, disjoint `kept` spans.
fn invert(kept: &[(i64, i64)], rows: i64) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut at = 0;
    for &(s, e) in kept {
        if s > at {
            out.push((at, s));
        }
        at = at.max(e);
    }
    if at < rows {
        out.push((at, rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_invert_as_axolotl() {
        let r = |start, end| RowRange { start, end };
        assert_eq!(merge(vec![r(5, Some(9)), r(0, Some(3)), r(2, Some(6))], 20).unwrap(), vec![(0, 9)]);
        assert_eq!(merge(vec![r(4, None)], 10).unwrap(), vec![(4, 10)]);
        assert!(merge(vec![r(4, Some(11))], 10).is_err());
        assert_eq!(invert(&[(0, 9)], 20), vec![(9, 20)]);
        assert_eq!(invert(&[(2, 4), (6, 8)], 10), vec![(0, 2), (4, 6), (8, 10)]);
        assert_eq!(invert(&[(0, 10)], 10), Vec::<(i64, i64)>::new());
    }
}
